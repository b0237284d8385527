"""Model families: what differs between Stable Diffusion 1.x/2.x, SDXL and, next, the flow-matching
transformers (SD3, FLUX), asked of one registered object instead of tested for across the code.

A family (one module each: rewardbooth.models.stable_diffusion) provides, for the components it loads:

- `process(parts)`: the training-time forward process (`DiffusionProcess`: the timestep distribution, x_t from
  x0, noise and t, the denoising target and x̂0 from the action; the maths itself is rewardbooth.maths.dpg);
- `latent_space(parts)`: VAE scaling and shift between the VAE's latents and the denoiser's;
- `tokenize(tokenizers, prompts)` and `encode_text(encoders, token_ids)`: the text conditioning;
- `micro_conditioning(resolution)`: extra ids besides text and t (SDXL's size ids), or None;
- `denoise(denoiser, x_t, timesteps, conditioning, encoders, micro)`: the action and the text embedding. Latent
  packing (FLUX's 2x2 patches) belongs inside it: the loop, rewards and critic see (B, C, h, w) latents;
- `resolution_multiple(parts)`, `native_resolution(parts)`: the sizes the denoiser takes and was trained at;
- `lora_targets`, `pipeline_class`, `load_options`, `matches(class_name)`, `pipeline(parts)` and
  `parts_from_pipeline(pipeline, source)`: LoRA's default layers, and loading and saving with stock diffusers.

The loop, batches, bench and methods ask `parts.family` and never look at `alphas_cumprod` or at which
encoders a model has. tests/contract/test_family_contract.py runs every registered family on its tiny model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler

from rewardbooth.core.registry import Registry
from rewardbooth.maths import dpg, rollout

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

    def sample_timesteps(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """t ~ U{0, ..., T-1}, as DDPM trains. Shape: -> (count,) int64, on the CPU"""
        return torch.randint(self.num_train_timesteps, (count,), generator=generator)

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

    def sampling_timesteps(self, num_steps: int) -> torch.Tensor:
        """A sampler's S time values, descending, spaced as SD's DDIM scheduler spaces them ("leading",
        steps_offset 1): T/S * (S-1) + 1, ..., T/S + 1, 1. Shape: -> (S,) int64 on the CPU"""
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


@dataclass(frozen=True)
class LatentSpace:
    """The denoiser's latents from the VAE's: z = (z_vae - shift) * scale (SD: scale 0.18215, no shift; SD3 and
    FLUX shift too). Read from the VAE's own config, as diffusers' pipelines do."""

    scaling_factor: float
    shift_factor: float = 0.0

    @classmethod
    def of(cls, vae) -> LatentSpace:
        return cls(vae.config.scaling_factor, vae.config.get("shift_factor") or 0.0)

    def from_vae(self, latents: torch.Tensor) -> torch.Tensor:
        """Shape: (B, C, h, w) -> (B, C, h, w)"""
        return (latents - self.shift_factor) * self.scaling_factor

    def to_vae(self, latents: torch.Tensor) -> torch.Tensor:
        """Shape: (B, C, h, w) -> (B, C, h, w)"""
        return latents / self.scaling_factor + self.shift_factor


def family_for_pipeline(pipeline_class_name: str):
    """The registered family whose pipeline class a diffusers folder names (model_index.json), or None."""
    for name in families.names():
        family = families.get(name)
        if family.matches(pipeline_class_name):
            return family
    return None
