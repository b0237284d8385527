"""How good the judge is, and how good the base model is by the judge: the figures the toy world reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rewardbooth.toyworld import world
from rewardbooth.toyworld.judge import (
    ATTRIBUTES,
    HELD_OUT_SEED,
    Judge,
    attribute_labels,
    evaluate_judge,
    to_tensor,
)


@torch.no_grad()
def evaluate_base_model(model: str | Path, judge: Judge, count: int = 200, steps: int = 25,
                        guidance_scale: float = 4.0) -> dict[str, float]:
    """Generate one image per held-out full caption with `model` (a registered name, `toy` or `toy-flow`, or a
    folder); the judge checks each attribute the caption names."""
    from rewardbooth.core.config import ModelConfig
    from rewardbooth.models import load_model
    from rewardbooth.models.sampling import sample_images

    _, captions, scenes = world.make_dataset(HELD_OUT_SEED + 1, count, drop=0.0)
    pipeline = load_model(ModelConfig(str(model))).pipeline()
    images = sample_images(pipeline, [(caption, index) for index, caption in enumerate(captions)], world.RESOLUTION,
                           steps, guidance_scale, batch_size=50)
    _, logits = judge(to_tensor(np.stack([np.asarray(image) for image in images])))
    labels = attribute_labels(scenes)
    return {name: float((logits[name].argmax(1) == labels[name]).float().mean()) for name in ATTRIBUTES}


def main(argv: list[str] | None = None) -> None:
    """python -m rewardbooth.experiments.toyworld.judge_eval [--model toy|toy-flow|DIR] [--judge DIR] [--output FILE]"""
    import argparse
    import json

    from rewardbooth.toyworld.assets import JUDGE_DIR
    from rewardbooth.toyworld.judge import load_judge

    parser = argparse.ArgumentParser(description="Judge accuracy and the base model's accuracy by the judge.")
    parser.add_argument("--model", default="toy", help="the base model: toy, toy-flow or a diffusers folder")
    parser.add_argument("--judge", type=Path, default=JUDGE_DIR)
    parser.add_argument("--count", type=int, default=200, help="held-out captions for the base model")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps (toy's figures: 25)")
    parser.add_argument("--guidance-scale", type=float, default=4.0, help="classifier-free guidance (toy's: 4)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    judge = load_judge(args.judge)
    report = {"judge": evaluate_judge(judge), "base_model": args.model,
              f"base_model_accuracy_on_{args.count}_held_out_captions": evaluate_base_model(
                  args.model, judge, args.count, args.steps, args.guidance_scale)}
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
