"""Base methods: which parameters train, and how the result is saved so stock diffusers can load it.

Contract (tests/contract/test_methods.py runs it over every entry): ``make(parts, config) -> Method`` (the whole
Config; a registered class is its own factory). ``Method.trainable`` maps component names ("unet",
"text_encoder") to the modules the optimizer updates; ``Method.save(parts, output_dir)`` writes the result;
``Method.load_result(pipeline, output_dir)`` applies it to a base pipeline with stock diffusers calls; an
optional ``after_step()`` runs after each optimizer step. A method whose ``adapters_only`` is true freezes
every base weight, so the trainer may keep those in the autocast dtype.
"""

from rewardbooth.methods import custom_diffusion, dreambooth, lora  # noqa: F401  (registers)
from rewardbooth.methods.base import Method, make_method, methods

__all__ = ["Method", "make_method", "methods"]
