"""`rewardbooth demo`: the method measured on a laptop, with nothing downloaded.

It personalizes the shipped toy-world base model to one toy subject twice — plain DreamBooth (`baseline`)
and DPG with the look-forward reward (`default` preset) — with the same steps and seed, generates the
subject's 25-prompt set with each, scores both with the toy judge (subject fidelity, the DINO analogue;
text alignment, the CLIP-T analogue), prints a table and writes `report.html` with the reference images,
sample grids and a bar plot.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from PIL import Image

from rewardbooth.errors import UserError
from rewardbooth.monitoring import make_grid

DEMO_OBJECTIVES = ("baseline", "dpg-look-forward")
MARKER = ".rewardbooth-demo"  # lets --overwrite replace an interrupted demo, and nothing else


def run_demo(output: Path, subject_index: int = 0, steps: int = 300, images_per_prompt: int = 2,
             num_prompts: int = 25, overwrite: bool = False, seed: int = 0) -> dict[str, dict[str, float]]:
    from rewardbooth.toyworld import subjects
    from rewardbooth.toyworld.experiment import Setting, load_judges, personalize_and_score

    _prepare_folder(output, overwrite)
    judges = load_judges()
    subject = subjects.make_subject(subject_index)
    setting = Setting(steps=steps, images_per_prompt=images_per_prompt, num_prompts=num_prompts)
    results = {objective: personalize_and_score(subject, objective, seed, output / objective,
                                                output / "class_images", judges, setting)
               for objective in DEMO_OBJECTIVES}
    references = [Image.open(p).convert("RGB") for p in sorted((output / DEMO_OBJECTIVES[0] / "subject").glob("*.png"))]
    _write_outputs(output, subject, references, results, setting)
    print(format_table(results))
    print(f"\nreport: {output / 'report.html'}")
    return results


def _prepare_folder(output: Path, overwrite: bool) -> None:
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise UserError(f"demo folder {str(output)!r} is not empty; pass --overwrite or choose another --output")
        if not (output / MARKER).is_file():
            raise UserError(f"refusing to overwrite {str(output)!r}: it is not a RewardBooth demo folder")
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / MARKER).write_text("written by `rewardbooth demo`; --overwrite may replace this folder\n")


def _write_outputs(output: Path, subject, references: list[Image.Image], results: dict, setting) -> None:
    from rewardbooth.toyworld.scoring import bar_plot, write_report

    steps, images_per_prompt, num_prompts = setting.steps, setting.images_per_prompt, setting.num_prompts

    def upscale(image: Image.Image) -> Image.Image:
        return image.resize((image.width * 4, image.height * 4), Image.NEAREST)

    make_grid([upscale(image) for image in references], columns=len(references)).save(output / "references.png")
    figures = {"reference photos of the subject": "references.png"}
    bar_plot(results, ("fidelity", "alignment"), output / "scores.png")
    figures["judge scores (higher is better)"] = "scores.png"
    for method in results:
        grid = Image.open(output / method / "generated" / "grid.png")
        upscale(grid).save(output / f"{method}-generated.png")
        figures[f"{method}: {num_prompts} prompts x {images_per_prompt} images (rows = prompts)"] = \
            f"{method}-generated.png"
    (output / "results.json").write_text(json.dumps({"subject": subject.index, "steps": steps,
                                                     "images_per_prompt": images_per_prompt, "results": results},
                                                    indent=2))
    write_report(output, f"RewardBooth demo: toy subject {subject.index} ({subject.object_class})", results,
                 figures, [f"{steps} training steps per method, same seed; {num_prompts} prompts x "
                           f"{images_per_prompt} images; fidelity = judge identity cosine to the references, "
                           f"alignment = judge caption agreement with the prompt (identifier removed)."])


def format_table(results: dict[str, dict[str, float]]) -> str:
    lines = [f"{'method':<20}{'fidelity':>10}{'alignment':>11}{'train s':>9}{'generate s':>12}"]
    for method, row in results.items():
        lines.append(f"{method:<20}{row['fidelity']:>10.3f}{row['alignment']:>11.3f}{row['train_s']:>9.1f}"
                     f"{row['generate_s']:>12.1f}")
    return "\n".join(lines)
