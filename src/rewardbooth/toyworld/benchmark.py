"""The toy-world benchmark: does DPG make subjects more faithful than DreamBooth, at what cost in alignment?

Every (subject, seed, objective) run is stored as it finishes, so an interrupted benchmark resumes where it
stopped. Each objective is compared with `baseline` on the same subject and seed; the deltas are averaged
per subject over seeds, and the 95 % interval is a bootstrap over subjects (seeds of one subject are not
independent samples). Reported subjects (indices from REPORTED_SUBJECTS_START) are never the ones the
settings were tuned on (the demo's subject 0 and its neighbours).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from rewardbooth.toyworld import subjects
from rewardbooth.toyworld.assets import JUDGE_DIR, require
from rewardbooth.toyworld.experiment import (
    BASE_MODEL,
    OBJECTIVES,
    Setting,
    fidelity_ceiling,
    personalize_and_score,
)
from rewardbooth.toyworld.judge import load_judge

REPORTED_SUBJECTS_START = 100
METRICS = ("fidelity", "alignment")


def run_toyworld_benchmark(output: Path, num_subjects: int = 8, seeds: tuple[int, ...] = (0, 1, 2),
                           objectives: tuple[str, ...] = tuple(OBJECTIVES), setting: Setting | None = None,
                           first_subject: int = REPORTED_SUBJECTS_START, jobs: int = 1) -> dict:
    """`jobs` > 1 runs that many single-threaded processes at once: on a small CPU two one-thread runs
    finish ~1.6x sooner than two two-thread runs one after the other (the toy models are too small to use
    two threads well)."""
    setting = setting or Setting()
    objectives = ("baseline", *[name for name in objectives if name != "baseline"])  # deltas need baseline
    indices = list(range(first_subject, first_subject + num_subjects))
    runs = [(index, seed, objective) for index in indices for seed in seeds for objective in objectives]
    pending = [run for run in runs if not _result_file(output, *run).is_file()]
    if jobs > 1 and len(pending) > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(jobs, initializer=_single_thread) as pool:
            tasks = [(output, *run, setting) for run in pending]
            for _ in tqdm(pool.imap_unordered(_run_one, tasks), total=len(tasks), desc="toy benchmark"):
                pass
    else:
        for run in tqdm(pending, desc="toy benchmark"):
            _run_one((output, *run, setting))
    scores = {run: json.loads(_result_file(output, *run).read_text()) for run in runs}
    summary = summarize(scores, indices, seeds, objectives)
    judge = load_judge(require(JUDGE_DIR, "judge.json", "rewardbooth.toyworld.judge"))
    ceilings = {index: fidelity_ceiling(subjects.make_subject(index), judge) for index in indices}
    report = {"setting": {**setting.__dict__, "overrides": list(setting.overrides)}, "subjects": indices,
              "seeds": list(seeds), "summary": summary, "fidelity_ceiling": statistics.fmean(ceilings.values()),
              "fidelity_ceiling_per_subject": ceilings,
              "per_subject": {f"{i}/{s}/{o}": scores[(i, s, o)] for i, s, o in runs}}
    (output / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (output / "results.md").write_text(markdown_table(summary, len(indices), len(seeds), setting,
                                                      report["fidelity_ceiling"]))
    return report


def _result_file(output: Path, index: int, seed: int, objective: str) -> Path:
    return output / "runs" / f"subject{index:03d}-seed{seed}" / objective / "scores.json"


def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _run_one(task: tuple) -> None:
    """One (subject, seed, objective) run, stored when it finishes; a partial one is started again."""
    import shutil

    from rewardbooth.cli import _quiet_libraries

    output, index, seed, objective, setting = task
    _quiet_libraries()
    result_file = _result_file(output, index, seed, objective)
    folder = result_file.parent
    if folder.exists():
        shutil.rmtree(folder)
    judge = load_judge(require(JUDGE_DIR, "judge.json", "rewardbooth.toyworld.judge"))
    result = personalize_and_score(subjects.make_subject(index), objective, seed, folder,
                                   output / "class_images" / f"subject{index:03d}", judge, setting)
    # The weights (12 MB a run) are not needed once scored; config, metrics, samples and images stay.
    for weights in (folder / "model").glob("*/*.safetensors"):
        weights.unlink()
    temporary = result_file.with_suffix(".tmp")
    temporary.write_text(json.dumps(result))
    temporary.rename(result_file)


def summarize(scores: dict, indices: list[int], seeds: tuple[int, ...], objectives: tuple[str, ...]) -> dict:
    summary = {}
    for objective in objectives:
        row = {}
        for metric in METRICS:
            absolute = [statistics.fmean(scores[(i, s, objective)][metric] for s in seeds) for i in indices]
            row[metric] = statistics.fmean(absolute)
            if objective != "baseline":
                deltas = [statistics.fmean(scores[(i, s, objective)][metric] - scores[(i, s, "baseline")][metric]
                                           for s in seeds) for i in indices]
                row[f"{metric}_delta"] = statistics.fmean(deltas)
                row[f"{metric}_delta_95"] = bootstrap_interval(deltas)
        row["train_s"] = statistics.fmean(scores[(i, s, objective)]["train_s"] for i in indices for s in seeds)
        summary[objective] = row
    return summary


def bootstrap_interval(values: list[float], resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95 % interval of the mean."""
    if len(values) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    data = np.asarray(values)
    means = data[rng.integers(len(data), size=(resamples, len(data)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return (float(low), float(high))


def markdown_table(summary: dict, num_subjects: int, num_seeds: int, setting: Setting, ceiling: float) -> str:
    lines = [f"Toy-world benchmark: {num_subjects} subjects x {num_seeds} seeds, {setting.steps} steps at lr "
             f"{setting.lr:g}{', ' + ' '.join(setting.overrides) if setting.overrides else ''}; deltas vs baseline, "
             f"mean [95 % bootstrap interval over subjects]", "",
             "| objective | fidelity | alignment | Δ fidelity | Δ alignment | train s |", "|---|---|---|---|---|---|"]
    for objective, row in summary.items():
        deltas = [f"{row[f'{m}_delta']:+.4f} [{row[f'{m}_delta_95'][0]:+.4f}, {row[f'{m}_delta_95'][1]:+.4f}]"
                  if f"{m}_delta" in row else "—" for m in METRICS]
        lines.append(f"| {objective} | {row['fidelity']:.4f} | {row['alignment']:.4f} | {deltas[0]} | {deltas[1]} "
                     f"| {row['train_s']:.1f} |")
    lines += ["", f"Fidelity ceiling (new views of the subjects through the base model's VAE): {ceiling:.4f}. "
              f"`{BASE_MODEL}` is the shipped model drawing the prompts without the identifier: the floor."]
    return "\n".join(lines) + "\n"
