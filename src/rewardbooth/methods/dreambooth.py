"""DreamBooth (Ruiz et al. 2023): fine-tune the whole UNet, optionally the text encoder(s); save a pipeline folder."""

from __future__ import annotations

from pathlib import Path

from diffusers import DiffusionPipeline
from torch import nn

from rewardbooth.core.config import Config
from rewardbooth.methods.base import methods
from rewardbooth.models import ModelParts


@methods.register("dreambooth")
class DreamBooth:
    """The whole UNet (and optionally the text encoder, both of SDXL's) trains; the result is a full pipeline
    folder of the base model's pipeline class."""

    def __init__(self, parts: ModelParts, full_config: Config):
        config = full_config.method
        parts.vae.requires_grad_(False)
        parts.denoiser.requires_grad_(True)
        self.trainable: dict[str, nn.Module] = {parts.denoiser_name: parts.denoiser}
        for name, encoder in parts.named_text_encoders.items():
            encoder.requires_grad_(config.train_text_encoder)
            if config.train_text_encoder:
                self.trainable[name] = encoder

    def save(self, parts: ModelParts, output_dir: Path) -> None:
        """A stock pipeline folder: ``StableDiffusion[XL]Pipeline.from_pretrained(output_dir)`` loads it."""
        parts.pipeline().save_pretrained(output_dir)

    @staticmethod
    def load_result(pipeline: DiffusionPipeline, output_dir: Path) -> DiffusionPipeline:
        return type(pipeline).from_pretrained(output_dir)
