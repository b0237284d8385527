"""Training batches: VAE posteriors (cached once), text conditioning, and every random draw of a step.

All randomness of optimizer step `step` comes from one generator seeded by (seed, step) and is drawn for the
*global* batch of the step (batch size x processes x accumulation micro-steps); micro-step j of process p
takes slice p*k + j of it. Hence a run resumed from a checkpoint draws exactly what an uninterrupted run
draws, and N processes with batch b, or k accumulation micro-steps of batch b, see what one process with
batch N*b or k*b sees — no RNG state has to be saved or synchronised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from rewardbooth.core.config import Config
from rewardbooth.models.families import Conditioning, LatentSpace, Process


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator unique to (seed, step), independent of everything drawn before."""
    # The trailing 0 keeps the streams of runs recorded when each micro-step had its own generator.
    state = np.random.SeedSequence([seed, step, 0]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


@torch.no_grad()
def encode_posteriors(vae: AutoencoderKL, images: torch.Tensor, chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the VAE posterior q(z | image), in the VAE's raw units.

    Shape: images (N, 3, H, W) in [0, 1] -> mean, std (N, C, H/f, W/f)
    """
    means, stds = [], []
    for start in range(0, len(images), chunk):
        pixels = images[start:start + chunk].to(vae.device, vae.dtype) * 2 - 1  # the VAE expects [-1, 1]
        posterior = vae.encode(pixels).latent_dist
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def decode_latents(vae: AutoencoderKL, latent_space: LatentSpace, latents: torch.Tensor,
                   size: int | None = None) -> torch.Tensor:
    """The inverse of the family's latent scaling (`latent_space`), then the VAE decoder.

    With `size`, the latents are first resized to size / f per side, so the decoder (the costly part of an
    image reward) produces size x size pixels: decoding 4x fewer latents is ~4x cheaper. Differentiable: a
    reward scored under `torch.no_grad` (DPG) builds no graph, one scored with gradients (`direct`, the
    critic diagnostics) backpropagates through the decoder to the latents.

    Shape: (B, C, h, w) in the UNet's latent space -> (B, 3, h*f, w*f) float32 in [0, 1]
    """
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if size is not None and size != latents.shape[-1] * factor:
        side = max(1, size // factor)
        latents = F.interpolate(latents, size=(side, side), mode="bilinear", antialias=side < latents.shape[-1])
    raw = latent_space.to_vae(latents)
    return ((vae.decode(raw.to(vae.dtype)).sample.float() + 1) / 2).clamp(0, 1)


def image_decoder(vae: AutoencoderKL, latent_space: LatentSpace, config: Config
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
    """`decode_latents` at the run's reward resolution: how rewards and critics see x0_hat as images."""
    return partial(decode_latents, vae, latent_space, size=config.objective.reward_resolution)


def with_flips(images: torch.Tensor, random_flip: bool) -> torch.Tensor:
    """Every image, then every image mirrored: a uniform index into this set is a random flip."""
    return torch.cat([images, images.flip(-1)]) if random_flip else images


@dataclass
class Batch:
    """One micro-batch on one process: instance samples first, then prior (class) samples."""

    x0: torch.Tensor  # (B, C, h, w) reference latents
    noise: torch.Tensor  # (B, C, h, w)
    timesteps: torch.Tensor  # (B,) the process's time values (DDPM int64 t, flow float32 1000σ)
    conditioning: Conditioning  # the family's: embeddings of frozen encoders, token ids of trained ones
    num_instance: int
    prompts: list[str]
    # (num_instance,) bool: rows whose prompt is a scene prompt without a photo (objective.scene_share). Their
    # x0 is the replaced photo's and must not be used (no mse, no reference latent); None when the share is 0.
    scene: torch.Tensor | None = None

    def to(self, device: torch.device) -> Batch:
        return Batch(x0=self.x0.to(device), noise=self.noise.to(device), timesteps=self.timesteps.to(device),
                     conditioning=self.conditioning.to(device),
                     num_instance=self.num_instance,
                     prompts=self.prompts, scene=None if self.scene is None else self.scene.to(device))


class ImageSet:
    """Training images, each with its prompt (one per concept): posteriors cached, or the pixels kept to encode
    per step."""

    def __init__(self, images: torch.Tensor, prompts: list[str], vae: AutoencoderKL, cache: bool):
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        self.prompts = list(prompts)
        self.pixels = None if cache else images
        self.posterior = encode_posteriors(vae, images) if cache else None
        self.size = len(images)

    def posteriors(self, vae: AutoencoderKL, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.posterior is not None:
            return self.posterior[0][indices], self.posterior[1][indices]
        return encode_posteriors(vae, self.pixels[indices])


class TrainingData:
    """Draws the micro-batches of a run from an instance set and an optional prior (class) set."""

    def __init__(self, vae: AutoencoderKL, latent_space: LatentSpace, process: Process, instance: ImageSet,
                 prior: ImageSet | None, conditioning: dict[str, Conditioning], seed: int,
                 scenes: dict[str, list[str]] | None = None, scene_share: float = 0.0):
        self.vae, self.latent_space = vae, latent_space  # the family's: VAE latents -> the denoiser's
        self.process = process  # the family's: it says how timesteps are drawn
        self.instance, self.prior = instance, prior
        self.conditioning = conditioning  # prompt -> its one-row conditioning
        self.seed = seed
        self.scenes, self.scene_share = scenes or {}, scene_share  # instance prompt -> its scene prompts

    def draw(self, step: int, micro: int, batch_size: int, process_index: int, num_processes: int,
             accumulation: int = 1) -> Batch:
        if not 0 <= micro < accumulation:
            raise ValueError(f"micro-step {micro} of {accumulation}")
        generator = step_generator(self.seed, step)
        start = (process_index * accumulation + micro) * batch_size
        local, global_size = slice(start, start + batch_size), batch_size * num_processes * accumulation
        sets = [self.instance] + ([self.prior] if self.prior is not None else [])
        latents, prompts = [], []
        for image_set in sets:
            indices = torch.randint(image_set.size, (global_size,), generator=generator)
            mean, std = image_set.posteriors(self.vae, indices[local])
            sample_noise = torch.randn((global_size, *mean.shape[1:]), generator=generator)
            # z ~ q(z | image), then scaled to the unit-variance space the UNet works in.
            latents.append(self.latent_space.from_vae(mean + std * sample_noise[local]))
            prompts += [image_set.prompts[index] for index in indices[local].tolist()]
        x0 = torch.cat(latents)
        global_shape = (len(sets) * global_size, *x0.shape[1:])
        noise = torch.randn(global_shape, generator=generator).view(len(sets), -1, *x0.shape[1:])
        timesteps = self.process.sample_timesteps(global_shape[0], generator)
        timesteps = timesteps.view(len(sets), -1)
        scene = self.draw_scenes(generator, global_size, local, prompts) if self.scene_share > 0 else None
        conditioning = Conditioning.cat([self.conditioning[prompt] for prompt in prompts])
        return Batch(x0=x0, noise=noise[:, local].flatten(0, 1), timesteps=timesteps[:, local].flatten(),
                     conditioning=conditioning, num_instance=batch_size, prompts=prompts, scene=scene)

    def draw_scenes(self, generator: torch.Generator, global_size: int, local: slice, prompts: list[str]
                    ) -> torch.Tensor:
        """Which instance rows become prompt-only rows (each with probability scene_share) and their scene
        prompts (uniform over their concept's list), written into `prompts`. Drawn after everything else, so
        the reference rows' draws are those of a run without scenes. Shape: -> (local rows,) bool"""
        chosen = (torch.rand(global_size, generator=generator) < self.scene_share)[local]
        picks = torch.rand(global_size, generator=generator)[local]
        for row in chosen.nonzero().flatten().tolist():
            options = self.scenes[prompts[row]]
            prompts[row] = options[min(int(picks[row] * len(options)), len(options) - 1)]
        return chosen
