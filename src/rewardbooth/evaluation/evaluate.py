"""`rewardbooth evaluate`: DreamBench's metrics on generated images, with the protocol recorded.

- DINO: mean over reference photos of the cosine between DINO ViT-S/16 CLS features (Ruiz et al. 2023).
- CLIP-I: the same with CLIP ViT-B/32 image embeddings.
- CLIP-T: cosine between the image embedding and the embedding of its prompt with the identifier removed.
- face (optional): 1 - dlib descriptor distance to the mean reference face; `toy` (optional): the toy judge.

Feature extraction (`rewardbooth.rewards.backbones`, official preprocessing) is kept apart from the maths
here. Each generated folder is one run of one subject (e.g. one method); several are compared side by side.
The prompt and seed of every image come from the `generation.json` that `rewardbooth generate` writes.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from rewardbooth.core.errors import UserError
from rewardbooth.core.progress import progress
from rewardbooth.data.images import IMAGE_SUFFIXES, load_image, load_subject_images, remove_identifier

BATCH = 32
METRICS = ("dino", "clip_i", "clip_t", "face", "toy_fidelity", "toy_alignment")


def mean_cosine_to_references(features: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Unit features (N, D) and (R, D) -> (N,): each image's mean cosine over the references."""
    return (features @ references.T).mean(dim=1)


def paired_cosine(images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """Unit features (N, D) and (N, D) -> (N,): each image's cosine to its own text."""
    return (images * texts).sum(dim=1)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).float() / 255


def embed(extract: Callable[[torch.Tensor], torch.Tensor], images: list[Image.Image], desc: str) -> torch.Tensor:
    """Features of every image, batched by size (preprocessing resizes each image as it comes)."""
    order = sorted(range(len(images)), key=lambda i: images[i].size)
    features: dict[int, torch.Tensor] = {}
    batches = [order[i:i + BATCH] for i in range(0, len(order), BATCH)]
    for batch in tqdm(batches, desc=desc, leave=False, disable=None):  # None: no bar off a terminal
        for size in {images[i].size for i in batch}:
            members = [i for i in batch if images[i].size == size]
            rows = extract(torch.stack([to_tensor(images[i]) for i in members]))
            features.update({i: row.float().cpu() for i, row in zip(members, rows)})
    return torch.stack([features[i] for i in range(len(images))])


def read_generated(folder: Path) -> list[dict]:
    """[{file, prompt, seed}] of a folder written by `rewardbooth generate` (prompt None without a record)."""
    if not folder.is_dir():
        raise UserError(f"generated folder {str(folder)!r} does not exist: pass a folder of generated images")
    record = folder / "generation.json"
    if record.is_file():
        return json.loads(record.read_text())["images"]
    files = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name != "grid.png")
    if not files:
        raise UserError(f"generated folder {str(folder)!r} holds no image")
    return [{"file": name, "prompt": None, "seed": None} for name in files]


# The option that names each backbone, per command: an error names the one the user can change.
EVALUATE_KEYS = {"dino": "--dino-model", "clip": "--clip-model"}
_BACKBONE_REWARDS = {"dino": "dino", "clip": "clip_text"}  # the reward label rewards.backbones reports


def backbones_for(metrics: tuple[str, ...]) -> list[str]:
    """The backbones the metrics need, in loading order."""
    needs = {"dino": {"dino"}, "clip": {"clip_i", "clip_t"}, "judge": {"toy_fidelity", "toy_alignment"}}
    return [name for name, uses in needs.items() if uses & set(metrics)]


