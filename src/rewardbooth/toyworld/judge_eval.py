"""How good the judge is, and how good the base model is by the judge: the figures the toy world reports."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from rewardbooth.toyworld import subjects, world
from rewardbooth.toyworld.judge import ATTRIBUTES, Judge, attribute_labels, to_tensor

HELD_OUT_SEED = 90_001  # pretraining uses seed 0 and the judge seed 7: these images are new to both


@torch.no_grad()
def attribute_accuracy(judge: Judge, count: int = 2000) -> dict[str, float]:
    images, _, scenes = world.make_dataset(HELD_OUT_SEED, count, drop=0.0)
    labels = attribute_labels(scenes)
    logits = {name: [] for name in ATTRIBUTES}
    for start in range(0, count, 256):
        _, batch_logits = judge(to_tensor(images[start:start + 256]))
        for name in ATTRIBUTES:
            logits[name].append(batch_logits[name])
    return {name: float((torch.cat(logits[name]).argmax(1) == labels[name]).float().mean()) for name in ATTRIBUTES}


@torch.no_grad()
def subject_embeddings(judge: Judge, indices: list[int], views: int, seed: int) -> torch.Tensor:
    """Shape: -> (len(indices), views, D)"""
    images = [np.asarray(view) for index in indices
              for view in subjects.reference_images(subjects.make_subject(index), count=views, seed=seed)]
    embedding, _ = judge(to_tensor(np.stack(images)))
    return embedding.view(len(indices), views, -1)


@torch.no_grad()
def identity_accuracy(judge: Judge, num_subjects: int = 64) -> dict[str, float]:
    """Evaluation subjects (never trained on): does a new view sit closer to its own references than to another
    subject's? Over every pair of subjects of the same class (the hard case) and over all subjects."""
    indices = list(range(num_subjects))
    references = subject_embeddings(judge, indices, views=5, seed=0).mean(dim=1)  # (S, D) centroids
    queries = subject_embeddings(judge, indices, views=4, seed=1)  # (S, 4, D)
    similarity = torch.einsum("sqd,td->sqt", queries, references)  # query of s vs centroid of t
    classes = [subjects.make_subject(i).object_class for i in indices]
    same_class_pairs = [(s, t) for s, t in itertools.permutations(indices, 2) if classes[s] == classes[t]]
    pair_wins = [(similarity[s, :, s] > similarity[s, :, t]).float().mean() for s, t in same_class_pairs]
    retrieval = (similarity.argmax(dim=2) == torch.arange(num_subjects)[:, None]).float().mean()
    own = similarity[torch.arange(num_subjects), :, torch.arange(num_subjects)].mean()
    return {"same_class_pair_accuracy": float(torch.stack(pair_wins).mean()),
            f"retrieval_top1_of_{num_subjects}": float(retrieval),
            "mean_own_similarity": float(own), "mean_other_similarity": float(similarity.mean())}


def evaluate_judge(judge: Judge) -> dict:
    return {"held_out_attribute_accuracy": attribute_accuracy(judge), "identity": identity_accuracy(judge)}


@torch.no_grad()
def evaluate_base_model(model_dir: Path, judge: Judge, count: int = 200, steps: int = 25,
                        guidance_scale: float = 4.0) -> dict[str, float]:
    """Generate one image per held-out full caption; the judge checks each attribute the caption names."""
    from rewardbooth.config import ModelConfig
    from rewardbooth.models import load_model

    _, captions, scenes = world.make_dataset(HELD_OUT_SEED + 1, count, drop=0.0)
    pipeline = load_model(ModelConfig(str(model_dir))).pipeline()
    pipeline.set_progress_bar_config(disable=True)
    images = []
    for start in range(0, count, 50):
        batch = captions[start:start + 50]
        generators = [torch.Generator().manual_seed(start + k) for k in range(len(batch))]
        images += pipeline(batch, num_inference_steps=steps, guidance_scale=guidance_scale,
                           height=world.RESOLUTION, width=world.RESOLUTION, generator=generators).images
    _, logits = judge(to_tensor(np.stack([np.asarray(image) for image in images])))
    labels = attribute_labels(scenes)
    return {name: float((logits[name].argmax(1) == labels[name]).float().mean()) for name in ATTRIBUTES}


def main(argv: list[str] | None = None) -> None:
    """python -m rewardbooth.toyworld.judge_eval [--model DIR] [--judge DIR] [--output FILE]"""
    import argparse
    import json

    from rewardbooth.toyworld.assets import BASE_MODEL_DIR, JUDGE_DIR
    from rewardbooth.toyworld.judge import load_judge

    parser = argparse.ArgumentParser(description="Judge accuracy and the base model's accuracy by the judge.")
    parser.add_argument("--model", type=Path, default=BASE_MODEL_DIR)
    parser.add_argument("--judge", type=Path, default=JUDGE_DIR)
    parser.add_argument("--count", type=int, default=200, help="held-out captions for the base model")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    judge = load_judge(args.judge)
    report = {"judge": evaluate_judge(judge),
              f"base_model_accuracy_on_{args.count}_held_out_captions": evaluate_base_model(args.model, judge,
                                                                                           args.count)}
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
