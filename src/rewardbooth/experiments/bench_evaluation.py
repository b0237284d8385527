"""`rewardbooth bench evaluation`: how fast `rewardbooth evaluate` scores generated images with DINO + CLIP
(DINO, CLIP-I and CLIP-T). Target: 3,000 images in 60 s on one H100, i.e. >= 50 images/s.

The backbones are DINO ViT-S/16 and CLIP ViT-B/32 with random weights by default (same architecture, same
time as the real ones, nothing to download); pass real folders to time those. The images are 512 px PNGs
written to disk, so reading and decoding them, preprocessing, the forward passes and the report all count:
the whole command as a user runs it, with the backbones already loaded.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rewardbooth.data.dreambench import prompts_for
from rewardbooth.experiments.bench import random_clip, random_dino

TARGET_IMAGES, TARGET_SECONDS = 3000, 60.0


def write_images(folder: Path, count: int, size: int, seed: int = 0) -> None:
    """Smooth random images (a generated image's PNG size, not noise's) with DreamBench prompts, in the layout
    `rewardbooth generate` writes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    prompts = prompts_for("dog")
    records = []
    for index in range(count):
        coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
        name = f"image_{index:05d}.png"
        image.save(folder / name)
        records.append({"file": name, "prompt": prompts[index % len(prompts)], "seed": index})
    (folder / "generation.json").write_text(json.dumps({"images": records}))


def run_evaluation_bench(num_images: int | None = None, image_size: int = 512, dino_model: str | None = None,
                         clip_model: str | None = None, output: Path | None = None) -> dict:
    """The report (`format_evaluation_report` makes it text; also written to `output` as JSON)."""
    from rewardbooth.evaluation.evaluate import Backbones, evaluate

    cuda = torch.cuda.is_available()
    num_images = num_images or (TARGET_IMAGES if cuda else 128)
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        dino = dino_model or str(random_dino(workdir / "dino"))
        clip = clip_model or str(random_clip(workdir / "clip"))
        write_images(workdir / "generated", num_images, image_size)
        write_images(workdir / "subject", 4, image_size, seed=1)
        (workdir / "subject" / "generation.json").unlink()
        backbones = Backbones(dino, clip, torch.device("cuda" if cuda else "cpu"))
        backbones.get("dino"), backbones.get("clip")  # loading is not scoring
        start = time.perf_counter()
        evaluate([workdir / "generated"], workdir / "subject", workdir / "report", backbones=backbones)
        seconds = time.perf_counter() - start
    rate = num_images / seconds
    report = {"images": num_images, "image_size": image_size, "metrics": ["dino", "clip_i", "clip_t"],
              "dino_model": dino_model or "random ViT-S/16", "clip_model": clip_model or "random ViT-B/32",
              "device": torch.cuda.get_device_name() if cuda else
              f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
              "seconds": seconds, "images_per_s": rate,
              "target_images_per_s": TARGET_IMAGES / TARGET_SECONDS,
              "seconds_for_3000": TARGET_IMAGES / rate}
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_evaluation_report(report: dict) -> str:
    return (f"evaluate (DINO + CLIP-I + CLIP-T), {report['images']} images of {report['image_size']} px on "
            f"{report['device']}: {report['seconds']:.1f} s, {report['images_per_s']:.1f} images/s; 3,000 images "
            f"would take {report['seconds_for_3000']:.0f} s (target: {TARGET_SECONDS:.0f} s on one H100)")
