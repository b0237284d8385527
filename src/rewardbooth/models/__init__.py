"""Models: the families (rewardbooth.models.families: what differs between SD, SDXL and the next ones; one
module per family: stable_diffusion, sd3, flux), the loaders (a diffusers folder or hub id, or an architecture built in code) and the parts
they return.

Every loader returns :class:`StableDiffusionParts`; the registry contract tests run over every family and
every loader. ``model.pretrained`` picks a loader: a built-in name (``tiny``, ``sd15-random``),
``pkg.mod:factory``, or else a diffusers folder / hub id handled by the ``diffusers`` loader.
"""

from rewardbooth.models import stable_diffusion, sd3, flux, zimage  # noqa: F401, I001  (registers the families, before the loaders)
from rewardbooth.models import builtin  # noqa: F401  (importing registers the built-in architectures)
from rewardbooth.models.loaders import load_model, loaders
from rewardbooth.models.parts import ModelParts
from rewardbooth.models.stable_diffusion import StableDiffusionParts

__all__ = ["ModelParts", "StableDiffusionParts", "load_model", "loaders"]
