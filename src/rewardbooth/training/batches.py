"""Training batches: VAE posteriors (cached once), text conditioning, and every random draw of a step.

All randomness of optimizer step `step` comes from one generator seeded by (seed, step) and is drawn for the
*global* batch of the step (batch size x processes x accumulation micro-steps); micro-step j of process p
takes slice p*k + j of it. Hence a run resumed from a checkpoint draws exactly what an uninterrupted run
draws, and N processes with batch b, or k accumulation micro-steps of batch b, see what one process with
batch N*b or k*b sees — no RNG state has to be saved or synchronised.

Two more draws have their own streams of (seed, step), so a run without them draws exactly what it always did:
the step's aspect bucket (data.aspect_buckets: one bucket per optimizer step, on every process, chosen with
probability proportional to its share of the photos) and caption dropout (data.caption_dropout).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from rewardbooth.core.config import Config
from rewardbooth.models.families import Conditioning, LatentSpace, Process

BUCKET_STREAM, DROPOUT_STREAM = 1, 2


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator unique to (seed, step, stream), independent of everything drawn before."""
    # The trailing 0 keeps the streams of runs recorded when each micro-step had its own generator; other
    # streams add a fourth entry, so they never meet one of those.
    entropy = [seed, step, 0] if stream == 0 else [seed, step, 0, stream]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
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
    shape = reward_latent_size(tuple(latents.shape[-2:]), size, factor)
    if shape != tuple(latents.shape[-2:]):
        latents = F.interpolate(latents, size=shape, mode="bilinear", antialias=shape[1] < latents.shape[-1])
    raw = latent_space.to_vae(latents)
    return ((vae.decode(raw.to(vae.dtype)).sample.float() + 1) / 2).clamp(0, 1)


