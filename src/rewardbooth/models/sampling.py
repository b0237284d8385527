"""Seeded sampling from a stock pipeline: the one loop behind validation samples, class images, `generate`
and the toy world's checks.

Every image has its own seed (a CPU generator per image), so an image depends on its prompt and seed, not on
which other images were drawn; the batches are consecutive chunks of the jobs, in order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from rewardbooth.core.progress import progress


def sample_images(pipeline, jobs: Sequence[tuple[str, int]], resolution: int, num_inference_steps: int,
                  guidance_scale: float | None = None, batch_size: int = 8, desc: str | None = None
                  ) -> list[Image.Image]:
    """One image per (prompt, seed) job, `batch_size` jobs per pipeline call; `guidance_scale` None keeps the
    pipeline's default; with `desc`, a progress bar (or log lines) per batch."""
    options = {} if guidance_scale is None else {"guidance_scale": guidance_scale}
    pipeline.set_progress_bar_config(disable=True)
    images: list[Image.Image] = []
    starts = range(0, len(jobs), batch_size)
    for start in starts if desc is None else progress(starts, desc=desc):
        batch = jobs[start:start + batch_size]
        images += pipeline([prompt for prompt, _ in batch], height=resolution, width=resolution,
                           num_inference_steps=num_inference_steps,
                           generator=[torch.Generator().manual_seed(seed) for _, seed in batch], **options).images
    return images
