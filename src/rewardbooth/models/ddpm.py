"""The DDPM forward process (Ho et al. 2020) of the Stable Diffusion families (SD 1.x/2.x, SDXL): their
`Process` (rewardbooth.models.families), read from the model's own scheduler config."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler

from rewardbooth.maths import dpg, rollout


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


    def sampling_timesteps(self, num_steps: int, latent_size: tuple[int, int] | None = None) -> torch.Tensor:
        """A sampler's S time values, descending, spaced as SD's DDIM scheduler spaces them ("leading",
        steps_offset 1): T/S * (S-1) + 1, ..., T/S + 1, 1, whatever the latents' size.
        Shape: -> (S,) int64 on the CPU"""
        stride = self.num_train_timesteps // num_steps
        return torch.arange(num_steps - 1, -1, -1) * stride + 1

    def stochastic_step(self, x_t: torch.Tensor, action: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
                        noise_scale: float, generator: torch.Generator | None = None,
                        x_next: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One DDIM step t -> t_next with eta = `noise_scale` (maths/rollout.py), and the log-probability of
        its result; with `x_next` given, only that sample's log-probability. A t_next below 0 (the last step)
        lands on ᾱ_0, as SD's DDIM (set_alpha_to_one false), so every step keeps a positive std.

        Shape: x_t, action (B, C, h, w); t, t_next (B,) -> x_next (B, C, h, w), log_prob (B,)
        """
        alpha_bar_t, alpha_bar_prev = self.alpha_bar(t), self.alpha_bar(t_next.clamp(min=0))
        std = rollout.ddim_step_std(alpha_bar_t, alpha_bar_prev, noise_scale)
        mean = rollout.ddim_step_mean(x_t, self.look_forward(x_t, action, t), alpha_bar_t, alpha_bar_prev, std)
        if x_next is None:
            noise = torch.randn(x_t.shape, generator=generator, dtype=torch.float32).to(x_t)
            x_next = mean + dpg.expand_to(std, x_t) * noise
        return x_next, rollout.gaussian_log_prob(x_next, mean, std)


def prediction_type_of(scheduler_config) -> str:
    """What a scheduler config says the denoiser predicts (diffusers' default: epsilon)."""
    return scheduler_config.get("prediction_type", "epsilon")