def reward_latent_size(latent_size: tuple[int, int], size: int | None, factor: int) -> tuple[int, int]:
    """(h, w) at which latents are decoded for a reward of `size` px: size / f per side for square latents,
    the same area (size / f)^2 at the latents' own aspect ratio otherwise (a bucket's portrait stays one)."""
    height, width = latent_size
    if size is None or (height == width and size == width * factor):
        return height, width
    side = max(1, size // factor)
    if height == width:
        return side, side
    scale = side / math.sqrt(height * width)
    return max(1, round(height * scale)), max(1, round(width * scale))


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
    size: tuple[int, int] | None = None  # (H, W) px of the step's aspect bucket; None without buckets

    def to(self, device: torch.device) -> Batch:
        return Batch(x0=self.x0.to(device), noise=self.noise.to(device), timesteps=self.timesteps.to(device),
                     conditioning=self.conditioning.to(device),
                     num_instance=self.num_instance,
                     prompts=self.prompts, scene=None if self.scene is None else self.scene.to(device),
                     size=self.size)


class ImageSet:
    """Training images of one size, each with its prompt (its caption or its concept's prompt) and its concept's
    prompt (`fallbacks`: what caption dropout trains it with; by default the prompt itself): posteriors cached,
    or the pixels kept to encode per step."""

    def __init__(self, images: torch.Tensor, prompts: list[str], vae: AutoencoderKL, cache: bool,
                 fallbacks: list[str] | None = None):
        if len(prompts) != len(images) or (fallbacks is not None and len(fallbacks) != len(images)):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        self.prompts = list(prompts)
        self.fallbacks = list(prompts if fallbacks is None else fallbacks)
        self.pixels = None if cache else images
        self.posterior = encode_posteriors(vae, images) if cache else None
        self.size = len(images)

    def posteriors(self, vae: AutoencoderKL, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.posterior is not None:
            return self.posterior[0][indices], self.posterior[1][indices]
        return encode_posteriors(vae, self.pixels[indices])


class TrainingData:
    """Draws the micro-batches of a run from an instance set and an optional prior (class) set: one pair, or
    one pair per aspect bucket (lists, aligned, with the buckets' pixel `sizes` (H, W))."""

    def __init__(self, vae: AutoencoderKL, latent_space: LatentSpace, process: Process,
                 instance: ImageSet | list[ImageSet], prior: ImageSet | list[ImageSet] | None,
                 conditioning: dict[str, Conditioning], seed: int, scenes: dict[str, list[str]] | None = None,
                 scene_share: float = 0.0, caption_dropout: float = 0.0, sizes: list[tuple[int, int]] | None = None):
        self.vae, self.latent_space = vae, latent_space  # the family's: VAE latents -> the denoiser's
        self.process = process  # the family's: it says how timesteps are drawn
        self.instances = instance if isinstance(instance, list) else [instance]
        self.priors = prior if isinstance(prior, list) or prior is None else [prior]
        if sizes is not None and len(sizes) != len(self.instances):
            raise ValueError(f"{len(self.instances)} instance sets but {len(sizes)} bucket sizes")
        self.sizes = sizes
        self.conditioning = conditioning  # prompt -> its one-row conditioning
        self.seed = seed
        self.scenes, self.scene_share = scenes or {}, scene_share  # instance prompt -> its scene prompts
        self.caption_dropout = caption_dropout

    @property
    def instance(self) -> ImageSet:
        """The instance set (without buckets, the only one; with them, the first bucket's)."""
        return self.instances[0]

    @property
    def prior(self) -> ImageSet | None:
        return None if self.priors is None else self.priors[0]

    def bucket(self, step: int) -> int:
        """The step's bucket: drawn with probability proportional to its photos, from its own stream; 0 (no
        draw at all) with one bucket."""
        if len(self.instances) == 1:
            return 0
        weights = torch.tensor([float(image_set.size) for image_set in self.instances])
        return int(torch.multinomial(weights, 1, generator=step_generator(self.seed, step, BUCKET_STREAM)))

    def draw(self, step: int, micro: int, batch_size: int, process_index: int, num_processes: int,
             accumulation: int = 1) -> Batch:
        if not 0 <= micro < accumulation:
            raise ValueError(f"micro-step {micro} of {accumulation}")
        generator = step_generator(self.seed, step)
        start = (process_index * accumulation + micro) * batch_size
        local, global_size = slice(start, start + batch_size), batch_size * num_processes * accumulation
        bucket = self.bucket(step)
        sets = [self.instances[bucket]] + ([self.priors[bucket]] if self.priors is not None else [])
        latents, prompts, fallbacks = [], [], []
        for image_set in sets:
            indices = torch.randint(image_set.size, (global_size,), generator=generator)
            mean, std = image_set.posteriors(self.vae, indices[local])
            sample_noise = torch.randn((global_size, *mean.shape[1:]), generator=generator)
            # z ~ q(z | image), then scaled to the unit-variance space the UNet works in.
            latents.append(self.latent_space.from_vae(mean + std * sample_noise[local]))
            prompts += [image_set.prompts[index] for index in indices[local].tolist()]
            fallbacks += [image_set.fallbacks[index] for index in indices[local].tolist()]
        x0 = torch.cat(latents)
        global_shape = (len(sets) * global_size, *x0.shape[1:])
        noise = torch.randn(global_shape, generator=generator).view(len(sets), -1, *x0.shape[1:])
        timesteps = self.process.sample_timesteps(global_shape[0], generator)
        timesteps = timesteps.view(len(sets), -1)
        if self.caption_dropout > 0:
            self.drop_captions(step, len(sets), global_size, local, prompts, fallbacks)
        scene = self.draw_scenes(generator, global_size, local, prompts, fallbacks) if self.scene_share > 0 else None
        conditioning = Conditioning.cat([self.conditioning[prompt] for prompt in prompts])
        return Batch(x0=x0, noise=noise[:, local].flatten(0, 1), timesteps=timesteps[:, local].flatten(),
                     conditioning=conditioning, num_instance=batch_size, prompts=prompts, scene=scene,
                     size=None if self.sizes is None else self.sizes[bucket])

    def drop_captions(self, step: int, num_sets: int, global_size: int, local: slice, prompts: list[str],
                      fallbacks: list[str]) -> None:
        """Each row trains with its concept's bare prompt instead of its caption with probability
        caption_dropout (a row without a caption is unchanged): written into `prompts`."""
        drawn = torch.rand(num_sets, global_size, generator=step_generator(self.seed, step, DROPOUT_STREAM))
        dropped = (drawn[:, local] < self.caption_dropout).flatten()
        for row in dropped.nonzero().flatten().tolist():
            prompts[row] = fallbacks[row]

    def draw_scenes(self, generator: torch.Generator, global_size: int, local: slice, prompts: list[str],
                    fallbacks: list[str]) -> torch.Tensor:
        """Which instance rows become prompt-only rows (each with probability scene_share) and their scene
        prompts (uniform over their concept's list), written into `prompts`. Drawn after everything else, so
        the reference rows' draws are those of a run without scenes. Shape: -> (local rows,) bool"""
        chosen = (torch.rand(global_size, generator=generator) < self.scene_share)[local]
        picks = torch.rand(global_size, generator=generator)[local]
        for row in chosen.nonzero().flatten().tolist():
            options = self.scenes[fallbacks[row]]
            prompts[row] = options[min(int(picks[row] * len(options)), len(options) - 1)]
        return chosen
