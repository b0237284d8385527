"""DreamBooth (Ruiz et al. 2023): fine-tune the whole UNet, optionally the text encoder; save a pipeline folder."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from rewardbooth.config import MethodConfig
from rewardbooth.methods.base import methods
from rewardbooth.models import StableDiffusionParts


class DreamBooth:
    def __init__(self, parts: StableDiffusionParts, config: MethodConfig):
        parts.vae.requires_grad_(False)
        parts.unet.requires_grad_(True)
        parts.text_encoder.requires_grad_(config.train_text_encoder)
        self.trainable: dict[str, nn.Module] = {"unet": parts.unet}
        if config.train_text_encoder:
            self.trainable["text_encoder"] = parts.text_encoder

    def save(self, parts: StableDiffusionParts, output_dir: Path) -> None:
        """A stock pipeline folder: ``StableDiffusionPipeline.from_pretrained(output_dir)`` loads it."""
        parts.pipeline().save_pretrained(output_dir)


@methods.register("dreambooth")
def make_dreambooth(parts: StableDiffusionParts, config: MethodConfig) -> DreamBooth:
    return DreamBooth(parts, config)
