"""DreamBooth (Ruiz et al. 2023): fine-tune the whole denoiser (UNet, or SD3's / FLUX's transformer), optionally
the family's trainable text encoder(s); save a pipeline folder."""

from __future__ import annotations

from pathlib import Path

from diffusers import DiffusionPipeline
from torch import nn

from rewardbooth.core.config import Config
from rewardbooth.methods.base import check_text_encoder_training, methods
from rewardbooth.models import ModelParts


@methods.register("dreambooth")
class DreamBooth:
    """The whole UNet (and optionally the text encoder, both of SDXL's) trains; the result is a full pipeline
    folder of the base model's pipeline class."""

    def __init__(self, parts: ModelParts, full_config: Config):
        config = full_config.method
        check_text_encoder_training(parts, full_config)
        parts.vae.requires_grad_(False)
        parts.denoiser.requires_grad_(True)
        self.trainable: dict[str, nn.Module] = {parts.denoiser_name: parts.denoiser}
        for name, encoder in parts.named_text_encoders.items():
            # The family says which encoders `train_text_encoder` means (SD3's and FLUX's T5 never).
            train = config.train_text_encoder and name in parts.family.trainable_text_encoders
            encoder.requires_grad_(train)
            if train:
                self.trainable[name] = encoder

    def save(self, parts: ModelParts, output_dir: Path) -> None:
        """A stock pipeline folder: ``StableDiffusion[XL]Pipeline.from_pretrained(output_dir)`` loads it."""
        parts.pipeline().save_pretrained(output_dir)

    @staticmethod
    def load_result(pipeline: DiffusionPipeline, output_dir: Path) -> DiffusionPipeline:
        return type(pipeline).from_pretrained(output_dir)

    @staticmethod
    def loading_code(base: str, result_dir: Path) -> str:
        return "pipeline = DiffusionPipeline.from_pretrained(here)"
