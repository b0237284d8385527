"""DreamBooth (Ruiz et al. 2023): fine-tune the whole UNet, optionally the text encoder; save a pipeline folder."""

from __future__ import annotations

from pathlib import Path

from diffusers import StableDiffusionPipeline
from torch import nn

from rewardbooth.config import Config
from rewardbooth.methods.base import methods
from rewardbooth.models import StableDiffusionParts


@methods.register("dreambooth")
class DreamBooth:
    """The whole UNet (and optionally the text encoder) trains; the result is a full pipeline folder."""

    def __init__(self, parts: StableDiffusionParts, full_config: Config):
        config = full_config.method
        parts.vae.requires_grad_(False)
        parts.unet.requires_grad_(True)
        parts.text_encoder.requires_grad_(config.train_text_encoder)
        self.trainable: dict[str, nn.Module] = {"unet": parts.unet}
        if config.train_text_encoder:
            self.trainable["text_encoder"] = parts.text_encoder

    def save(self, parts: StableDiffusionParts, output_dir: Path) -> None:
        """A stock pipeline folder: ``StableDiffusionPipeline.from_pretrained(output_dir)`` loads it."""
        parts.pipeline().save_pretrained(output_dir)

    @staticmethod
    def load_result(pipeline: StableDiffusionPipeline, output_dir: Path) -> StableDiffusionPipeline:
        return StableDiffusionPipeline.from_pretrained(output_dir)
