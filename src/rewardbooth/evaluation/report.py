"""What `rewardbooth evaluate` writes: the full JSON, CSVs per image / prompt / run, a Markdown table and an
HTML page with the reference photos, each run's sample grid, a bar plot of the means and a box plot per
metric (the spread over images, which the means hide)."""

from __future__ import annotations

import csv
import html
import json
import shutil
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from rewardbooth.data.images import within
from rewardbooth.evaluation.plots import PALETTE, make_grid

COLOURS = PALETTE[:6]


def write_reports(report: dict, metrics: tuple[str, ...], output: Path, references: list[Image.Image]) -> None:
    """Every file of the report; `references` are the subject's photos as the metrics read them (the one
    loader: unreadable files skipped, EXIF orientation applied). evaluation.json, which marks a finished
    report, is written last."""
    output.mkdir(parents=True, exist_ok=True)
    runs = report["runs"]
    write_csv(output / "images.csv", [{"run": name, **row} for name, run in runs.items() for row in run["images"]])
    write_csv(output / "prompts.csv", [{"run": name, **row} for name, run in runs.items() for row in run["prompts"]])
    write_csv(output / "summary.csv", [{"run": name, **run["summary"]} for name, run in runs.items()])
    (output / "report.md").write_text(markdown(report, metrics))
    write_html(report, metrics, output, references)
    (output / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")


def markdown(report: dict, metrics: tuple[str, ...]) -> str:
    identifiers = sorted({word for run in report["runs"].values() for word in run["identifiers"]})
    lines = [f"Subject `{report['subject']}` ({report['reference_images']} reference photos), identifier "
             + ", ".join(f"`{word}`" for word in identifiers), "", "| run | images | " + " | ".join(metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for name, run in report["runs"].items():
        lines.append(f"| {name} | {len(run['images'])} | "
                     + " | ".join(f"{run['summary'][m]:.4f}" for m in metrics) + " |")
    lines += ["", "Protocol:"] + [f"- {m}: " + "; ".join(f"{k} {v}" for k, v in entry.items())
                                  for m, entry in report["protocol"].items()]
    return "\n".join(lines) + "\n"


def bar_plot(results: dict[str, dict[str, float]], metrics: tuple[str, ...], path: Path) -> Path:
    """Grouped bars, one group per metric, one bar per run, on an axis that holds 0 and every value: a
    negative mean (a cosine can be) is a bar below the zero line, not a missing one."""
    runs = list(results)
    group_width, height, top = 40 + 50 * len(runs), 220, 30
    values = [results[run][metric] for run in runs for metric in metrics]
    low, high = min(0.0, *values), max(0.0, *values)
    span = (high - low) or 1.0

    def y(value: float) -> float:
        return top + (high - value) / span * height

    image = Image.new("RGB", (70 + group_width * len(metrics), height + top + 70), "white")
    draw = ImageDraw.Draw(image)
    draw.line([(55, top), (55, top + height)], fill="black")
    draw.line([(55, y(0.0)), (image.width - 10, y(0.0))], fill="black")
    for tick in sorted({low, 0.0, high}):
        draw.text((4, y(tick) - 6), f"{tick:+.3f}", fill="black")
    for g, metric in enumerate(metrics):
        x0 = 75 + g * group_width
        draw.text((x0, top + height + 8), metric, fill="black")
        for m, run in enumerate(runs):
            value, left = results[run][metric], x0 + m * 50
            draw.rectangle([left, min(y(value), y(0.0)), left + 40, max(y(value), y(0.0))],
                           fill=COLOURS[m % len(COLOURS)])
            draw.text((left, y(value) - 14 if value >= 0 else y(value) + 2), f"{value:.3f}", fill="black")
    for m, run in enumerate(runs):
        x = 60 + m * 130
        draw.rectangle([x, top + height + 34, x + 12, top + height + 46], fill=COLOURS[m % len(COLOURS)])
        draw.text((x + 18, top + height + 34), run[:18], fill="black")
    image.save(path)
    return path


def box_plot(values: dict[str, list[float]], title: str, path: Path) -> Path:
    """One box (quartiles, median, whiskers at min/max) per run, on the data's own scale."""
    width, height, top, left = 120 * len(values) + 80, 260, 30, 60
    image = Image.new("RGB", (width, height + 70), "white")
    draw = ImageDraw.Draw(image)
    everything = [v for vs in values.values() for v in vs]
    low, high = min(everything), max(everything)
    span = (high - low) or 1.0

    def y(value: float) -> float:
        return top + (high - value) / span * height

    draw.text((left, 8), title, fill="black")
    draw.line([(left - 5, top), (left - 5, top + height)], fill="black")
    for tick in (low, (low + high) / 2, high):
        draw.text((4, y(tick) - 6), f"{tick:.3f}", fill="black")
    for index, (name, vs) in enumerate(values.items()):
        ordered = sorted(vs)
        q1, median, q3 = (ordered[int(q * (len(ordered) - 1))] for q in (0.25, 0.5, 0.75))
        x0 = left + 20 + index * 120
        colour = COLOURS[index % len(COLOURS)]
        draw.line([(x0 + 30, y(ordered[0])), (x0 + 30, y(ordered[-1]))], fill=colour, width=2)
        draw.rectangle([x0, y(q3), x0 + 60, y(q1)], outline=colour, fill="white", width=2)
        draw.line([(x0, y(median)), (x0 + 60, y(median))], fill=colour, width=3)
        draw.text((x0, top + height + 10), name[:18], fill="black")
    image.save(path)
    return path


def write_html(report: dict, metrics: tuple[str, ...], output: Path, references: list[Image.Image]) -> Path:
    runs = report["runs"]
    figures = {}
    bar_plot({name: run["summary"] for name, run in runs.items()}, metrics, output / "means.png")
    figures["mean of every metric per run"] = "means.png"
    for metric in metrics:
        box_plot({name: [row[metric] for row in run["images"]] for name, run in runs.items()}, metric,
                 output / f"box_{metric}.png")
        figures[f"{metric} over images"] = f"box_{metric}.png"
    if references:
        # Whole photos, upright, letterboxed into equal cells (the grid tiles equal sizes).
        thumbs = [ImageOps.pad(image, (128, 128), color="white") for image in references]
        make_grid(thumbs, columns=len(thumbs)).save(output / "references.png")
        figures["reference photos"] = "references.png"
    for name, run in runs.items():
        grid = within(Path(run["folder"]), "grid.png")  # never a link leading out of the run's folder
        if grid is not None and grid.is_file():
            shutil.copyfile(grid, output / f"grid_{name}.png")
            figures[f"{name}: generated (rows = prompts)"] = f"grid_{name}.png"
    header = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    rows = "".join(f"<tr><th>{html.escape(name)}</th><td>{len(run['images'])}</td>"
                   + "".join(f"<td>{run['summary'][m]:.4f}</td>" for m in metrics) + "</tr>" for name, run in runs.items())
    images = "".join(f"<h2>{html.escape(caption)}</h2><img src='{html.escape(src)}' style='max-width:100%;"
                     f"image-rendering:pixelated'>" for caption, src in figures.items())
    protocol = "".join(f"<li><b>{html.escape(m)}</b>: " + html.escape("; ".join(f"{k} {v}" for k, v in e.items()))
                       + "</li>" for m, e in report["protocol"].items())
    page = ("<!doctype html><meta charset='utf-8'><title>RewardBooth evaluation</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;border-bottom:1px solid #ddd}</style>"
            f"<h1>Evaluation: {html.escape(report['subject'])}</h1><table><tr><th>run</th><th>images</th>{header}</tr>"
            f"{rows}</table><h2>Protocol</h2><ul>{protocol}</ul>{images}")
    path = output / "report.html"
    path.write_text(page)
    return path


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
