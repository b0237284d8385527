"""Prior-preservation class images: generated once with the base model, cached on disk, reused by later runs.

The cache folder is keyed by everything that changes the images (model, prompt, resolution, sampler steps),
so two runs that agree on those share it and a change never silently reuses stale images.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from rewardbooth.core.config import DataConfig
from rewardbooth.core.progress import progress
from rewardbooth.models import ModelParts
from rewardbooth.models.sampling import sample_images

GENERATION_BATCH = 4


def cache_root() -> Path:
    return Path(os.environ.get("REWARDBOOTH_CACHE", Path.home() / ".cache" / "rewardbooth"))


def class_image_dir(config: DataConfig, model_source: str) -> Path:
    if config.class_dir:
        return Path(config.class_dir)
    key = json.dumps([model_source, config.class_prompt, config.resolution, config.class_num_inference_steps])
    return cache_root() / "class_images" / hashlib.sha256(key.encode()).hexdigest()[:16]


def cached_class_images(folder: Path) -> list[Path]:
    return sorted(folder.glob("class_*.png")) if folder.is_dir() else []


def generate_class_images(parts: ModelParts, config: DataConfig, folder: Path, device: torch.device,
                          show_progress: bool = True) -> list[Path]:
    """Top the folder up to ``config.num_class_images`` images; existing images are kept, never overwritten.

    Image k is generated with seed k, so a top-up after an interrupted generation gives the same set.
    """
    existing = cached_class_images(folder)
    missing = list(range(len(existing), config.num_class_images))
    if not missing:
        return existing[: config.num_class_images]
    folder.mkdir(parents=True, exist_ok=True)
    pipeline = parts.pipeline().to(device)
    for start in progress(range(0, len(missing), GENERATION_BATCH), desc="class images", disable=not show_progress):
        indices = missing[start:start + GENERATION_BATCH]
        images = sample_images(pipeline, [(config.class_prompt, index) for index in indices], config.resolution,
                               config.class_num_inference_steps, batch_size=GENERATION_BATCH)
        for index, image in zip(indices, images):
            # Atomic: a crash leaves no half image. The temporary name is the writer's own, since runs that
            # share the cache (parallel benchmark jobs) may fill it at once; same seed, same image.
            temporary = folder / f".class_{index:05d}.{os.getpid()}.png.tmp"
            image.save(temporary, format="PNG")
            temporary.replace(folder / f"class_{index:05d}.png")
    return cached_class_images(folder)[: config.num_class_images]
