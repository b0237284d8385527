"""Seeded sampling from a stock pipeline: the one loop behind validation samples, class images, `generate`
and the toy world's checks.

Every image has its own seed (a CPU generator per image), so an image depends on its prompt and seed, not on
which other images were drawn; the batches are consecutive chunks of the jobs, in order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from PIL import Image

from rewardbooth.core.progress import progress
from rewardbooth.models.families import move_inputs


def sample_images(pipeline, jobs: Sequence[tuple[str, int]], resolution: int, num_inference_steps: int,
                  guidance_scale: float | None = None, batch_size: int = 8, desc: str | None = None,
                  text_inputs: Mapping[tuple[str, ...], dict] | None = None) -> list[Image.Image]:
    """One image per (prompt, seed) job, `batch_size` jobs per pipeline call; `guidance_scale` None keeps the
    pipeline's default; with `desc`, a progress bar (or log lines) per batch. With `text_inputs` (a batch's
    prompts -> the pipeline's embedding arguments, `Family.pipeline_text_inputs`), no prompt is encoded here:
    the pipeline may hold no text encoder."""
    options = {} if guidance_scale is None else {"guidance_scale": guidance_scale}
    pipeline.set_progress_bar_config(disable=True)
    images: list[Image.Image] = []
    starts = range(0, len(jobs), batch_size)
    for start in starts if desc is None else progress(starts, desc=desc):
        batch = jobs[start:start + batch_size]
        prompts = [prompt for prompt, _ in batch]
        text = {"prompt": prompts} if text_inputs is None else move_inputs(text_inputs[tuple(prompts)],
                                                                           pipeline.device)
        images += pipeline(**text, height=resolution, width=resolution,
                           num_inference_steps=num_inference_steps,
                           generator=[torch.Generator().manual_seed(seed) for _, seed in batch], **options).images
    return images
