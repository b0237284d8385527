"""The hacking check: the reward judge against the held-out judge as a run trains.

A reward that is climbed rather than the subject learnt shows as a gap between the judge the reward is made
of and the held-out judge that no reward sees, widening with the steps. Each toy run already saves its
validation samples (samples/step_NNNNNN.png: one row per validation prompt, validation.num_images columns, at
steps 0, steps/2 and the last); both judges score their fidelity here, after the run, so nothing in training
ever reads the held-out judge. The two judges are calibrated differently, so a gap means hacking only against
DreamBooth's, which has no reward to climb.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import yaml
from PIL import Image

from rewardbooth.toyworld import subjects
from rewardbooth.toyworld.judge import Judge
from rewardbooth.toyworld.scoring import score

GAP = "fidelity_gap"  # reward judge's fidelity minus the held-out judge's


def grid_tiles(grid: Image.Image, rows: int, columns: int) -> list[Image.Image]:
    """The images `make_grid` tiled row by row, cut out again."""
    width, height = grid.width // columns, grid.height // rows
    return [grid.crop((c * width, r * height, (c + 1) * width, (r + 1) * height))
            for r in range(rows) for c in range(columns)]


def fidelity_trace(folder: Path, judges: dict[str, Judge]) -> dict[str, dict[str, float]]:
    """{step: {judge: fidelity, GAP: reward judge - held-out}} of a toy run's validation samples; the run's
    photos are folder/subject, its model folder/model (config.yaml gives the validation prompts)."""
    model = folder / "model"
    validation = yaml.safe_load((model / "config.yaml").read_text())["validation"]
    prompts, columns = list(validation["prompts"]), int(validation["num_images"])
    references = [Image.open(path).convert("RGB") for path in sorted((folder / "subject").glob("ref_*.png"))]
    trace = {}
    for grid_path in sorted((model / "samples").glob("step_*.png")):
        images = grid_tiles(Image.open(grid_path).convert("RGB"), len(prompts), columns)
        row_prompts = [prompt for prompt in prompts for _ in range(columns)]
        fidelity = {name: score(judge, images, row_prompts, references, subjects.IDENTIFIER)["fidelity"]
                    for name, judge in judges.items()}
        trace[str(int(grid_path.stem.split("_")[1]))] = {**fidelity, GAP: fidelity["judge"] - fidelity["heldout"]}
    return trace


def gap_table(traces: dict[str, list[dict[str, dict[str, float]]]]) -> dict[str, dict[str, float]]:
    """{objective: {step: mean gap over its runs}} for the runs that kept their samples."""
    table = {}
    for objective, runs in traces.items():
        if not runs:
            continue
        steps = sorted({step for run in runs for step in run}, key=int)
        table[objective] = {step: statistics.fmean(run[step][GAP] for run in runs if step in run) for step in steps}
    return table


def gap_lines(table: dict[str, dict[str, float]]) -> list[str]:
    """The markdown table of `gap_table`, with each objective's widening (its last step - its first) beside
    DreamBooth's."""
    if not table:
        return []
    steps = sorted({step for row in table.values() for step in row}, key=int)
    lines = ["Hacking check: reward judge minus held-out judge fidelity on the validation samples, by step (a gap "
             "that widens more than `baseline`'s is a reward climbed, not the subject learnt):", "",
             "| objective | " + " | ".join(f"step {s}" for s in steps) + " | widening |",
             "|---|" + "---|" * (len(steps) + 1)]
    for objective, row in table.items():
        cells = [f"{row[s]:+.3f}" if s in row else "" for s in steps]
        own = sorted(row, key=int)  # a longer run validates at more steps: its own first and last
        widening = row[own[-1]] - row[own[0]]
        lines.append(f"| {objective} | " + " | ".join(cells) + f" | {widening:+.3f} |")
    return lines
