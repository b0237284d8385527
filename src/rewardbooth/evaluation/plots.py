"""Sample grids (images tiled, or laid out with their prompts as rows and seeds as columns) and the palette
every plot shares."""

from __future__ import annotations

import math

from PIL import Image

# matplotlib's tab10: every plot of the project draws its series in this order.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def make_grid(images: list[Image.Image], columns: int | None = None) -> Image.Image:
    """Tile equally sized images row by row (default: as square as possible)."""
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height), "white")
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * width, (index // columns) * height))
    return grid


def prompt_grid(images: list[Image.Image], prompts: list[str], seeds: list[int], min_cell: int = 96,
                label_width: int = 260) -> Image.Image:
    """One row per prompt (its text at the left), one column per seed (headed by it): `images` are prompt by
    prompt, seed by seed. Images smaller than `min_cell` are enlarged by an integer factor with
    nearest-neighbour sampling, so 32 px toy images stay crisp and readable.

    Shape: len(images) == len(prompts) * len(seeds)
    """
    from PIL import ImageDraw, ImageFont

    if len(images) != len(prompts) * len(seeds):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts x {len(seeds)} seeds")
    width, height = images[0].size
    factor = max(1, math.ceil(min_cell / max(width, height)))
    cell_w, cell_h, header = width * factor, height * factor, 18
    grid = Image.new("RGB", (label_width + len(seeds) * cell_w, header + len(prompts) * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    draw.font = ImageFont.load_default(size=13)  # readable at 100 % zoom, unlike the bitmap default
    for column, seed in enumerate(seeds):
        draw.text((label_width + column * cell_w + 4, 3), f"seed {seed}", fill="black")
    for row, prompt in enumerate(prompts):
        top = header + row * cell_h
        if row:
            draw.line([(0, top - 1), (label_width - 4, top - 1)], fill=(220, 220, 220))
        for line_index, line in enumerate(_wrap(prompt, max(8, label_width // 7))[: max(1, cell_h // 14)]):
            draw.text((6, top + 4 + 14 * line_index), line, fill="black")
        for column in range(len(seeds)):
            image = images[row * len(seeds) + column].convert("RGB")
            if factor > 1:
                image = image.resize((cell_w, cell_h), Image.NEAREST)
            grid.paste(image, (label_width + column * cell_w, top))
    return grid


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines
