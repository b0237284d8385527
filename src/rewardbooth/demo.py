"""`rewardbooth demo`: the whole path on a laptop with nothing downloaded — photos, training, sampling.

It runs on the built-in `tiny` model, whose weights are random: the images it draws are noise, and the demo
shows the machinery (data checks, DPG training with its critic, checkpoints, validation grids, metric plots,
generation) working end to end in well under a minute. A pretrained toy-world model replaces it later.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rewardbooth.config import load_config
from rewardbooth.data import make_example_subject
from rewardbooth.errors import UserError
from rewardbooth.generate import generate
from rewardbooth.train import train

PROMPTS = ["a photo of sks dog", "a photo of sks dog on the beach"]


def run_demo(output: Path, steps: int = 30, overwrite: bool = False) -> Path:
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise UserError(f"demo folder {str(output)!r} is not empty; pass --overwrite or choose another --output")
        if not (output / "model" / "config.yaml").is_file():
            raise UserError(f"refusing to overwrite {str(output)!r}: it is not a RewardBooth demo folder")
        shutil.rmtree(output)
    started = time.perf_counter()
    subject = output / "subject"
    make_example_subject(subject, num_images=4, size=64, seed=0)
    config = load_config("default", [
        "model.pretrained=tiny", f"data.instance_dir={subject}", "data.resolution=64", "data.num_class_images=4",
        "data.class_generation_steps=4", f"data.class_dir={output / 'class_images'}", f"train.max_steps={steps}",
        "train.lr=1e-4", f"train.output_dir={output / 'model'}", f"train.checkpoint_every={max(1, steps // 2)}",
        f"validation.every={max(1, steps // 2)}", "validation.num_inference_steps=10", "validation.num_images=2",
        f"validation.prompts={PROMPTS}",
    ])
    model = train(config)
    generate(str(model), PROMPTS, output / "generated", num_images=2, seed=0, num_inference_steps=10,
             resolution=64)
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; look at:")
    for path, what in [(subject, "the subject's example photos"), (model / "samples", "validation grids"),
                       (model / "metrics.png", "losses, critic loss and reward over training"),
                       (output / "generated" / "grid.png", "images from the trained model"),
                       (model, "the trained pipeline (StableDiffusionPipeline.from_pretrained) and critic")]:
        print(f"  {path}  {what}")
    return output
