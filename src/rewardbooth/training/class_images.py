"""Prior-preservation class images: generated once with the base model, cached on disk, reused by later runs.

The cache folder is keyed by everything that changes the images (model, prompt, resolution, sampler steps),
so two runs that agree on those share it and a change never silently reuses stale images.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path

import torch
from PIL import Image

from rewardbooth.core.config import DataConfig
from rewardbooth.core.progress import progress
from rewardbooth.data.images import IMAGE_SUFFIXES, try_load_image
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


def class_image_files(folder: Path) -> list[Path]:
    """Every image file of the folder, sorted by name: generated class_*.png and a user's own photos alike."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())


def read_class_images(folder: Path, count: int, warn: bool = True) -> list[tuple[Path, Image.Image]]:
    """The first `count` readable images of the folder; an unreadable one is skipped with a warning."""
    images = []
    for path in class_image_files(folder):
        image = try_load_image(path, warn=warn)
        if image is not None:
            images.append((path, image))
        if len(images) == count:
            break
    return images


def generate_class_images(parts: ModelParts, config: DataConfig, folder: Path, device: torch.device,
                          show_progress: bool = True) -> list[Path]:
    """Top the folder up to ``config.num_class_images`` readable images; existing files (a user's own class
    photos of any name, a corrupt one) are used or skipped, never overwritten.

    Each new image is class_k.png for the first free k, generated with seed k, so a top-up after an
    interrupted generation gives the same set.
    """
    readable = [path for path, _ in read_class_images(folder, config.num_class_images, warn=False)]
    taken = {path.name for path in class_image_files(folder)}
    free = (k for k in itertools.count() if f"class_{k:05d}.png" not in taken)
    missing = list(itertools.islice(free, config.num_class_images - len(readable)))
    if not missing:
        return readable
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
    return [path for path, _ in read_class_images(folder, config.num_class_images, warn=False)]
