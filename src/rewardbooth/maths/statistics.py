"""Paired comparisons of two methods over subjects: the statistics behind every claim in a results table.

A claim compares two methods on the same subjects and seeds. Per subject, the delta is the mean over seeds
of (method - control); the reported figure is the mean of those deltas over subjects, with a 95 % percentile
bootstrap interval over subjects (seeds of one subject are not independent samples), and the number of
subjects on which the method is ahead.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import numpy as np


def bootstrap_interval(values: Sequence[float], resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95 % interval of the mean (NaN for fewer than two values).

    Shape: (N,) -> (low, high)
    """
    if len(values) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    data = np.asarray(values, dtype=np.float64)
    means = data[rng.integers(len(data), size=(resamples, len(data)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return (float(low), float(high))


def paired_comparison(score: Callable[[object, object], float | None], subjects: Sequence, seeds: Sequence) -> dict:
    """`score(subject, seed)` is the method's value minus the control's for that run pair, or None where the
    pair was not run (the subject's delta averages the seeds it has; a subject with none is left out).

    Returns {"delta": mean over subjects, "interval": (low, high), "wins": subjects with delta > 0,
    "subjects": how many, "per_subject": [delta per subject]}.
    """
    paired = [[value for seed in seeds if (value := score(subject, seed)) is not None] for subject in subjects]
    per_subject = [statistics.fmean(values) for values in paired if values]
    return {"delta": statistics.fmean(per_subject), "interval": bootstrap_interval(per_subject),
            "wins": sum(delta > 0 for delta in per_subject), "subjects": len(per_subject),
            "per_subject": per_subject}


def format_delta(comparison: dict) -> str:
    """'+0.043 [+0.008, +0.080]' ('n/a' in place of an interval over a single subject)."""
    low, high = comparison["interval"]
    interval = "n/a" if low != low else f"{low:+.3f}, {high:+.3f}"
    return f"{comparison['delta']:+.3f} [{interval}]"


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """The names of the points no other point beats on both coordinates (higher is better on each), ordered
    by the first coordinate: the trade-offs worth choosing between (e.g. alignment, fidelity per objective)."""
    front = [name for name, (x, y) in points.items()
             if not any(ox >= x and oy >= y and (ox, oy) != (x, y) for ox, oy in points.values())]
    return sorted(front, key=lambda name: points[name])
