"""The toy world's judge: DreamBench's two backbones for a world we can render.

- identity embedding (the DINO analogue): a unit vector per image; cosine similarity between a generated
  image and a subject's references measures subject fidelity. Trained with a cosine-softmax over many
  training subjects (indices >= TRAIN_SUBJECTS_START), so it must tell apart subjects of the same class.
- caption agreement (the CLIP-T analogue): heads for class, colour, scene, size and position; a prompt's
  score is the mean probability the image gives to each attribute the prompt names.

    python -m rewardbooth.toyworld.judge --output runs/toy-judge [--steps 3000]

Two judges ship. `judge/` gives the `toy_identity` reward and scores; `judge-heldout/` (another width,
embedding size, seed and set of training subjects) is never a reward: it scores the benchmark, so that a
policy that learned one judge's taste rather than the subject is caught by the other. Rebuild it with

    python -m rewardbooth.toyworld.judge --output judge-heldout --width 48 --embedding-dim 96 --seed 1 \
        --first-subject 20000
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from rewardbooth.maths.similarity import mean_cosine_to_references
from rewardbooth.toyworld import subjects, world

logger = logging.getLogger(__name__)

TRAIN_SUBJECTS_START = 10_000  # evaluation subjects are 0..9999: never seen by either judge
ATTRIBUTES = {"class": list(world.CLASSES), "colour": list(world.COLOURS), "scene": list(world.SCENES),
              "size": list(world.SIZES), "position": list(world.POSITIONS)}


class Judge(nn.Module):
    """Shape: images (B, 3, 32, 32) in [0, 1] -> embedding (B, D) unit norm, logits per attribute."""

    def __init__(self, num_train_subjects: int, width: int = 32, embedding_dim: int = 64):
        super().__init__()
        self.width, self.embedding_dim = width, embedding_dim

        def block(c_in, c_out, stride):
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(8, c_out), nn.SiLU())

        # 32 -> 16 -> 8 -> 4 px; patterns (stripes, dots) survive the first stride at width 32.
        self.trunk = nn.Sequential(block(3, width, 1), block(width, 2 * width, 2), block(2 * width, 2 * width, 1),
                                   block(2 * width, 4 * width, 2), block(4 * width, 4 * width, 2))
        features = 4 * width * 2  # global mean and max pooling
        self.heads = nn.ModuleDict({name: nn.Linear(features, len(values)) for name, values in ATTRIBUTES.items()})
        self.embed = nn.Sequential(nn.Linear(features, 256), nn.SiLU(), nn.Linear(256, embedding_dim))
        self.subject_weights = nn.Parameter(torch.randn(num_train_subjects, embedding_dim) * 0.01)
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        hidden = self.trunk((images - self.mean) * 2)
        return torch.cat([hidden.mean(dim=(2, 3)), hidden.amax(dim=(2, 3))], dim=1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = self.features(images)
        embedding = F.normalize(self.embed(features), dim=1)
        return embedding, {name: head(features) for name, head in self.heads.items()}


def prompt_attributes(prompt: str) -> dict[str, str]:
    """Which attribute values a prompt names, e.g. 'a purple sks ball in the snow' -> class, colour, scene."""
    words, named = f" {prompt} ", {}
    for name, phrases in [("class", {c: c for c in world.CLASSES}), ("colour", {c: c for c in world.COLOURS}),
                          ("size", {s: s for s in world.SIZES}), ("scene", world.SCENES),
                          ("position", world.POSITIONS)]:
        for value, phrase in phrases.items():
            if f" {phrase} " in words:
                named[name] = value
    return named


@torch.no_grad()
def caption_agreement(judge: Judge, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Mean probability of the attributes each prompt names. Shape: (B, 3, H, W), B prompts -> (B,)"""
    return attribute_agreement(judge, images, prompts)


