"""The toy-world benchmark: does DPG make subjects more faithful than DreamBooth, at what cost in alignment,
and is the gain the critic's?

Every (subject, seed, objective) run is stored as it finishes, so an interrupted benchmark resumes where it
stopped. Each method is compared, on the same subjects and seeds, with its controls (`experiment.CONTROLS`):
DreamBooth, DreamBooth with the instance loss doubled, and `direct` (the exact gradient of the reward the
critic approximates). Deltas are averaged per subject over seeds; the 95 % interval is a bootstrap over
subjects (rewardbooth.maths.statistics). Two judges score every run: `judge`, which also gives the toy_identity
reward, and `heldout`, trained apart and never a reward; the headline figures are the held-out judge's.
Reported subjects (indices from REPORTED_SUBJECTS_START) are never the ones settings were tuned on.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

from rewardbooth.core.errors import UserError
from rewardbooth.core.progress import progress
from rewardbooth.evaluation.plots import PALETTE
from rewardbooth.experiments.toyworld.experiment import (
    BASE_MODEL,
    CONTROLS,
    JUDGES,
    METRICS,
    OBJECTIVES,
    Setting,
    check_prompt_leak,
    fidelity_ceiling,
    load_judges,
    metric_key,
    personalize_and_score,
    score_generated,
)
from rewardbooth.experiments.toyworld.hacking import fidelity_trace, gap_lines, gap_table
from rewardbooth.maths.statistics import format_delta, paired_comparison, pareto_front
from rewardbooth.toyworld import subjects

REPORTED_SUBJECTS_START = 100
ALIGNMENT_HOLDS = -0.02  # the lower end of alignment's 95 % interval against the tuned DreamBooth, at least
PROMPTS_NOTE = {"all": "", "unseen": ", scored on the prompts naming no scene or position that prompt-only "
                                     "training uses (subjects.held_out_prompt_set)"}
KEYS = tuple(metric_key(judge, metric) for judge in JUDGES for metric in METRICS)


def run_toyworld_benchmark(output: Path, num_subjects: int = 8, seeds: tuple[int, ...] = (0, 1, 2),
                           objectives: tuple[str, ...] = tuple(OBJECTIVES), setting: Setting | None = None,
                           first_subject: int = REPORTED_SUBJECTS_START, jobs: int = 1,
                           run_pending: bool = True) -> dict:
    """`jobs` > 1 runs that many single-threaded processes at once: on a small CPU two one-thread runs
    finish ~1.6x sooner than two two-thread runs one after the other (the toy models are too small to use
    two threads well). `run_pending=False` runs nothing and summarises the stored runs: each comparison over
    the (subject, seed) pairs both sides have (an interrupted benchmark's partial seeds)."""
    setting = setting or Setting()
    objectives = ("baseline", *[name for name in objectives if name != "baseline"])  # deltas need baseline
    indices = list(range(first_subject, first_subject + num_subjects))
    runs = [(index, seed, objective) for index in indices for seed in seeds for objective in objectives]
    for objective in objectives:
        check_prompt_leak(objective, setting)  # before any run, not after hours of them
    recorded = _recorded(output, setting)
    pending = [run for run in runs if not _result_file(output, *run).is_file() and _key(*run) not in recorded]
    if not run_pending:
        runs, pending = [run for run in runs if run not in pending], []
        objectives = tuple(objective for objective in objectives if any(run[2] == objective for run in runs))
    if jobs > 1 and len(pending) > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(jobs, initializer=_single_thread) as pool:
            tasks = [(output, *run, setting) for run in pending]
            for _ in progress(pool.imap_unordered(_run_one, tasks), total=len(tasks), desc="toy benchmark"):
                pass
    else:
        for run in progress(pending, desc="toy benchmark"):
            _run_one((output, *run, setting))
    judges = load_judges()
    scores = {run: _scores(output, run, judges, recorded) for run in runs}  # only the stored runs, if not run_pending
    report = summarize(scores, indices, seeds, objectives)
    report["runs"] = {objective: sum(run[2] == objective for run in runs) for objective in objectives}
    report["hacking"] = gap_table({objective: [scores[run]["trace"] for run in runs if run[2] == objective
                                               and "trace" in scores[run]] for objective in objectives})
    ceilings = {index: {name: fidelity_ceiling(subjects.make_subject(index), judge) for name, judge in judges.items()}
                for index in indices}
    report.update({
        "pareto_front": pareto_front({name: (row["heldout_alignment"], row["heldout_fidelity"])
                                      for name, row in report["summary"].items()}),
        "setting": {**setting.__dict__, "overrides": list(setting.overrides)}, "subjects": indices,
        "seeds": list(seeds), "headline_judge": "heldout",
        "fidelity_ceiling": {name: statistics.fmean(c[name] for c in ceilings.values()) for name in judges},
        "fidelity_ceiling_per_subject": ceilings,
        # Every run ever scored here, this invocation's and earlier ones' (so a later, wider one resumes).
        "per_subject": {**recorded, **{_key(*run): scores[run] for run in runs}}})
    (output / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (output / "results.md").write_text(markdown_report(report, setting))
    frontier_plot(report, output / "results.png")
    return report


def _result_file(output: Path, index: int, seed: int, objective: str) -> Path:
    return output / "runs" / f"subject{index:03d}-seed{seed}" / objective / "scores.json"


def _key(index: int, seed: int, objective: str) -> str:
    return f"{index}/{seed}/{objective}"


def _recorded(output: Path, setting: Setting) -> dict[str, dict]:
    """The runs results.json holds (committed with the benchmark, unlike the run folders): done already."""
    results = output / "results.json"
    if not results.is_file():
        return {}
    stored = json.loads(results.read_text())
    # Results from before a field had its default: all prompts, the toy model.
    for field, default, what in (("prompts", "all", "scored on the {} prompts"), ("model", "toy", "of the {} model")):
        stored_value, value = stored.get("setting", {}).get(field, default), getattr(setting, field)
        if stored_value != value:
            raise UserError(f"{results} holds runs {what.format(repr(stored_value))}, not {value!r}: pass "
                            f"--{field} {stored_value} or another --output folder")
    per_subject = stored.get("per_subject", {})
    return {key: value for key, value in per_subject.items() if set(KEYS) <= value.keys()}


def _scores(output: Path, run: tuple, judges: dict, recorded: dict[str, dict]) -> dict:
    """A run's stored scores (its folder's, else results.json's); a run stored before a judge existed is scored
    by it from its saved images."""
    path = _result_file(output, *run)
    if not path.is_file():
        return recorded[_key(*run)]
    stored = json.loads(path.read_text())
    missing_scores = not set(KEYS) <= stored.keys()
    missing_trace = "trace" not in stored and (path.parent / "model" / "samples").is_dir()  # base-model has none
    if missing_scores:
        stored.update(score_generated(path.parent, judges))
    if missing_trace:
        stored["trace"] = fidelity_trace(path.parent, judges)
    if missing_scores or missing_trace:
        path.write_text(json.dumps(stored))
    return stored


def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _run_one(task: tuple) -> None:
    """One (subject, seed, objective) run, stored when it finishes; a partial one is started again."""
    import shutil

    from rewardbooth.core.progress import quiet_libraries

    output, index, seed, objective, setting = task
    quiet_libraries()
    result_file = _result_file(output, index, seed, objective)
    folder = result_file.parent
    if folder.exists():
        shutil.rmtree(folder)
    result = personalize_and_score(subjects.make_subject(index), objective, seed, folder,
                                   output / "class_images" / f"subject{index:03d}", load_judges(), setting)
    # The weights (12 MB a run) are not needed once scored; config, metrics, samples and images stay.
    for weights in (folder / "model").glob("*/*.safetensors"):
        weights.unlink()
    temporary = result_file.with_suffix(".tmp")
    temporary.write_text(json.dumps(result))
    temporary.rename(result_file)


def summarize(scores: dict, indices: list[int], seeds: tuple[int, ...], objectives: tuple[str, ...]) -> dict:
    """Absolute means per objective, the paired comparisons of every method with its controls (each metric
    by each judge), and how far the two judges agree. A (subject, seed) run missing from `scores` is left
    out: of an objective's mean, and of every comparison it is one side of."""
    def mean_of(objective: str, key: str) -> float:
        per_subject = [[scores[(i, s, objective)][key] for s in seeds if (i, s, objective) in scores] for i in indices]
        return statistics.fmean(statistics.fmean(values) for values in per_subject if values)

    summary = {objective: {key: mean_of(objective, key) for key in (*KEYS, "train_s")} for objective in objectives}
    comparisons = {}
    for method in objectives:
        for control in controls_of(method):
            if control not in objectives or control == method or not any(
                    _paired(scores, i, s, method, control) for i in indices for s in seeds):
                continue
            comparisons[f"{method} vs {control}"] = {
                key: paired_comparison(lambda i, s, k=key, m=method, c=control: _delta(scores, i, s, m, c, k),
                                       indices, seeds) for key in KEYS}
    return {"summary": summary, "comparisons": comparisons, "judge_agreement": judge_agreement(scores, comparisons)}


def controls_of(objective: str) -> tuple[str, ...]:
    """What an objective is compared with: its route's controls, and for a tuning variant
    (`name@section.key=value`) the route itself too."""
    route = objective.split("@")[0]
    controls = CONTROLS.get(route, ("baseline",))
    return tuple(dict.fromkeys(controls if route == objective else (*controls, route)))


def _paired(scores: dict, index: int, seed: int, method: str, control: str) -> bool:
    """Both runs of one (subject, seed) are stored."""
    return (index, seed, method) in scores and (index, seed, control) in scores


def _delta(scores: dict, index: int, seed: int, method: str, control: str, key: str) -> float | None:
    """method - control on one (subject, seed); None when either run is missing."""
    if not _paired(scores, index, seed, method, control):
        return None
    return scores[(index, seed, method)][key] - scores[(index, seed, control)][key]


def judge_agreement(scores: dict, comparisons: dict) -> dict:
    """Pearson correlation of the two judges' scores over runs, and of their per-subject deltas."""
    def correlation(a: list[float], b: list[float]) -> float:
        return float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 and np.std(a) > 0 and np.std(b) > 0 else float("nan")

    agreement = {}
    for metric in METRICS:
        runs = [(row[metric_key("judge", metric)], row[metric_key("heldout", metric)]) for row in scores.values()]
        deltas = [(d1, d2) for comparison in comparisons.values()
                  for d1, d2 in zip(comparison[metric_key("judge", metric)]["per_subject"],
                                    comparison[metric_key("heldout", metric)]["per_subject"])]
        agreement[metric] = {"runs": correlation(*zip(*runs)) if runs else float("nan"),
                             "paired_deltas": correlation(*zip(*deltas)) if deltas else float("nan")}
    return agreement


def markdown_report(report: dict, setting: Setting) -> str:
    num_subjects, num_seeds = len(report["subjects"]), len(report["seeds"])
    lines = [f"Toy-world benchmark on `{setting.model}`: {num_subjects} subjects x {num_seeds} seeds, {setting.steps} steps at lr "
             f"{setting.lr:g}{', ' + ' '.join(setting.overrides) if setting.overrides else ''}"
             f"{PROMPTS_NOTE[setting.prompts]}. Fidelity and "
             "alignment by the held-out judge (never a reward) and by the reward judge (which also gives the "
             "toy_identity reward).", "",
             "| objective | fidelity (held-out) | alignment (held-out) | fidelity (reward judge) | "
             "alignment (reward judge) | train s |", "|---|---|---|---|---|---|"]
    for objective, row in report["summary"].items():
        lines.append(f"| {objective} | {row['heldout_fidelity']:.4f} | {row['heldout_alignment']:.4f} | "
                     f"{row['fidelity']:.4f} | {row['alignment']:.4f} | {row['train_s']:.1f} |")
    expected = num_subjects * num_seeds
    if any(count < expected for count in report.get("runs", {}).values()):
        lines += ["", f"Partial: runs stored per objective (of {expected}): "
                  + ", ".join(f"{name} {count}" for name, count in report["runs"].items())
                  + ". Each comparison uses the (subject, seed) pairs both sides have."]
    lines += ["", "Paired deltas (method - control; mean over subjects [95 % bootstrap interval], subjects ahead):",
              "", "| comparison | Δ fidelity (held-out) | Δ alignment (held-out) | Δ fidelity (reward judge) | "
              "Δ alignment (reward judge) |", "|---|---|---|---|---|"]
    for name, comparison in report["comparisons"].items():
        cells = [f"{format_delta(comparison[key])} {comparison[key]['wins']}/{comparison[key]['subjects']}"
                 for key in ("heldout_fidelity", "heldout_alignment", "fidelity", "alignment")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", verdicts(report["comparisons"]), "",
              "Pareto front (held-out alignment and fidelity; no other objective is better on both): "
              + ", ".join(report["pareto_front"]) + " (results.png)."]
    lines += ["", *gap_lines(report.get("hacking", {}))]
    agreement, ceiling = report["judge_agreement"], report["fidelity_ceiling"]
    lines += ["", "Judge agreement (Pearson r, held-out vs reward judge): fidelity over runs "
              f"{agreement['fidelity']['runs']:.3f}, over paired deltas {agreement['fidelity']['paired_deltas']:.3f}; "
              f"alignment over runs {agreement['alignment']['runs']:.3f}, over paired deltas "
              f"{agreement['alignment']['paired_deltas']:.3f}.", "",
              f"Fidelity ceiling (new views of the subjects through the base model's VAE): {ceiling['heldout']:.4f} "
              f"(held-out judge), {ceiling['judge']:.4f} (reward judge). `{BASE_MODEL}` is the shipped model "
              "drawing the prompts without the identifier: the floor."]
    return "\n".join(lines) + "\n"


def verdicts(comparisons: dict, control: str = "baseline-tuned") -> str:
    """Against the tuned DreamBooth, by the held-out judge: which methods gain fidelity (interval above 0) and
    which hold alignment (the lower end of its interval at least ALIGNMENT_HOLDS)."""
    rows = []
    for name, comparison in comparisons.items():
        method, _, against = name.partition(" vs ")
        if against == control:
            gains = comparison["heldout_fidelity"]["interval"][0] > 0
            holds = comparison["heldout_alignment"]["interval"][0] >= ALIGNMENT_HOLDS
            rows.append(f"{method}: fidelity {'up' if gains else 'not up'}, alignment "
                        f"{'holds' if holds else 'does not hold'}")
    return (f"Against {control} (held-out judge; fidelity up = interval above 0, alignment holds = lower end "
            f">= {ALIGNMENT_HOLDS}): " + ("; ".join(rows) or f"no objective here is compared with {control}") + ".")


def frontier_plot(report: dict, path: Path) -> Path:
    """Held-out fidelity against held-out alignment, one point per objective (mean over subjects) with the
    95 % interval of its paired delta to DreamBooth as bars: where each method sits on the trade-off. The
    Pareto front (objectives no other beats on both) is joined by a line."""
    from PIL import Image, ImageDraw

    summary = report["summary"]
    width, height, margin = 720, 520, 70
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    xs = [row["heldout_alignment"] for row in summary.values()]
    ys = [row["heldout_fidelity"] for row in summary.values()]
    x_low, x_high = min(xs) - 0.03, max(xs) + 0.03
    y_low, y_high = min(ys) - 0.03, max(ys) + 0.03

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (margin + (x - x_low) / (x_high - x_low) * (width - 2 * margin),
                height - margin - (y - y_low) / (y_high - y_low) * (height - 2 * margin))

    draw.rectangle([margin, margin, width - margin, height - margin], outline="gray")
    draw.text((width // 2 - 90, height - margin + 30), "text alignment (held-out judge) ->", fill="black")
    draw.text((8, margin - 40), "subject fidelity (held-out judge), up is better", fill="black")
    for value, (x, y) in ((x_low, to_px(x_low, y_low)), (x_high, to_px(x_high, y_low))):
        draw.text((x - 12, y + 6), f"{value:.2f}", fill="black")
    for value in (y_low, y_high):
        x, y = to_px(x_low, value)
        draw.text((x - 40, y - 6), f"{value:.2f}", fill="black")
    front = pareto_front({name: (row["heldout_alignment"], row["heldout_fidelity"]) for name, row in summary.items()})
    draw.line([to_px(summary[name]["heldout_alignment"], summary[name]["heldout_fidelity"]) for name in front],
              fill="lightgray", width=3)
    draw.text((width - margin - 150, margin + 8), "line: the Pareto front", fill="gray")
    colours = PALETTE
    for index, (objective, row) in enumerate(summary.items()):
        colour = colours[index % len(colours)]
        x, y = to_px(row["heldout_alignment"], row["heldout_fidelity"])
        against = report["comparisons"].get(f"{objective} vs baseline")
        if against is not None:  # the interval of the paired fidelity delta, drawn around the point
            base = summary["baseline"]["heldout_fidelity"]
            low, high = (base + v for v in against["heldout_fidelity"]["interval"])
            if low == low:
                draw.line([to_px(row["heldout_alignment"], low), to_px(row["heldout_alignment"], high)],
                          fill=colour, width=2)
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=colour)
        draw.text((x + 8, y - 6), objective, fill=colour)
    image.save(path)
    return path
