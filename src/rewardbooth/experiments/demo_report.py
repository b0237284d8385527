"""The demo's report: the two methods compared prompt by prompt, at a glance.

`report.html` (self-contained, relative links) shows the reference photos once, a score plot with the floor
(the base model without the identifier) and the ceiling (new views of the subject through the VAE) drawn, the
per-prompt deltas as a dot strip, one sentence on what was measured, and then one row per prompt: its text,
whether it was trained on, each method's images side by side with that row's scores, the rows where the
methods differ most highlighted. Images are the generated 32 px files, shown enlarged with nearest-neighbour
sampling (CSS `image-rendering: pixelated`), so nothing is resampled on disk.
"""

from __future__ import annotations

import html
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from rewardbooth.evaluation.plots import PALETTE

METRICS = ("fidelity", "alignment")
COLOURS = {"baseline": PALETTE[0], "dpg-look-forward": PALETTE[3], "base-model": PALETTE[7]}
BENCHMARK_TABLE = Path(__file__).resolve().parents[3] / "benchmarks" / "toyworld" / "results.md"  # in a checkout
HIGHLIGHTED = 5  # rows where the methods differ most


@dataclass
class MethodImages:
    """One method's generated images, grouped by prompt, with the held-out judge's score of each image."""

    label: str
    files: dict[str, list[str]]  # prompt -> image paths relative to the report
    scores: dict[str, dict[str, list[float]]]  # prompt -> metric -> per image

    def mean(self, prompt: str, metric: str) -> float:
        return statistics.fmean(self.scores[prompt][metric])


def load_method(folder: Path, report_dir: Path, label: str, judge, references: list[Image.Image],
                identifier: str) -> MethodImages:
    """Read folder/generated (generation.json and its images) and score each image with `judge`."""
    from rewardbooth.toyworld.scoring import score_each

    generated = folder / "generated"
    record = json.loads((generated / "generation.json").read_text())
    images = [Image.open(generated / item["file"]) for item in record["images"]]
    prompts = [item["prompt"] for item in record["images"]]
    scores = score_each(judge, images, prompts, references, identifier)
    files: dict[str, list[str]] = {}
    per_prompt: dict[str, dict[str, list[float]]] = {}
    for index, (item, prompt) in enumerate(zip(record["images"], prompts)):
        files.setdefault(prompt, []).append(str((generated / item["file"]).relative_to(report_dir)))
        for metric in METRICS:
            per_prompt.setdefault(prompt, {m: [] for m in METRICS})[metric].append(scores[metric][index])
    return MethodImages(label, files, per_prompt)


def differences(methods: list[MethodImages], prompts: list[str]) -> dict[str, dict[str, float]]:
    """Per prompt: second method minus first, per metric."""
    first, second = methods
    return {p: {m: second.mean(p, m) - first.mean(p, m) for m in METRICS} for p in prompts}


def score_plot(means: dict[str, dict[str, float]], floor: dict[str, float], ceiling: float,
               deltas: dict[str, dict[str, float]], path: Path, labels: dict[str, str] | None = None) -> Path:
    """Per metric: each method's mean as a dot on a 0-1 scale with the floor and ceiling marked, and under it
    the per-prompt deltas (second method minus first) as a dot strip around zero."""
    width, panel_height, left = 900, 170, 190
    image = Image.new("RGB", (width, 2 * panel_height + 48), "white")
    draw = ImageDraw.Draw(image)
    draw.font = ImageFont.load_default(size=13)  # the bitmap default is unreadably small at 100 % zoom
    scale_right = width - 50
    methods = list(means)
    legend_x = left
    for method in methods:  # the legend: which colour is which method
        colour, label = COLOURS.get(method, (0, 0, 0)), (labels or {}).get(method, method)
        draw.ellipse([legend_x, 4, legend_x + 10, 14], fill=colour)
        draw.text((legend_x + 14, 2), label, fill=colour)
        legend_x += 30 + draw.textlength(label)
    for row, metric in enumerate(METRICS):
        top = 28 + row * panel_height
        values = [means[m][metric] for m in methods] + [floor[metric]] + ([ceiling] if metric == "fidelity" else [])
        low, high = max(0.0, min(values) - 0.1), min(1.0, max(values) + 0.1)

        def x_of(value: float, low=low, high=high) -> float:
            return left + (value - low) / (high - low) * (scale_right - left)

        axis_y = top + 50
        draw.text((10, axis_y - 8), metric, fill="black")
        draw.line([(left, axis_y), (scale_right, axis_y)], fill="gray")
        for tick in (low, (low + high) / 2, high):
            draw.line([(x_of(tick), axis_y - 3), (x_of(tick), axis_y + 3)], fill="gray")
            draw.text((x_of(tick) - 14, axis_y + 6), f"{tick:.2f}", fill="gray")
        marks = [("floor: base model", floor[metric])]
        if metric == "fidelity":
            marks.append(("ceiling: VAE round trip", ceiling))
        for index, (name, value) in enumerate(marks):
            for y in range(top + 12, axis_y + 4, 6):
                draw.line([(x_of(value), y), (x_of(value), y + 3)], fill=(120, 120, 120))
            label = f"{name} {value:.3f}"
            # Right of the line, or left of it where the label would run off the plot.
            label_x = x_of(value) + 4 if x_of(value) + 4 + draw.textlength(label) < width else \
                x_of(value) - 4 - draw.textlength(label)
            draw.text((label_x, top + 2 + 15 * index), label, fill=(90, 90, 90))
        for index, method in enumerate(methods):
            value, colour = means[method][metric], COLOURS.get(method, (0, 0, 0))
            x = x_of(value)
            draw.ellipse([x - 6, axis_y - 6, x + 6, axis_y + 6], fill=colour)
            draw.text((x - 20, axis_y - 24 - 14 * index), f"{value:.3f}", fill=colour)
        # The per-prompt deltas, around zero, on their own scale.
        strip_y, spread = axis_y + 55, max(abs(d[metric]) for d in deltas.values()) or 1.0
        centre = (left + scale_right) / 2
        draw.text((10, strip_y - 7), "per prompt: DPG -", fill="black")
        draw.text((10, strip_y + 8), "DreamBooth", fill="black")
        draw.line([(left, strip_y), (scale_right, strip_y)], fill=(220, 220, 220))
        draw.line([(centre, strip_y - 10), (centre, strip_y + 10)], fill="gray")
        for delta in (d[metric] for d in deltas.values()):
            x = centre + delta / spread * (scale_right - left) / 2
            colour = COLOURS["dpg-look-forward"] if delta > 0 else COLOURS["baseline"]
            draw.ellipse([x - 3, strip_y - 3, x + 3, strip_y + 3], outline=colour)
        draw.text((left - 4, strip_y + 8), f"{-spread:+.2f}", fill="gray")
        draw.text((scale_right - 34, strip_y + 8), f"{spread:+.2f}", fill="gray")
    image.save(path)
    return path


