"""Scoring generated images with the judge, and showing the scores: a bar plot and an HTML report."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from rewardbooth.toyworld.judge import Judge, caption_agreement, identity_similarity, to_tensor
from rewardbooth.toyworld.world import RESOLUTION


def images_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images of any size -> (N, 3, 32, 32) float32 in [0, 1], the judge's input (the same strided
    (N, H, W, 3) layout as the judge's training batches: a contiguous copy changes its outputs in the 7th
    decimal)."""
    return to_tensor(np.stack([np.asarray(image.convert("RGB").resize((RESOLUTION, RESOLUTION), Image.BILINEAR))
                               for image in images]))


@torch.no_grad()
def score_each(judge: Judge, images: list[Image.Image], prompts: list[str], references: list[Image.Image],
               identifier: str) -> dict[str, list[float]]:
    """Per image: subject fidelity (identity cosine to the references, the DINO analogue) and text alignment
    (caption agreement with the prompt, identifier ignored: the CLIP-T analogue)."""
    from rewardbooth.data.images import remove_identifier

    pixels = images_to_tensor(images)
    fidelity = identity_similarity(judge, pixels, images_to_tensor(references))
    alignment = caption_agreement(judge, pixels, [remove_identifier(p, identifier) for p in prompts])
    return {"fidelity": fidelity.tolist(), "alignment": alignment.tolist()}


def score(judge: Judge, images: list[Image.Image], prompts: list[str], references: list[Image.Image],
          identifier: str) -> dict[str, float]:
    """`score_each`, averaged over images."""
    return {name: sum(values) / len(values)
            for name, values in score_each(judge, images, prompts, references, identifier).items()}


def bar_plot(results: dict[str, dict[str, float]], metrics: tuple[str, ...], path: Path) -> Path:
    """Grouped bars, one group per metric, one bar per method; values in [0, 1] are drawn to scale."""
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
    methods = list(results)
    group_width, bar_width, height, top = 40 + 50 * len(methods), 40, 220, 30
    image = Image.new("RGB", (60 + group_width * len(metrics), height + top + 60), "white")
    draw = ImageDraw.Draw(image)
    base = top + height
    draw.line([(50, top), (50, base), (image.width - 10, base)], fill="black")
    for tick in (0.0, 0.5, 1.0):
        y = base - tick * height
        draw.text((20, y - 6), f"{tick:.1f}", fill="black")
    for g, metric in enumerate(metrics):
        x0 = 70 + g * group_width
        draw.text((x0, base + 8), metric, fill="black")
        for m, method in enumerate(methods):
            value = max(0.0, min(1.0, results[method][metric]))
            left = x0 + m * 50
            draw.rectangle([left, base - value * height, left + bar_width, base], fill=colours[m % len(colours)])
            draw.text((left, base - value * height - 14), f"{results[method][metric]:.3f}", fill="black")
    for m, method in enumerate(methods):
        draw.rectangle([60 + m * 130, base + 30, 72 + m * 130, base + 42], fill=colours[m % len(colours)])
        draw.text((78 + m * 130, base + 30), method, fill="black")
    image.save(path)
    return path


def write_report(folder: Path, title: str, table: dict[str, dict[str, float]], figures: dict[str, str],
                 notes: list[str]) -> Path:
    """A self-contained page (relative image links) with the results table and the figures."""
    columns = sorted({key for row in table.values() for key in row})
    rows = "".join(f"<tr><th>{html.escape(method)}</th>"
                   + "".join(f"<td>{row[c]:.3f}</td>" if isinstance(row.get(c), float) else f"<td>{row.get(c, '')}</td>"
                             for c in columns) + "</tr>" for method, row in table.items())
    images = "".join(f"<h2>{html.escape(caption)}</h2><img src='{html.escape(src)}' style='image-rendering:pixelated;"
                     f"max-width:100%'>" for caption, src in figures.items())
    page = (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;border-bottom:1px solid #ddd}</style>"
            f"<h1>{html.escape(title)}</h1><table><tr><th></th>"
            + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + f"</tr>{rows}</table>"
            + "".join(f"<p>{html.escape(note)}</p>" for note in notes) + images)
    path = folder / "report.html"
    path.write_text(page)
    return path

