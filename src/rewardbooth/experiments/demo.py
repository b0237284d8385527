"""`rewardbooth demo`: the method measured on a laptop, with nothing downloaded.

It personalizes the shipped toy-world base model to one toy subject twice — plain DreamBooth (`baseline`)
and DPG with the look-forward reward (`default` preset) — with the same steps and seed, generates the
subject's 25-prompt set with each (and with the base model, prompts without the identifier: the floor),
scores every image with the held-out toy judge (subject fidelity, the DINO analogue; text alignment, the
CLIP-T analogue; never a reward), logs one line per phase, and writes `report.html`: the two methods prompt
by prompt (rewardbooth.experiments.demo_report). It returns the scores; `format_table` makes them the table
the command prints.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from PIL import Image

from rewardbooth.core.errors import UserError
from rewardbooth.core.progress import write_line

DEMO_OBJECTIVES = ("baseline", "dpg-look-forward")
LABELS = {"baseline": "DreamBooth", "dpg-look-forward": "DPG look-forward", "base-model": "base model (floor)"}
MARKER = ".rewardbooth-demo"  # lets `overwrite` replace an interrupted demo, and nothing else


def run_demo(output: Path, subject_index: int = 0, train_steps: int = 300, num_images: int = 2,
             num_prompts: int = 25, overwrite: bool = False, seed: int = 0,
             model: str = "toy") -> dict[str, dict[str, float]]:
    """Scores per method (and the base model's floor); the report lands in output/report.html. `model` is the
    shipped base model personalized: `toy` (DDPM UNet) or `toy-flow` (rectified-flow SD3 transformer)."""
    from rewardbooth.experiments.toyworld.experiment import (
        BASE_MODEL,
        Setting,
        load_judges,
        personalize_and_score,
    )
    from rewardbooth.toyworld import subjects

    setting = Setting(steps=train_steps, images_per_prompt=num_images, num_prompts=num_prompts, model=model)
    _prepare_folder(output, overwrite)
    started = time.perf_counter()
    judges = load_judges()
    subject = subjects.make_subject(subject_index)
    results = {}
    phases = [*DEMO_OBJECTIVES, BASE_MODEL]
    for index, objective in enumerate(phases, 1):
        action = "drawing the prompts without the identifier" if objective == BASE_MODEL else \
            f"training {train_steps} steps, then drawing {num_prompts} prompts x {num_images}"
        write_line(f"[{index}/{len(phases)}] {LABELS[objective]}: {action}")
        results[objective] = personalize_and_score(subject, objective, seed, output / objective,
                                                   output / "class_images", judges, setting)
    write_line(f"[done] {time.perf_counter() - started:.0f} s; writing the report")
    _write_outputs(output, subject, judges["heldout"], results, setting)
    return results


def _prepare_folder(output: Path, overwrite: bool) -> None:
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise UserError(f"demo folder {str(output)!r} is not empty; pass overwrite=True or choose another folder")
        if not (output / MARKER).is_file():
            raise UserError(f"refusing to overwrite {str(output)!r}: it is not a RewardBooth demo folder")
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / MARKER).write_text("written by `rewardbooth demo`; its overwrite option may replace this folder\n")


def _write_outputs(output: Path, subject, judge, results: dict, setting) -> Path:
    from rewardbooth.experiments.demo_report import differences, load_method, score_plot, write_demo_report
    from rewardbooth.experiments.toyworld.experiment import BASE_MODEL, fidelity_ceiling
    from rewardbooth.toyworld import subjects

    reference_paths = sorted((output / DEMO_OBJECTIVES[0] / "subject").glob("ref_*.png"))
    references = [Image.open(p).convert("RGB") for p in reference_paths]
    methods = [load_method(output / o, output, LABELS[o], judge, references, subjects.IDENTIFIER)
               for o in DEMO_OBJECTIVES]
    prompts = subjects.prompt_set(subject)[:setting.num_prompts]
    ceiling = fidelity_ceiling(subject, judge)
    means = {o: {m: results[o][f"heldout_{m}"] for m in ("fidelity", "alignment")} for o in DEMO_OBJECTIVES}
    floor = {m: results[BASE_MODEL][f"heldout_{m}"] for m in ("fidelity", "alignment")}
    score_plot(means, floor, ceiling, differences(methods, prompts), output / "scores.png", LABELS)
    (output / "results.json").write_text(json.dumps({
        "subject": subject.index, "model": setting.model, "steps": setting.steps,
        "images_per_prompt": setting.images_per_prompt,
        "judge": "heldout", "fidelity_ceiling": ceiling, "results": results}, indent=2))
    table = {LABELS[o]: {"fidelity": r["heldout_fidelity"], "alignment": r["heldout_alignment"],
                         "fidelity (reward judge)": r["fidelity"], "alignment (reward judge)": r["alignment"],
                         "train s": f"{r['train_s']:.0f}"} for o, r in results.items()}
    gain = means["dpg-look-forward"]["fidelity"] - means["baseline"]["fidelity"]
    return write_demo_report(
        output, f"RewardBooth demo: toy subject {subject.index}, a patterned {subject.object_class}",
        f"DreamBooth and DPG with the look-forward reward, {setting.steps} steps each from the same base model "
        f"(`{setting.model}`) and seed. DPG's fidelity is {gain:+.3f} against DreamBooth's on this subject.",
        [str(p.relative_to(output)) for p in reference_paths],
        [subjects.instance_prompt(subject), subjects.class_prompt(subject) + " (class images, prior loss)"],
        methods, prompts, table, "scores.png",
        f"Measured: {setting.num_prompts} prompts x {setting.images_per_prompt} images per method, scored by the "
        f"held-out toy judge (fidelity = identity cosine to the reference photos, the DINO analogue; alignment = "
        f"agreement with the prompt's attributes, identifier removed, the CLIP-T analogue). Floor: the base model "
        f"drawing each prompt without the identifier; ceiling: new views of the subject through the VAE.")


def format_table(results: dict[str, dict[str, float]]) -> str:
    lines = ["held-out judge (the reward judge in brackets)",
             f"{'method':<20}{'fidelity':>16}{'alignment':>17}{'train s':>9}{'generate s':>12}"]
    for method, row in results.items():
        lines.append(f"{LABELS.get(method, method):<20}{row['heldout_fidelity']:>8.3f} ({row['fidelity']:.3f})"
                     f"{row['heldout_alignment']:>9.3f} ({row['alignment']:.3f}){row['train_s']:>9.1f}"
                     f"{row['generate_s']:>12.1f}")
    return "\n".join(lines)