def attribute_agreement(judge: Judge, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """`caption_agreement` with gradients to the images (the toy_alignment reward's). Shape: as it"""
    _, logits = judge(images)
    scores = []
    for row, prompt in enumerate(prompts):
        named = prompt_attributes(prompt)
        probabilities = [logits[name][row].softmax(-1)[ATTRIBUTES[name].index(value)] for name, value in named.items()]
        scores.append(torch.stack(probabilities).mean() if probabilities else logits["class"].new_tensor(0.0))
    return torch.stack(scores)


@torch.no_grad()
def identity_similarity(judge: Judge, images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of each image's embedding to every reference's. Shape: (B, ...), (N, ...) -> (B,)"""
    embedding, _ = judge(images)
    reference_embedding, _ = judge(references)
    return mean_cosine_to_references(embedding, reference_embedding)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float() / 255


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Noise and contrast jitter: generated images are noisier than renders, and the judge must not care."""
    noise = torch.randn(images.shape, generator=generator) * 0.04 * torch.rand(len(images), 1, 1, 1, generator=generator)
    contrast = 1 + 0.2 * (torch.rand(len(images), 1, 1, 1, generator=generator) - 0.5)
    return ((images - 0.5) * contrast + 0.5 + noise).clamp(0, 1)


def subject_pool(num_subjects: int, views: int, seed: int, first_subject: int = TRAIN_SUBJECTS_START) -> np.ndarray:
    """Views of the judge's training subjects, rendered once. Shape: -> (S, V, 32, 32, 3) uint8"""
    return np.stack([np.stack([np.asarray(view) for view in subjects.reference_images(
        subjects.make_subject(first_subject + index), count=views, seed=seed)])
        for index in range(num_subjects)])


def attribute_labels(scenes: list) -> dict[str, torch.Tensor]:
    return {"class": torch.tensor([ATTRIBUTES["class"].index(s.object_class) for s in scenes]),
            "colour": torch.tensor([ATTRIBUTES["colour"].index(s.colour) for s in scenes]),
            "scene": torch.tensor([ATTRIBUTES["scene"].index(s.scene) for s in scenes]),
            "size": torch.tensor([ATTRIBUTES["size"].index(s.size) for s in scenes]),
            "position": torch.tensor([ATTRIBUTES["position"].index(s.position) for s in scenes])}


def train_judge(steps: int, num_subjects: int, batch_size: int, seed: int, width: int = 32,
                embedding_dim: int = 64, first_subject: int = TRAIN_SUBJECTS_START) -> Judge:
    if first_subject < TRAIN_SUBJECTS_START:
        raise ValueError(f"judge training subjects start at {TRAIN_SUBJECTS_START} or later: lower indices are "
                         f"the evaluation subjects")
    torch.manual_seed(seed)
    generator, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    judge = Judge(num_subjects, width=width, embedding_dim=embedding_dim)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4, fused=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    images, _, scenes = world.make_dataset(seed + 7, 20_000, drop=0.0)
    labels = attribute_labels(scenes)
    pool = subject_pool(num_subjects, views=16, seed=seed, first_subject=first_subject)
    for step in range(steps):
        index = torch.randint(len(images), (batch_size,), generator=generator)
        _, logits = judge(augment(to_tensor(images[index.numpy()]), generator))
        attribute_loss = sum(F.cross_entropy(logits[name], labels[name][index]) for name in ATTRIBUTES)
        subject_ids = rng.integers(num_subjects, size=batch_size)
        views = pool[subject_ids, rng.integers(pool.shape[1], size=batch_size)]
        embedding, _ = judge(augment(to_tensor(views), generator))
        # Cosine softmax (normalised weights, scale 16): embeddings of one subject cluster on the sphere.
        cosine = embedding @ F.normalize(judge.subject_weights, dim=1).T
        identity_loss = F.cross_entropy(16 * cosine, torch.from_numpy(subject_ids))
        loss = attribute_loss + identity_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 200 == 0 or step == steps - 1:
            logger.info("judge step %d/%d attributes %.3f identity %.3f", step, steps, attribute_loss.item(),
                        identity_loss.item())
    return judge.eval()


def save_judge(judge: Judge, folder: Path, report: dict, first_subject: int = TRAIN_SUBJECTS_START) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(folder / "judge.safetensors"))
    architecture = {"num_train_subjects": judge.subject_weights.shape[0], "width": judge.width,
                    "embedding_dim": judge.embedding_dim, "first_train_subject": first_subject}
    (folder / "judge.json").write_text(json.dumps({**architecture, **report}, indent=2))


def load_judge(folder: Path) -> Judge:
    meta = json.loads((folder / "judge.json").read_text())
    judge = Judge(meta["num_train_subjects"], width=meta.get("width", 32), embedding_dim=meta.get("embedding_dim", 64))
    judge.load_state_dict(load_file(str(folder / "judge.safetensors")))
    return judge.eval()


# How good the judge is (recorded in judge.json): held-out images and evaluation subjects it never saw.
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the toy world's judge.")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--num-subjects", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=32, help="channels of the first conv block")
    parser.add_argument("--embedding-dim", type=int, default=64, help="size of the identity embedding")
    parser.add_argument("--first-subject", type=int, default=TRAIN_SUBJECTS_START,
                        help="index of the first training subject (10000 or more)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    judge = train_judge(args.steps, args.num_subjects, args.batch_size, args.seed, args.width, args.embedding_dim,
                        args.first_subject)
    save_judge(judge, args.output, evaluate_judge(judge), first_subject=args.first_subject)


if __name__ == "__main__":
    main()
