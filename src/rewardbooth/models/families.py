"""Model families: what differs between Stable Diffusion 1.x/2.x and SDXL (and, next, flow-matching
transformers), asked of one registered object instead of tested for across the code.

A family owns its training-time process (`DiffusionProcess`: x_t from x0, the denoising target and x̂0 from
the action; the maths itself stays in rewardbooth.maths.dpg), its UNet's extra conditioning (SDXL's size ids), how
its diffusers pipeline class is recognised and built over the parts. The loop, batches, bench and methods
ask `parts.family` and never look at `alphas_cumprod` or at which encoders a model has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

from rewardbooth.core.registry import Registry
from rewardbooth.maths import dpg

if TYPE_CHECKING:
    from rewardbooth.models.loaders import StableDiffusionParts

families = Registry("model family")


@dataclass(frozen=True)
class DiffusionProcess:
    """The DDPM forward process (Ho et al. 2020) of a family and its denoiser's parameterization.

    `alphas_cumprod` is ᾱ_t for t = 0 .. T-1, fp32, on the device of the latents it is used with."""

    alphas_cumprod: torch.Tensor
    prediction_type: str

    @classmethod
    def from_scheduler_config(cls, config) -> DiffusionProcess:
        scheduler = DDPMScheduler.from_config(config)
        return cls(scheduler.alphas_cumprod.to(torch.float32), prediction_type_of(config))

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def to(self, device: torch.device | str) -> DiffusionProcess:
        return DiffusionProcess(self.alphas_cumprod.to(device, torch.float32), self.prediction_type)

    def alpha_bar(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Shape: timesteps (B,) -> (B,)"""
        return self.alphas_cumprod[timesteps]

    def diffuse(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε. Shape: x0, noise (B, C, h, w); timesteps (B,) -> (B, C, h, w)"""
        return dpg.diffuse(x0, noise, self.alpha_bar(timesteps))

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the action should equal. Shape: (B, C, h, w) -> (B, C, h, w)"""
        return dpg.denoising_target(x0, noise, self.alpha_bar(timesteps), self.prediction_type)

    def look_forward(self, x_t: torch.Tensor, action: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x̂0 implied by the action in one jump. Shape: (B, C, h, w) -> (B, C, h, w)"""
        return dpg.predict_x0(x_t, action, self.alpha_bar(timesteps), self.prediction_type)


def prediction_type_of(scheduler_config) -> str:
    """What a scheduler config says the denoiser predicts (diffusers' default: epsilon)."""
    return scheduler_config.get("prediction_type", "epsilon")


class StableDiffusion:
    """Stable Diffusion 1.x/2.x: one CLIP text encoder, a UNet on its last hidden state, DDPM training."""

    name = "stable-diffusion"
    pipeline_class = StableDiffusionPipeline
    load_options = {"safety_checker": None, "requires_safety_checker": False}  # for from_pretrained

    def matches(self, pipeline_class_name: str) -> bool:
        """Whether a diffusers folder's model_index.json `_class_name` is this family's."""
        return pipeline_class_name.startswith("StableDiffusion") and "XL" not in pipeline_class_name

    def process(self, parts: StableDiffusionParts) -> DiffusionProcess:
        """The training-time forward process, read from the model's own scheduler config."""
        return DiffusionProcess.from_scheduler_config(parts.scheduler.config)

    def micro_conditioning(self, resolution: int) -> torch.Tensor | None:
        """Extra ids the denoiser takes besides text and t (none here)."""
        return None

    def pipeline(self, parts: StableDiffusionParts) -> StableDiffusionPipeline:
        return StableDiffusionPipeline(
            vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
            scheduler=parts.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


class StableDiffusionXL(StableDiffusion):
    """SDXL: two text encoders (penultimate hidden states concatenated, the second's pooled projection) and
    six size/crop ids in the UNet's added embedding (Podell et al. 2023, §2.2); the same DDPM process."""

    name = "stable-diffusion-xl"
    pipeline_class = StableDiffusionXLPipeline
    load_options = {}

    def matches(self, pipeline_class_name: str) -> bool:
        return pipeline_class_name.startswith("StableDiffusionXL")

    def micro_conditioning(self, resolution: int) -> torch.Tensor:
        """Our training images are resized and centre-cropped to the training size, as the stock pipeline
        assumes at inference: original = target = (height, width), crop (0, 0). Shape: (1, 6)"""
        return torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32)

    def pipeline(self, parts: StableDiffusionParts) -> StableDiffusionXLPipeline:
        return StableDiffusionXLPipeline(
            vae=parts.vae, text_encoder=parts.text_encoder, text_encoder_2=parts.text_encoder_2,
            tokenizer=parts.tokenizer, tokenizer_2=parts.tokenizer_2, unet=parts.unet, scheduler=parts.scheduler,
            add_watermarker=False)


families.register(StableDiffusion.name)(StableDiffusion())
families.register(StableDiffusionXL.name)(StableDiffusionXL())


def family_for_pipeline(pipeline_class_name: str):
    """The registered family whose pipeline class a diffusers folder names (model_index.json), or None."""
    for name in families.names():
        family = families.get(name)
        if family.matches(pipeline_class_name):
            return family
    return None
