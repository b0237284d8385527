"""The base-method registry and the interface its entries implement."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from torch import nn

from rewardbooth.config import MethodConfig
from rewardbooth.models import StableDiffusionParts
from rewardbooth.registry import Registry

methods = Registry("base method")


class Method(Protocol):
    trainable: dict[str, nn.Module]
    """Component name ("unet", "text_encoder") -> module whose parameters the policy optimizer updates."""

    def save(self, parts: StableDiffusionParts, output_dir: Path) -> None:
        """Write the trained result into output_dir in a format stock diffusers loads."""


def make_method(parts: StableDiffusionParts, config: MethodConfig) -> Method:
    return methods.get(config.name)(parts, config)
