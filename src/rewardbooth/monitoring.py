"""What a person watches during a run: metric logs (JSON lines + accelerate trackers) and sample grids."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from PIL import Image

from rewardbooth.config import ValidationConfig
from rewardbooth.models import StableDiffusionParts


def make_grid(images: list[Image.Image], columns: int | None = None) -> Image.Image:
    """Tile equally sized images row by row (default: as square as possible)."""
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height), "white")
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * width, (index // columns) * height))
    return grid


def validation_prompts(config: ValidationConfig, instance_prompt: str) -> list[str]:
    return list(config.prompts) or [instance_prompt]


@torch.no_grad()
def render_samples(parts: StableDiffusionParts, prompts: list[str], config: ValidationConfig, resolution: int,
                   device: torch.device, autocast_dtype: torch.dtype | None = None) -> Image.Image:
    """A grid with one row per prompt; seeds are fixed so grids of different steps compare like for like."""
    pipeline = parts.pipeline().to(device)
    pipeline.set_progress_bar_config(disable=True)
    images = []
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        for prompt in prompts:
            generators = [torch.Generator().manual_seed(config.seed + k) for k in range(config.num_images)]
            images += pipeline([prompt] * config.num_images, height=resolution, width=resolution,
                               num_inference_steps=config.num_inference_steps,
                               guidance_scale=config.guidance_scale, generator=generators).images
    return make_grid(images, columns=config.num_images)


class MetricsLog:
    """Appends one JSON object per logged step to metrics.jsonl (main process only)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, step: int, values: dict[str, float]) -> None:
        if self.enabled:
            with self.path.open("a") as file:
                file.write(json.dumps({"step": step, **values}) + "\n")

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so the log matches an uninterrupted run."""
        if not (self.enabled and self.path.is_file()):
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))
