"""The DDPM forward process (Ho et al. 2020) of the Stable Diffusion families (SD 1.x/2.x, SDXL): their
`Process` (rewardbooth.models.families), read from the model's own scheduler config."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler

from rewardbooth.maths import dpg


@dataclass(frozen=True)
class DDPMProcess:
    """x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε, t ∈ {0..T-1}, and the denoiser's parameterization.

    `alphas_cumprod` is ᾱ_t for t = 0 .. T-1, fp32, on the device of the latents it is used with."""

    alphas_cumprod: torch.Tensor
    prediction_type: str

    @classmethod
    def from_scheduler_config(cls, config) -> DDPMProcess:
        scheduler = DDPMScheduler.from_config(config)
        return cls(scheduler.alphas_cumprod.to(torch.float32), prediction_type_of(config))

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def to(self, device: torch.device | str) -> DDPMProcess:
        return DDPMProcess(self.alphas_cumprod.to(device, torch.float32), self.prediction_type)

    def sample_timesteps(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """t ~ U{0, ..., T-1}, as DDPM trains. Shape: -> (count,) int64, on the CPU"""
        return torch.randint(self.num_train_timesteps, (count,), generator=generator)

    def alpha_bar(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Shape: timesteps (B,) -> (B,)"""
        return self.alphas_cumprod[timesteps]

    def noise_level(self, timesteps: torch.Tensor) -> torch.Tensor:
        """sqrt(1 - ᾱ_t): the noise's coefficient in x_t, as σ is in a flow family's x_σ. Shape: (B,) -> (B,)"""
        return (1 - self.alpha_bar(timesteps)).sqrt()

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
