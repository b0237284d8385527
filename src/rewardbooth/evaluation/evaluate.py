"""`rewardbooth evaluate`: DreamBench's metrics on generated images, with the protocol recorded.

- DINO: mean over reference photos of the cosine between DINO ViT-S/16 CLS features (Ruiz et al. 2023).
- CLIP-I: the same with CLIP ViT-B/32 image embeddings.
- CLIP-T: cosine between the image embedding and the embedding of its prompt with the identifier removed.
- face (optional): 1 - dlib descriptor distance to the mean reference face; `toy` (optional): the toy judge.

Each metric is one registration in `rewardbooth.evaluation.metrics` (`rewardbooth evaluate --list-metrics`);
feature extraction is `rewardbooth.rewards.backbones` (official preprocessing), the maths
`rewardbooth.maths.similarity`. Here: which runs, the backbones loaded once, the loop and the report.
Each generated folder is one run of one subject (e.g. one method); several are compared side by side.
The prompt and seed of every image come from the `generation.json` that `rewardbooth generate` writes.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path

import torch
from PIL import Image

from rewardbooth.core.errors import UserError
from rewardbooth.core.progress import progress
from rewardbooth.data.images import IMAGE_SUFFIXES, load_subject_images, try_load_image, within
from rewardbooth.evaluation.metrics import BACKBONES, Metric, RunImages
from rewardbooth.evaluation.metrics import metrics as registered

logger = logging.getLogger(__name__)


def read_generated(folder: Path) -> list[dict]:
    """[{file, prompt, seed}] of a folder written by `rewardbooth generate` (prompt None without a record).

    Only files inside the folder are listed: an absolute or `../` name in generation.json, or a symlink that
    leads out, is refused with a warning (a folder from elsewhere must not make the report copy other files)."""
    if not folder.is_dir():
        raise UserError(f"generated folder {str(folder)!r} does not exist: pass a folder of generated images")
    record = folder / "generation.json"
    if record.is_file():
        rows = json.loads(record.read_text())["images"]
    else:
        rows = [{"file": p.name, "prompt": None, "seed": None} for p in sorted(folder.iterdir())
                if p.suffix.lower() in IMAGE_SUFFIXES and p.name != "grid.png"]
    refused = [str(row.get("file")) for row in rows if within(folder, row.get("file")) is None]
    if refused:
        logger.warning("%s: not reading %d image(s) whose path leads out of the folder (absolute, ../ or a "
                       "symlink): %s", folder, len(refused), ", ".join(refused))
    rows = [row for row in rows if str(row.get("file")) not in refused]
    if not rows:
        raise UserError(f"generated folder {str(folder)!r} holds no image")
    return rows


# The option that names each backbone, per command: an error names the one the user can change.
EVALUATE_KEYS = {"dino": "dino_model", "clip": "clip_model"}  # evaluate()'s parameters (the CLI: its flags)


def resolve_metrics(names: tuple[str, ...] | list[str]) -> list[Metric]:
    """The registered metrics of these names, or a UserError naming the first unknown one."""
    unknown = [name for name in names if name not in registered]
    if unknown:
        raise UserError(f"unknown metric {unknown[0]!r}: choose from {', '.join(registered.names())} "
                        f"(`rewardbooth evaluate --list-metrics`)")
    return [registered.get(name) for name in names]


def backbones_for(names: tuple[str, ...] | list[str]) -> list[str]:
    """The backbones the metrics need, once each, in the order the metrics ask for them."""
    return list(dict.fromkeys(m.backbone for m in resolve_metrics(names) if m.backbone is not None))


class Backbones:
    """Each backbone loaded once, on first use, and shared by every run evaluated.

    `keys` name the option that sets each model in the command at hand (evaluate's dino_model, a sweep
    file's dino_model), so that a model that does not load is reported against the right one."""

    def __init__(self, dino_model: str, clip_model: str, device: torch.device, judge_dir: str | None = None,
                 keys: dict[str, str] | None = None):
        self.dino_model, self.clip_model, self.device, self.judge_dir = dino_model, clip_model, device, judge_dir
        self.keys = keys or EVALUATE_KEYS
        self._cache: dict[str, object] = {}

    def get(self, name: str):
        if name not in self._cache:
            try:
                self._cache[name] = BACKBONES[name].load(self)
            except UserError as error:
                raise UserError(self._for_this_command(name, str(error))) from None
        return self._cache[name]

    def check(self, metric_names: tuple[str, ...]) -> None:
        """Load every backbone the metrics need, so that a bad model name fails before any slow work."""
        for name in backbones_for(metric_names):
            self.get(name)

    def _for_this_command(self, name: str, message: str) -> str:
        """The backbone loader's message speaks of a training reward (objective.reward_options): name this
        command's option instead."""
        if name not in self.keys:
            return message
        text = message.removeprefix(f"reward {BACKBONES[name].reward!r}: ")
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


def score_run(folder: Path, references: list[Image.Image], metric_names: tuple[str, ...], identifiers: list[str],
              backbones: Backbones) -> list[dict]:
    """One row per generated image: file, prompt, seed and every metric."""
    loaded = [(row, try_load_image(within(folder, row["file"]))) for row in read_generated(folder)]
    rows = [row for row, image in loaded if image is not None]  # an unreadable image is skipped, with a warning
    if not rows:
        raise UserError(f"generated folder {str(folder)!r} holds no readable image: generate it again")
    run = RunImages([image for _, image in loaded if image is not None], [row["prompt"] for row in rows],
                    references, identifiers, backbones.device)
    chosen = resolve_metrics(metric_names)
    needing = next((m.name for m in chosen if m.needs_prompts), None)
    if needing is not None and any(prompt is None for prompt in run.prompts):
        raise UserError(f"{folder} has no generation.json, so the prompts of its images are unknown: {needing} "
                        f"needs them; generate with `rewardbooth generate`, or leave {needing} out of metrics")
    with torch.no_grad():
        scores = {m.name: m(run, None if m.backbone is None else backbones.get(m.backbone)) for m in chosen}
    return [{**row, **{name: float(values[i]) for name, values in scores.items()}} for i, row in enumerate(rows)]


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
    resolve_metrics(metrics)
    names = [folder.name for folder in generated]
    if len(set(names)) != len(names):
        raise UserError("two generated folders share a name: the report names runs by folder name; rename one")
    references = [image for _, image in load_subject_images(subject_dir)]
    if backbones is None:
        backbones = Backbones(dino_model, clip_model,
                              torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")), judge_dir)
    backbones.check(metrics)
    runs = {}
    for folder in progress(generated, desc="evaluate"):
        identifiers = run_identifiers(folder, identifier)
        rows = score_run(folder, references, metrics, identifiers, backbones)
        summary, prompt_rows = summarize(rows, metrics)
        runs[folder.name] = {"folder": str(folder), "identifiers": identifiers, "summary": summary,
                             "prompts": prompt_rows, "images": rows, "generation": _generation_record(folder)}
    report = {"subject": str(subject_dir), "reference_images": len(references),
              "identifier": identifier if identifier is not None else "from each run's generation.json",
              "protocol": protocol(metrics, backbones), "runs": runs}
    from rewardbooth.evaluation.report import write_reports

    write_reports(report, metrics, output, references)
    return report


def _generation_record(folder: Path) -> dict | None:
    record = folder / "generation.json"
    if not record.is_file():
        return None
    return {k: v for k, v in json.loads(record.read_text()).items() if k != "images"}


def protocol(metric_names: tuple[str, ...], backbones: Backbones) -> dict:
    """How each metric was computed, as the report records it (the backbones by the models loaded)."""
    return {m.name: m.describe(backbones) for m in resolve_metrics(metric_names)}


def describe_metrics(keys: dict[str, str] | None = None) -> str:
    """What `rewardbooth evaluate --list-metrics` prints: per metric, its backbone (with the option that sets
    it, `keys`: evaluate()'s parameters by default) and how it scores."""
    keys, lines = keys or EVALUATE_KEYS, []
    for name in registered.names():
        entry = registered.get(name)
        backbone = entry.protocol.get("backbone") or f"{entry.backbone}" + (
            f" ({keys[entry.backbone]})" if entry.backbone in keys else "")
        needs = "; needs the prompts (generation.json)" if entry.needs_prompts else ""
        lines.append(f"{name}\n    backbone: {backbone}{needs}\n    score: {entry.protocol['score']}")
    return "\n".join(lines)
