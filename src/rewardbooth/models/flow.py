"""The rectified-flow forward process of the flow-matching families (SD3/3.5, FLUX.1): their `Process`
(rewardbooth.models.families), as diffusers' train_dreambooth_lora_sd3.py / _flux.py train them.

σ ∈ (0, 1] is drawn as those scripts draw it: u from the family's density (uniform, logit-normal or mode;
diffusers.training_utils.compute_density_for_timestep_sampling, Esser et al. 2024 §3.1), then
σ = the scheduler's training table at index ⌊u N⌋, which carries the static shift s σ / (1 + (s - 1) σ)
when the scheduler config sets one (SD3: 3) and none when it shifts dynamically at inference (FLUX-dev).
The time values are 1000σ (what SD3's transformer takes; FLUX's takes σ and scales it inside).

Rollouts (grpo) sample with the family's own inference schedule, from the scheduler's `set_timesteps` on a
private copy: SD3's pipeline lets it space the σ itself (static shift 3); FLUX's passes σ = linspace(1, 1/S, S)
and shifts them by μ from the image's token count ((h/2)(w/2) 2x2 patches, diffusers' `calculate_shift`),
so the schedule depends on the latents' size. Each step is Flow-GRPO's SDE step (rewardbooth.maths.rollout)
down to σ = 0; the last one, from σ_{S-1} > 0 to 0, keeps the same SDE (std a σ/sqrt(1 - σ) at σ = σ_{S-1},
positive), as Flow-GRPO samples every step, so every trained step has a log-probability."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.training_utils import compute_density_for_timestep_sampling

from rewardbooth.maths import dpg, rollout
from rewardbooth.models.families import TrainingOptions


def with_training(family, options: TrainingOptions):
    """A copy of a flow family's registered object reading `options` (the registered one keeps none)."""
    configured = copy.copy(family)
    configured.training = options
    return configured


@dataclass(frozen=True)
class FlowProcess:
    """x_σ = (1 - σ) x0 + σ ε, target v = ε - x0, x̂0 = x_σ - σ v̂ (rewardbooth.maths.dpg)."""

    sigmas: torch.Tensor  # (N,) the training table, σ descending from index 0 (a copy: pipelines overwrite theirs)
    density: str = "logit_normal"  # "uniform", "logit_normal" or "mode"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    scheduler_config: dict | None = None  # the sampler's, for rollouts' schedules (sampling_timesteps)
    linear_sampling_sigmas: bool = False  # the pipeline passes σ = linspace(1, 1/S, S) (FLUX) or lets it space

    @classmethod
    def from_scheduler_config(cls, config, linear_sampling_sigmas: bool = False, shift: float | None = None,
                              **density) -> FlowProcess:
        """The training table from the scheduler config; `shift` replaces its shift (static, also where the
        config shifts dynamically at inference) for training only: rollouts keep the pipeline's schedule."""
        override = {} if shift is None else {"shift": shift, "use_dynamic_shifting": False}
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(config, **override)  # a copy, never the pipeline's
        return cls(scheduler.sigmas.to(torch.float32).clone(), **density, scheduler_config=dict(config),
                   linear_sampling_sigmas=linear_sampling_sigmas)

    @classmethod
    def for_family(cls, config, options: TrainingOptions, density: str,
                   linear_sampling_sigmas: bool = False) -> FlowProcess:
        """A flow family's process: its `density` and its scheduler's shift unless the user's `options` say."""
        given = {name: getattr(options, name) for name in ("logit_mean", "logit_std", "mode_scale")
                 if getattr(options, name) is not None}
        return cls.from_scheduler_config(config, linear_sampling_sigmas, options.shift,
                                         density=options.density or density, **given)

    @property
    def num_train_timesteps(self) -> int:
        return len(self.sigmas)

    def to(self, device: torch.device | str) -> FlowProcess:
        return replace(self, sigmas=self.sigmas.to(device))

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

    def sampling_timesteps(self, num_steps: int, latent_size: tuple[int, int] | None = None) -> torch.Tensor:
        """The family pipeline's S time values 1000σ, descending from 1000, for (h, w) latents (the dynamic
        shift's token count; the static shift ignores it). Shape: -> (S,) float32 on the CPU"""
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)  # a private copy
        options = {}
        if self.linear_sampling_sigmas:
            options["sigmas"] = np.linspace(1.0, 1 / num_steps, num_steps)
        if scheduler.config.use_dynamic_shifting:
            if latent_size is None:
                raise ValueError("a dynamically shifted schedule needs the latents' size")
            config = scheduler.config
            options["mu"] = calculate_shift((latent_size[0] // 2) * (latent_size[1] // 2),
                                            config.base_image_seq_len, config.max_image_seq_len,
                                            config.base_shift, config.max_shift)
        scheduler.set_timesteps(None if "sigmas" in options else num_steps, **options)
        return scheduler.timesteps.to(torch.float32).cpu()

    def stochastic_step(self, x_t: torch.Tensor, action: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
                        noise_scale: float, generator: torch.Generator | None = None,
                        x_next: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One SDE step σ -> σ_next with noise level a = `noise_scale` (Flow-GRPO; maths/rollout.py), the
        action being the velocity, and the log-probability of its result; with `x_next` given, only that
        sample's. A t_next below 0 (the last step) lands on σ = 0.

        Shape: x_t, action (B, C, h, w); t, t_next (B,) -> x_next (B, C, h, w), log_prob (B,)
        """
        sigma, sigma_next = self.noise_level(t), self.noise_level(t_next).clamp(min=0)
        diffusion = rollout.flow_sde_diffusion(sigma, sigma_next, noise_scale)
        mean = rollout.flow_sde_step_mean(x_t.float(), action.float(), sigma, sigma_next, diffusion)
        std = rollout.flow_sde_step_std(diffusion, sigma, sigma_next)
        if x_next is None:
            noise = torch.randn(x_t.shape, generator=generator, dtype=torch.float32).to(mean)
            x_next = mean + dpg.expand_to(std, mean) * noise
        return x_next, rollout.gaussian_log_prob(x_next, mean, std)
