"""Base methods: which parameters train, and how the result is saved so stock diffusers can load it.

Contract (tests/test_method_contract.py runs it over every entry): ``make(parts, config) -> Method`` where
``Method.trainable`` maps component names ("unet", "text_encoder") to the modules the optimizer updates, and
``Method.save(parts, output_dir)`` writes the result given the trained parts. A method whose
``adapters_only`` is true freezes every base weight, so the trainer may keep those in the autocast dtype.
"""

from rewardbooth.methods import dreambooth, lora  # noqa: F401  (registers)
from rewardbooth.methods.base import Method, make_method, methods

__all__ = ["Method", "make_method", "methods"]
