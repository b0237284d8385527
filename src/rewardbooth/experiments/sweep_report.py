"""The sweep's table, in the paper's format: per objective, DINO / CLIP-I / CLIP-T (each metric's mean over
subjects of the subject's mean over its images), the difference to the first objective with a 95 % bootstrap
interval over subjects, and every subject's row. Written as results.json, results.md and a bar plot."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path


def aggregate(output: Path, subjects: list[str], objectives: list[str], metrics: tuple[str, ...]) -> dict:
    from rewardbooth.evaluation.report import bar_plot
    from rewardbooth.maths.statistics import bootstrap_interval

    per_subject = {s: json.loads((output / "evaluation" / s / "evaluation.json").read_text())["runs"]
                   for s in subjects}
    reference = objectives[0]
    table = {}
    for name in objectives:
        row = {m: statistics.fmean(per_subject[s][name]["summary"][m] for s in subjects) for m in metrics}
        if name != reference:
            for m in metrics:
                deltas = [per_subject[s][name]["summary"][m] - per_subject[s][reference]["summary"][m] for s in subjects]
                row[f"{m}_delta"] = statistics.fmean(deltas)
                low, high = bootstrap_interval(deltas)
                row[f"{m}_delta_95"] = None if math.isnan(low) else [low, high]  # one subject: none (JSON has no NaN)
        table[name] = row
    result = {"subjects": subjects, "objectives": objectives, "metrics": list(metrics), "reference": reference,
              "table": table, "per_subject": {s: {n: runs[n]["summary"] for n in objectives}
                                              for s, runs in per_subject.items()}}
    (output / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (output / "results.md").write_text(markdown(result))
    bar_plot({name: {m: table[name][m] for m in metrics} for name in objectives}, metrics, output / "results.png")
    return result


def markdown(result: dict) -> str:
    metrics, table, reference = result["metrics"], result["table"], result["reference"]
    subjects = result["subjects"]
    lines = [f"{len(subjects)} subjects; each metric is the mean over subjects of the subject's mean over its "
             f"images; Δ against `{reference}`, mean [95 % bootstrap interval over subjects].", "",
             "| objective | " + " | ".join(metrics) + " | " + " | ".join(f"Δ {m}" for m in metrics) + " |",
             "|---|" + "---|" * (2 * len(metrics))]
    for name, row in table.items():
        deltas = [f"{row[f'{m}_delta']:+.4f} {interval(row[f'{m}_delta_95'])}" if f"{m}_delta" in row else "—"
                  for m in metrics]
        lines.append(f"| {name} | " + " | ".join(f"{row[m]:.4f}" for m in metrics) + " | " + " | ".join(deltas) + " |")
    lines += ["", "Per subject:", "", "| subject | objective | " + " | ".join(metrics) + " |",
              "|---|---|" + "---|" * len(metrics)]
    for subject, runs in result["per_subject"].items():
        lines += [f"| {subject} | {name} | " + " | ".join(f"{summary[m]:.4f}" for m in metrics) + " |"
                  for name, summary in runs.items()]
    return "\n".join(lines) + "\n"


def interval(bounds: list[float] | None) -> str:
    """'[low, high]', or why there is none: a bootstrap over a single subject has no spread to resample."""
    return "[n/a: one subject]" if bounds is None else f"[{bounds[0]:+.4f}, {bounds[1]:+.4f}]"