class Backbones:
    """Each backbone loaded once, on first use, and shared by every run evaluated.

    `keys` name the option that sets each model in the command at hand (evaluate's --dino-model, a sweep
    file's dino_model), so that a model that does not load is reported against the right one."""

    def __init__(self, dino_model: str, clip_model: str, device: torch.device, judge_dir: str | None = None,
                 keys: dict[str, str] | None = None):
        self.dino_model, self.clip_model, self.device, self.judge_dir = dino_model, clip_model, device, judge_dir
        self.keys = keys or EVALUATE_KEYS
        self._cache: dict[str, object] = {}

    def get(self, name: str):
        if name not in self._cache:
            try:
                self._cache[name] = self._load(name)
            except UserError as error:
                raise UserError(self._for_this_command(name, str(error))) from None
        return self._cache[name]

    def check(self, metrics: tuple[str, ...]) -> None:
        """Load every backbone the metrics need, so that a bad model name fails before any slow work."""
        for name in backbones_for(metrics):
            self.get(name)

    def _load(self, name: str):
        from rewardbooth.rewards.backbones import ClipFeatures, DinoFeatures

        if name == "dino":
            return DinoFeatures(self.dino_model, self.device)
        if name == "clip":
            return ClipFeatures(self.clip_model, self.device, reward="clip_text", with_text=True)
        from rewardbooth.toyworld.assets import JUDGE_DIR, require
        from rewardbooth.toyworld.judge import load_judge

        return load_judge(Path(self.judge_dir) if self.judge_dir else
                          require(JUDGE_DIR, "judge.json", "rewardbooth.toyworld.judge"))

    def _for_this_command(self, name: str, message: str) -> str:
        """The backbone loader's message speaks of a training reward (objective.reward_options): name this
        command's option instead."""
        if name not in self.keys:
            return message
        text = message.removeprefix(f"reward {_BACKBONE_REWARDS[name]!r}: ")
        reward_advice = text.find("objective.reward_options")
        if reward_advice >= 0:
            text = text[:max(text.rfind("; ", 0, reward_advice), 0)]
        return (f"{name} backbone: {text}; set {self.keys[name]} to a local folder saved with save_pretrained, or "
                f"a hub id this machine can download")


def run_identifiers(folder: Path, identifier: str | None) -> list[str]:
    """The words CLIP-T removes from a run's prompts: the one given, else those its generation.json records
    (the run's own, e.g. Custom Diffusion's '<new1>'), else 'sks'."""
    if identifier is not None:
        return [identifier]
    record = folder / "generation.json"
    recorded = json.loads(record.read_text()).get("identifiers") if record.is_file() else None
    return list(recorded) if recorded else ["sks"]


def score_run(folder: Path, references: list[Image.Image], metrics: tuple[str, ...], identifiers: list[str],
              backbones: Backbones) -> list[dict]:
    """One row per generated image: file, prompt, seed and every metric."""
    rows = read_generated(folder)
    images = [load_image(folder / row["file"]) for row in rows]
    prompts = [row["prompt"] for row in rows]
    if any(p is None for p in prompts) and {"clip_t", "toy_alignment"} & set(metrics):
        raise UserError(f"{folder} has no generation.json, so the prompts of its images are unknown: CLIP-T needs "
                        f"them; generate with `rewardbooth generate`, or leave clip_t out of --metrics")
    scores: dict[str, torch.Tensor] = {}
    if "dino" in metrics:
        dino = backbones.get("dino")
        scores["dino"] = mean_cosine_to_references(embed(dino, images, "DINO"), embed(dino, references, "DINO"))
    if {"clip_i", "clip_t"} & set(metrics):
        clip = backbones.get("clip")
        image_features = embed(clip.images, images, "CLIP")
        if "clip_i" in metrics:
            scores["clip_i"] = mean_cosine_to_references(image_features, embed(clip.images, references, "CLIP"))
        if "clip_t" in metrics:
            texts = {p: clip.text(without_identifiers(p, identifiers)).cpu() for p in set(prompts)}
            scores["clip_t"] = paired_cosine(image_features, torch.stack([texts[p] for p in prompts]))
    if "face" in metrics:
        scores["face"] = _face_scores(images, references, backbones.device)
    if {"toy_fidelity", "toy_alignment"} & set(metrics):
        scores.update(_toy_scores(images, references, prompts, identifiers, backbones.get("judge"), metrics))
    return [{**row, **{name: float(values[i]) for name, values in scores.items()}} for i, row in enumerate(rows)]


def _face_scores(images: list[Image.Image], references: list[Image.Image], device: torch.device) -> torch.Tensor:
    from rewardbooth.rewards import RewardContext, RewardSetup, make_reward

    size = references[0].size
    refs = torch.stack([to_tensor(r.resize(size)) for r in references])
    reward = make_reward("face", RewardSetup(refs, "", device))
    return torch.cat([reward(to_tensor(image)[None], RewardContext(torch.zeros(1), [""], lambda x: x)).scores
                      for image in images])


def without_identifiers(prompt: str, identifiers: list[str]) -> str:
    for identifier in identifiers:
        prompt = remove_identifier(prompt, identifier)
    return prompt


