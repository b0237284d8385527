"""The metrics `rewardbooth evaluate` reports: a registry, one registration per metric.

A metric (`Metric`) declares the shared backbone it reads (a key of `BACKBONES`, loaded once by
`evaluate.Backbones` and shared by every run and subject; None when it needs none), whether it needs the
images' prompts, how the report describes it (its `protocol` entry), and how it scores one run's images
against the subject's photos: ``score(run: RunImages, backbone) -> (N,)``, one float per image.

    @metric("dino", backbone="dino", protocol={"feature": ..., "score": ...})
    def dino(run: RunImages, features: DinoFeatures) -> torch.Tensor:
        return mean_cosine_to_references(run.embed("DINO", features), run.embed_references("DINO", features))

The feature extractors are the training rewards' own (`rewardbooth.rewards.backbones`, official
preprocessing), the cosine maths is `rewardbooth.maths.similarity`: each metric only puts them together.
`tests/contract/test_metric_contract.py` runs over every registration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from rewardbooth.core.registry import Registry
from rewardbooth.data.images import pil_to_tensor, remove_identifier
from rewardbooth.maths.similarity import mean_cosine_to_references, paired_cosine

BATCH = 32
metrics = Registry("metric")


@dataclass(frozen=True)
class Backbone:
    """A model several metrics share. `load` and `describe` read the evaluation's settings (`Backbones`:
    dino_model, clip_model, judge_dir, device); `reward` is the label the reward loaders put on their errors,
    which `Backbones` rewords for the command at hand."""

    load: Callable[[Any], Any]
    describe: Callable[[Any], str]
    reward: str | None = None


def _load_dino(models: Any) -> Any:
    from rewardbooth.rewards.backbones import DinoFeatures

    return DinoFeatures(models.dino_model, models.device)


def _load_clip(models: Any) -> Any:
    from rewardbooth.rewards.backbones import ClipFeatures

    return ClipFeatures(models.clip_model, models.device, reward="clip_text", with_text=True)


def _load_judge(models: Any) -> Any:
    from rewardbooth.toyworld.assets import JUDGE_DIR, require
    from rewardbooth.toyworld.judge import load_judge

    return load_judge(Path(models.judge_dir) if models.judge_dir else
                      require(JUDGE_DIR, "judge.json", "rewardbooth.toyworld.judge"))


BACKBONES = {"dino": Backbone(_load_dino, lambda models: models.dino_model, reward="dino"),
             "clip": Backbone(_load_clip, lambda models: models.clip_model, reward="clip_text"),
             "judge": Backbone(_load_judge, lambda models: "toy judge")}


def embed(extract: Callable[[torch.Tensor], torch.Tensor], images: list[Image.Image], desc: str) -> torch.Tensor:
    """Features of every image, batched by size (preprocessing resizes each image as it comes)."""
    order = sorted(range(len(images)), key=lambda i: images[i].size)
    features: dict[int, torch.Tensor] = {}
    batches = [order[i:i + BATCH] for i in range(0, len(order), BATCH)]
    for batch in tqdm(batches, desc=desc, leave=False, disable=None):  # None: no bar off a terminal
        for size in {images[i].size for i in batch}:
            members = [i for i in batch if images[i].size == size]
            rows = extract(torch.stack([pil_to_tensor(images[i]) for i in members]))
            features.update({i: row.float().cpu() for i, row in zip(members, rows)})
    return torch.stack([features[i] for i in range(len(images))])


def without_identifiers(prompt: str, identifiers: list[str]) -> str:
    for identifier in identifiers:
        prompt = remove_identifier(prompt, identifier)
    return prompt


@dataclass
class RunImages:
    """One run's images, their prompts and the subject's photos, with what several metrics read (CLIP's
    image features for CLIP-I and CLIP-T, the judge's input) computed once."""

    images: list[Image.Image]
    prompts: list[str | None]  # None for a folder without generation.json
    references: list[Image.Image]
    identifiers: list[str]  # the words text metrics remove from the prompts
    device: torch.device
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    @property
    def texts(self) -> list[str]:
        """The prompts with the identifiers removed: what CLIP-T and the toy judge compare the images to."""
        return [without_identifiers(prompt, self.identifiers) for prompt in self.prompts]

    def embed(self, desc: str, extract: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Shape: -> (N, D) features of the run's images by `extract`, named `desc` (one name per extractor)."""
        return self.cached(f"images/{desc}", lambda: embed(extract, self.images, desc))

    def embed_references(self, desc: str, extract: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Shape: -> (R, D) features of the subject's photos."""
        return self.cached(f"references/{desc}", lambda: embed(extract, self.references, desc))


@dataclass(frozen=True)
class Metric:
    name: str
    backbone: str | None  # a key of BACKBONES, or None
    needs_prompts: bool
    protocol: dict[str, str]  # how the report describes it, besides its backbone
    score_fn: Callable[[RunImages, Any], torch.Tensor]

    def __call__(self, run: RunImages, backbone: Any) -> torch.Tensor:
        """Shape: -> (N,) one score per image of the run."""
        return self.score_fn(run, backbone)

    def describe(self, models: Any) -> dict[str, str]:
        """Its entry in the report's protocol."""
        if self.backbone is None:
            return dict(self.protocol)
        return {"backbone": BACKBONES[self.backbone].describe(models), **self.protocol}


def metric(name: str, *, backbone: str | None, protocol: dict[str, str], needs_prompts: bool = False):
    """Register the decorated ``score(run, backbone) -> (N,)`` as the metric `name`."""
    if backbone is not None and backbone not in BACKBONES:
        raise ValueError(f"metric {name!r}: unknown backbone {backbone!r} (one of {', '.join(BACKBONES)})")

    def register(score_fn: Callable[[RunImages, Any], torch.Tensor]) -> Metric:
        return metrics.register(name)(Metric(name, backbone, needs_prompts, protocol, score_fn))

    return register


# --- DreamBench (Ruiz et al. 2023, §4.1) -----------------------------------------------------------------------

@metric("dino", backbone="dino", protocol={
    "feature": "final-layer CLS token, L2-normalised",
    "preprocessing": "resize short side 256 (bicubic), center crop 224, ImageNet mean/std",
    "score": "mean cosine to each reference photo"})
def dino(run: RunImages, features: Any) -> torch.Tensor:
    return mean_cosine_to_references(run.embed("DINO", features), run.embed_references("DINO", features))


@metric("clip_i", backbone="clip", protocol={
    "feature": "projected image embedding, L2-normalised",
    "preprocessing": "resize short side 224 (bicubic), center crop 224, CLIP mean/std",
    "score": "mean cosine to each reference photo"})
def clip_i(run: RunImages, clip: Any) -> torch.Tensor:
    return mean_cosine_to_references(run.embed("CLIP", clip.images), run.embed_references("CLIP", clip.images))


@metric("clip_t", backbone="clip", needs_prompts=True, protocol={
    "text": "prompt with the identifier removed", "score": "cosine of image and text embeddings (unscaled)"})
def clip_t(run: RunImages, clip: Any) -> torch.Tensor:
    texts = {text: clip.text(text).cpu() for text in set(run.texts)}  # the text tower once per distinct prompt
    return paired_cosine(run.embed("CLIP", clip.images), torch.stack([texts[text] for text in run.texts]))


@metric("face", backbone=None, protocol={
    "backbone": "dlib face recognition ResNet v1 (face_recognition_models)",
    "score": "1 - L2 distance to the mean reference descriptor; no face scores 0"})
def face(run: RunImages, _: None) -> torch.Tensor:
    from rewardbooth.rewards import RewardSetup, make_scorer

    size = run.references[0].size  # the references at one size, to stack them
    references = torch.stack([pil_to_tensor(reference.resize(size)) for reference in run.references])
    scorer = make_scorer("face", RewardSetup(references, "", run.device))
    return torch.cat([scorer.score_images(pil_to_tensor(image)[None], [""]).scores for image in run.images])


# --- the toy world's judge (rewardbooth.toyworld.judge) ---------------------------------------------------------

def _judge_inputs(run: RunImages) -> tuple[torch.Tensor, torch.Tensor]:
    from rewardbooth.toyworld.scoring import images_to_tensor

    return run.cached("judge", lambda: (images_to_tensor(run.images), images_to_tensor(run.references)))


@metric("toy_fidelity", backbone="judge", protocol={"score": "mean identity cosine to each reference"})
def toy_fidelity(run: RunImages, judge: Any) -> torch.Tensor:
    from rewardbooth.toyworld.judge import identity_similarity

    return identity_similarity(judge, *_judge_inputs(run))


@metric("toy_alignment", backbone="judge", needs_prompts=True,
        protocol={"score": "mean probability of the prompt's attributes"})
def toy_alignment(run: RunImages, judge: Any) -> torch.Tensor:
    from rewardbooth.toyworld.judge import caption_agreement

    return caption_agreement(judge, _judge_inputs(run)[0], run.texts)
