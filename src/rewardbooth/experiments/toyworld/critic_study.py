"""Does the critic carry the reward? Every critic under every preset's objective, on a tuning subject.

    python -m rewardbooth.experiments.toyworld.critic_study --output benchmarks/toyworld/critics [--jobs 2]

Trains the toy model on tuning subject 1 (never a reported one) for the benchmark's 600 steps with each
(objective, critic) pair and 3 seeds, and reads the critic diagnostics every DPG run logs
(rewardbooth.training.critic_diagnostics) over the second half of the run: cos(dQ/da, dr/da), |dQ/da| / |dr/da| and
the on-policy R^2 of Q. The targets for the look-forward presets: cosine >= 0.9 and ratio in [0.5, 2].
Writes critics.json (every run) and critics.md (mean and range over seeds per pair); resumable.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from rewardbooth.core.progress import progress

STUDY_SUBJECT = 1
CRITICS = {  # label: overrides
    "released": ["critic.name=released"],
    "pooled": ["critic.name=pooled"],
    "conv": ["critic.name=conv"],
    "conv, zero start": ["critic.name=conv", "critic.residual_prior=false"],
    "feature": [],  # the objective's own (critic.name=feature on the toy encoder)
}
STUDIED = {  # objective of rewardbooth.experiments.toyworld.experiment: the critics run under it
    # conv with its prior is pooled's twin (both start as the reward, both stay at cos 1.000): not repeated.
    "dpg-look-forward": ("pooled", "released", "conv, zero start"),
    "dpg-look-forward-paper": ("released", "pooled", "conv, zero start"),
    "dpg-toy-identity-x0": ("pooled", "conv"),
    "dpg-feature-blackbox": ("feature",),  # the black box's twin (toy_identity) gives the gradient compared
}
# The feature critic's probe guard logs two more (docs/critic.md); other critics show n/a.
DIAGNOSTICS = ("critic/grad_cosine", "critic/grad_ratio", "critic/r2", "critic/probe_agreement", "critic/trust")


def second_half_means(metrics_file: Path, steps: int) -> dict[str, float]:
    """Mean of each diagnostic over the logged steps after steps / 2 (non-finite entries, null in the log,
    skipped)."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    late = [row for row in rows if row["step"] > steps // 2]
    means = {}
    for key in DIAGNOSTICS:
        values = [row[key] for row in late if row.get(key) is not None and row[key] == row[key]]
        means[key] = statistics.fmean(values) if values else float("nan")
    return means


def run_one(task: tuple) -> dict:
    """One (objective, critic, seed) training run; returns its diagnostics (stored as it finishes)."""
    from rewardbooth.core.config import load_config
    from rewardbooth.core.progress import quiet_libraries
    from rewardbooth.experiments.toyworld.experiment import Setting, training_overrides, write_references
    from rewardbooth.toyworld import subjects
    from rewardbooth.training.loop import train

    output, objective, critic, seed = task
    result_file = output / "runs" / f"{objective}-{critic.replace(', ', '-').replace(' ', '-')}-seed{seed}.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    import shutil

    import torch

    torch.set_num_threads(1)
    quiet_libraries()
    folder = output / "runs" / result_file.stem
    shutil.rmtree(folder, ignore_errors=True)
    subject = subjects.make_subject(STUDY_SUBJECT)
    write_references(subject, folder)
    setting = Setting(overrides=(*CRITICS[critic], "validation.every=0"))
    train(load_config("default", training_overrides(subject, objective, seed, folder,
                                                    output / "class_images", setting)))
    result = {"objective": objective, "critic": critic, "seed": seed,
              **second_half_means(folder / "model" / "metrics.jsonl", setting.steps)}
    shutil.rmtree(folder)  # weights and samples are not part of the study
    result_file.write_text(json.dumps(result))
    return result


def summarize(results: list[dict]) -> str:
    lines = ["Critic diagnostics on toy subject 1, second half of 600-step runs, mean over seeds [min, max]:",
             "", "| objective | critic | cos(dQ/da, dr/da) | ‖dQ/da‖ / ‖dr/da‖ | on-policy R² of Q | probe agreement | trust |",
             "|---|---|---|---|---|---|---|"]
    for objective, critics in STUDIED.items():
        for critic in critics:
            rows = [r for r in results if r["objective"] == objective and r["critic"] == critic]
            cells = []
            for key in DIAGNOSTICS:
                logged = [r[key] for r in rows if key in r]  # runs from before a key existed lack it
                values = [value for value in logged if math.isfinite(value)]
                cell = (f"{_number(statistics.fmean(values))} [{_number(min(values))}, {_number(max(values))}]"
                        if values else "n/a")
                if 0 < len(values) < len(logged):  # a diverged critic: its loss went non-finite
                    cell += f" ({len(logged) - len(values)} of {len(logged)} seeds non-finite)"
                cells.append(cell)
            lines.append(f"| {objective} | {critic} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 1000 else f"{value:.2g}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Critic diagnostics per objective and critic (toy world).")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, one thread each")
    args = parser.parse_args(argv)
    (args.output / "runs").mkdir(parents=True, exist_ok=True)
    # critics.json (committed, unlike the run folders) holds runs done before: they are not run again.
    stored = args.output / "critics.json"
    done = {(r["objective"], r["critic"], r["seed"]): r for r in json.loads(stored.read_text())} \
        if stored.is_file() else {}
    tasks = [(args.output, objective, critic, seed) for objective, critics in STUDIED.items()
             for critic in critics for seed in args.seeds if (objective, critic, seed) not in done]
    # Class images first, once, so that parallel runs never write the same cache.
    if tasks:
        run_one(tasks[0])
    if args.jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            new = list(progress(pool.imap(run_one, tasks), total=len(tasks), desc="critic study"))
    else:
        new = [run_one(task) for task in progress(tasks, desc="critic study")]
    results = [*done.values(), *new]
    (args.output / "critics.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.output / "critics.md").write_text(summarize(results))
    print(summarize(results))


if __name__ == "__main__":
    main()
