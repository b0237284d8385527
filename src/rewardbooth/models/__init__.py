"""Model loaders: a diffusers folder or hub id, or an architecture built in code.

Every loader returns :class:`StableDiffusionParts`; the registry contract test runs over all of them.
``model.pretrained`` picks one: a built-in name (``tiny``, ``sd15-random``), ``pkg.mod:factory``, or else a
diffusers folder / hub id handled by the ``diffusers`` loader.
"""

from rewardbooth.models import builtin  # noqa: F401  (importing registers the built-in architectures)
from rewardbooth.models.loaders import StableDiffusionParts, load_model, loaders

__all__ = ["StableDiffusionParts", "load_model", "loaders"]
