"""Sampling from a base or personalized model: PNGs per prompt and seed, and one grid."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rewardbooth.config import ModelConfig
from rewardbooth.errors import UserError
from rewardbooth.models import load_model
from rewardbooth.monitoring import make_grid


def slug(prompt: str, max_length: int = 60) -> str:
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:max_length] or "prompt"


def generate(model: str, prompts: list[str], output_dir: Path, num_images: int = 4, seed: int = 0,
             num_inference_steps: int = 25, guidance_scale: float = 7.5, resolution: int | None = None,
             overwrite: bool = False, device: str | None = None) -> list[Path]:
    """Image k of each prompt uses seed ``seed + k``, so the same call always gives the same images."""
    if not prompts:
        raise UserError("no prompt given: pass --prompt 'a photo of sks dog' (repeat it for several)")
    if num_images < 1:
        raise UserError(f"--num-images must be at least 1, got {num_images}")
    planned = [output_dir / f"{slug(prompt)}_{seed + k:05d}.png" for prompt in prompts for k in range(num_images)]
    clashes = [p for p in [*planned, output_dir / "grid.png"] if p.exists()]
    if clashes and not overwrite:
        raise UserError(f"{clashes[0]} already exists; pass --overwrite or choose another --output folder")
    parts = load_model(ModelConfig(pretrained=model))
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipeline = parts.pipeline().to(device)
    pipeline.set_progress_bar_config(disable=True)
    resolution = resolution or parts.unet.config.sample_size * parts.vae_scale_factor
    output_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for prompt in tqdm(prompts, desc="generate"):
        generators = [torch.Generator().manual_seed(seed + k) for k in range(num_images)]
        images += pipeline([prompt] * num_images, height=resolution, width=resolution,
                           num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                           generator=generators).images
    for path, image in zip(planned, images):
        image.save(path)
    make_grid(images, columns=num_images).save(output_dir / "grid.png")
    return planned