def benchmark_link() -> str:
    """A link to the benchmark table when this is a checkout of the repository, else where to find it."""
    if BENCHMARK_TABLE.is_file():
        return f"<a href='{BENCHMARK_TABLE.as_uri()}'>The toy benchmark's table</a>"
    return "The toy benchmark's table (benchmarks/toyworld/results.md in the RewardBooth repository)"


def write_demo_report(folder: Path, title: str, summary: str, references: list[str], trained_prompts: list[str],
                      methods: list[MethodImages], prompts: list[str], table: dict[str, dict[str, float]],
                      plot: str, measured: str) -> Path:
    """report.html: references, the score plot, a table of means, then one row per prompt (methods side by
    side, the HIGHLIGHTED rows where they differ most marked)."""
    deltas = differences(methods, prompts)
    distance = {p: abs(d["fidelity"]) + abs(d["alignment"]) for p, d in deltas.items()}
    marked = set(sorted(prompts, key=distance.get, reverse=True)[:HIGHLIGHTED])

    def images(paths: list[str]) -> str:
        return "".join(f"<img src='{html.escape(p)}' width=96 height=96 alt=''>" for p in paths)

    def scores(method: MethodImages, prompt: str) -> str:
        return "<div class=s>" + " · ".join(f"{m[:5]}. {method.mean(prompt, m):.2f}" for m in METRICS) + "</div>"

    rows = []
    for prompt in prompts:
        tag = "<span class=tag>trained</span>" if prompt in trained_prompts else "<span class='tag new'>new</span>"
        delta = " ".join(f"<div class='d {'up' if deltas[prompt][m] > 0 else 'down'}'>Δ {m[:5]}. "
                         f"{deltas[prompt][m]:+.2f}</div>" for m in METRICS)
        rows.append(f"<tr class='{'marked' if prompt in marked else ''}'><td class=p>{html.escape(prompt)} {tag}</td>"
                    + "".join(f"<td>{images(m.files[prompt])}{scores(m, prompt)}</td>" for m in methods)
                    + f"<td>{delta}</td></tr>")
    columns = list(next(iter(table.values())))  # in the caller's order: the headline metrics first
    means = "".join(f"<tr><th>{html.escape(name)}</th>" + "".join(
        f"<td>{row[c]:.3f}</td>" if isinstance(row.get(c), float) else
        f"<td>{row.get(c, '')}</td>" for c in columns) + "</tr>" for name, row in table.items())
    page = f"""<!doctype html><html lang=en><meta charset='utf-8'><title>{html.escape(title)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}}
img{{image-rendering:pixelated;margin:1px;border:1px solid #ddd}}
table{{border-collapse:collapse}} td,th{{padding:4px 8px;border-bottom:1px solid #e5e5e5;vertical-align:top;text-align:left}}
td.p{{max-width:280px}} .tag{{font-size:11px;background:#ddd;border-radius:3px;padding:1px 4px}}
.tag.new{{background:#e3f0e3}} .s{{font-size:12px;color:#555}} .d{{font-size:12px;white-space:nowrap}}
.up{{color:#b22}} .down{{color:#1f77b4}} tr.marked{{background:#fff6d5}} .note{{color:#555;max-width:900px}}
</style>
<h1>{html.escape(title)}</h1>
<p class=note>{html.escape(summary)}</p>
<h2>The subject</h2><div>{images(references)}</div>
<p class=note>Trained on: {", ".join(f"<q>{html.escape(p)}</q>" for p in trained_prompts)}. Every prompt below is new
to the models unless marked <span class=tag>trained</span>.</p>
<h2>Scores</h2><img src='{html.escape(plot)}' style='image-rendering:auto;border:0' alt='score plot'>
<p class=note>{measured} {benchmark_link()} (held-out subjects from 100, with controls) is the evidence;
one subject and one seed is an illustration.</p>
<table><tr><th></th>{"".join(f"<th>{html.escape(c)}</th>" for c in columns)}</tr>{means}</table>
<h2>Prompt by prompt</h2>
<p class=note>Highlighted: the {HIGHLIGHTED} prompts where the methods differ most (|Δ fidelity| + |Δ alignment|).
Scores are the held-out judge's, per prompt, averaged over its images.</p>
<table><tr><th>prompt</th>{"".join(f"<th>{html.escape(m.label)}</th>" for m in methods)}<th>DPG − DreamBooth</th></tr>
{"".join(rows)}</table>
</html>
"""
    path = folder / "report.html"
    path.write_text(page)
    return path
