"""The rectified-flow forward process of the flow-matching families (SD3/3.5, FLUX.1): their `Process`
(rewardbooth.models.families), as diffusers' train_dreambooth_lora_sd3.py / _flux.py train them.

σ ∈ (0, 1] is drawn as those scripts draw it: u from the family's density (uniform, logit-normal or mode;
diffusers.training_utils.compute_density_for_timestep_sampling, Esser et al. 2024 §3.1), then
σ = the scheduler's training table at index ⌊u N⌋, which carries the static shift s σ / (1 + (s - 1) σ)
when the scheduler config sets one (SD3: 3) and none when it shifts dynamically at inference (FLUX-dev).
The time values are 1000σ (what SD3's transformer takes; FLUX's takes σ and scales it inside)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling

from rewardbooth.maths import dpg


@dataclass(frozen=True)
class FlowProcess:
    """x_σ = (1 - σ) x0 + σ ε, target v = ε - x0, x̂0 = x_σ - σ v̂ (rewardbooth.maths.dpg)."""

    sigmas: torch.Tensor  # (N,) the training table, σ descending from index 0 (a copy: pipelines overwrite theirs)
    density: str = "logit_normal"  # "uniform", "logit_normal" or "mode"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29

    @classmethod
    def from_scheduler_config(cls, config, **density) -> FlowProcess:
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)  # a separate copy, never the pipeline's
        return cls(scheduler.sigmas.to(torch.float32).clone(), **density)

    @property
    def num_train_timesteps(self) -> int:
        return len(self.sigmas)

    def to(self, device: torch.device | str) -> FlowProcess:
        return FlowProcess(self.sigmas.to(device), self.density, self.logit_mean, self.logit_std, self.mode_scale)

    def sample_timesteps(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """1000σ with σ from the family's density. Shape: -> (count,) float32, on the CPU"""
        u = compute_density_for_timestep_sampling(self.density, count, self.logit_mean, self.logit_std,
                                                  self.mode_scale, generator=generator)
        indices = (u * self.num_train_timesteps).long().clamp(0, self.num_train_timesteps - 1)
        return self.sigmas.cpu()[indices] * self.num_train_timesteps

    def noise_level(self, timesteps: torch.Tensor) -> torch.Tensor:
        """σ, the noise's coefficient in x_σ. Shape: (B,) -> (B,) float32"""
        return timesteps.float() / self.num_train_timesteps

    def diffuse(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Shape: x0, noise (B, C, h, w); timesteps (B,) -> (B, C, h, w)"""
        return dpg.flow_diffuse(x0, noise, self.noise_level(timesteps))

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Shape: (B, C, h, w) -> (B, C, h, w)"""
        return dpg.flow_target(x0, noise)

    def look_forward(self, x_t: torch.Tensor, action: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Shape: (B, C, h, w) -> (B, C, h, w)"""
        return dpg.flow_predict_x0(x_t, action, self.noise_level(timesteps))