def _toy_scores(images, references, prompts, identifiers, judge, metrics) -> dict[str, torch.Tensor]:
    from rewardbooth.toyworld.judge import caption_agreement, identity_similarity
    from rewardbooth.toyworld.scoring import images_to_tensor

    pixels, refs = images_to_tensor(images), images_to_tensor(references)
    result = {}
    with torch.no_grad():
        if "toy_fidelity" in metrics:
            result["toy_fidelity"] = identity_similarity(judge, pixels, refs)
        if "toy_alignment" in metrics:
            result["toy_alignment"] = caption_agreement(judge, pixels, [without_identifiers(p, identifiers)
                                                                         for p in prompts])
    return result


def summarize(rows: list[dict], metrics: tuple[str, ...]) -> tuple[dict[str, float], list[dict]]:
    """(the run's mean of every metric, one row per prompt with its means)"""
    by_prompt: dict[str, list[dict]] = {}
    for row in rows:
        by_prompt.setdefault(row["prompt"] or "", []).append(row)
    prompt_rows = [{"prompt": prompt, "images": len(group),
                    **{m: statistics.fmean(r[m] for r in group) for m in metrics}} for prompt, group in by_prompt.items()]
    # DreamBench averages over images (every prompt has the same number of them).
    return {m: statistics.fmean(r[m] for r in rows) for m in metrics}, prompt_rows


def evaluate(generated: list[Path], subject_dir: Path, output: Path, metrics: tuple[str, ...] = ("dino", "clip_i", "clip_t"),
             identifier: str | None = None, dino_model: str = "facebook/dino-vits16",
             clip_model: str = "openai/clip-vit-base-patch32", judge_dir: str | None = None,
             device: str | None = None, backbones: Backbones | None = None) -> dict:
    """Score every generated folder against the subject's photos; writes JSON, CSV, Markdown and HTML.

    `identifier` (default: each run's own, from its generation.json) is removed from prompts for CLIP-T.
    `backbones` (already loaded) replace the model names, e.g. for a sweep over many subjects."""
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise UserError(f"unknown metric {unknown[0]!r}: choose from {', '.join(METRICS)}")
    names = [folder.name for folder in generated]
    if len(set(names)) != len(names):
        raise UserError("two generated folders share a name: the report names runs by folder name; rename one")
    references = [image for _, image in load_subject_images(subject_dir)]
    if backbones is None:
        backbones = Backbones(dino_model, clip_model,
                              torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")), judge_dir)
    backbones.check(metrics)
    dino_model, clip_model = backbones.dino_model, backbones.clip_model
    runs = {}
    for folder in progress(generated, desc="evaluate"):
        identifiers = run_identifiers(folder, identifier)
        rows = score_run(folder, references, metrics, identifiers, backbones)
        summary, prompt_rows = summarize(rows, metrics)
        runs[folder.name] = {"folder": str(folder), "identifiers": identifiers, "summary": summary,
                             "prompts": prompt_rows, "images": rows, "generation": _generation_record(folder)}
    report = {"subject": str(subject_dir), "reference_images": len(references),
              "identifier": identifier if identifier is not None else "from each run's generation.json",
              "protocol": protocol(metrics, dino_model, clip_model), "runs": runs}
    from rewardbooth.evaluation.report import write_reports

    write_reports(report, metrics, output, references)
    return report


def _generation_record(folder: Path) -> dict | None:
    record = folder / "generation.json"
    if not record.is_file():
        return None
    return {k: v for k, v in json.loads(record.read_text()).items() if k != "images"}


def protocol(metrics: tuple[str, ...], dino_model: str, clip_model: str) -> dict:
    entries = {"dino": {"backbone": dino_model, "feature": "final-layer CLS token, L2-normalised",
                        "preprocessing": "resize short side 256 (bicubic), center crop 224, ImageNet mean/std",
                        "score": "mean cosine to each reference photo"},
               "clip_i": {"backbone": clip_model, "feature": "projected image embedding, L2-normalised",
                          "preprocessing": "resize short side 224 (bicubic), center crop 224, CLIP mean/std",
                          "score": "mean cosine to each reference photo"},
               "clip_t": {"backbone": clip_model, "text": "prompt with the identifier removed",
                          "score": "cosine of image and text embeddings (unscaled)"},
               "face": {"backbone": "dlib face recognition ResNet v1 (face_recognition_models)",
                        "score": "1 - L2 distance to the mean reference descriptor; no face scores 0"},
               "toy_fidelity": {"backbone": "toy judge", "score": "mean identity cosine to each reference"},
               "toy_alignment": {"backbone": "toy judge", "score": "mean probability of the prompt's attributes"}}
    return {m: entries[m] for m in metrics}
