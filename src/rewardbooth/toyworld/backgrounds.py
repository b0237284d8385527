"""The toy world's backgrounds: one painter per scene, each with random variation (band heights, dot
positions), drawn on the supersampled canvas from the generator it is given."""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw


def _sky_and_ground(canvas: int, rng: np.random.Generator, sky, ground, horizon: tuple[float, float]):
    """A sky colour over a ground colour; returns the image, a drawer and the horizon row."""
    image = Image.new("RGB", (canvas, canvas), sky)
    draw = ImageDraw.Draw(image)
    row = int(canvas * rng.uniform(*horizon))
    draw.rectangle([0, row, canvas, canvas], fill=ground)
    return image, draw, row


def _dots(draw: ImageDraw.ImageDraw, rng: np.random.Generator, count: int, box, radius, fill) -> None:
    """`count` discs at random centres inside `box` (x0, y0, x1, y1) with radii drawn from `radius` (lo, hi)."""
    xs, ys = rng.uniform(box[0], box[2], count), rng.uniform(box[1], box[3], count)
    for x, y, r in zip(xs, ys, rng.uniform(*radius, count)):
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)


def _wave(canvas: int, rng: np.random.Generator, row: float, amplitude: float) -> list[float]:
    """A sine curve across the canvas as a flat coordinate list."""
    xs = np.linspace(0, canvas, 17)
    ys = row + amplitude * np.sin(xs * rng.uniform(0.03, 0.07) + rng.uniform(0, 2 * math.pi))
    return np.stack([xs, ys], axis=1).ravel().tolist()


def _paint_beach(canvas: int, rng: np.random.Generator) -> Image.Image:
    image, draw, horizon = _sky_and_ground(canvas, rng, (135, 200, 240), (30, 100, 185), (0.25, 0.4))
    shore = horizon + canvas * rng.uniform(0.12, 0.2)
    sand = _wave(canvas, rng, shore, canvas * 0.02)
    draw.polygon(sand + [canvas, canvas, 0, canvas], fill=(238, 214, 150))
    draw.line(sand, fill=(250, 250, 245), width=3)  # surf: the sea and the sand read as a beach
    return image


def _paint_snow(canvas: int, rng: np.random.Generator) -> Image.Image:
    image, draw, _ = _sky_and_ground(canvas, rng, (165, 195, 230), (246, 248, 252), (0.35, 0.5))
    _dots(draw, rng, int(rng.integers(12, 20)), (0, 0, canvas, canvas), (2.5, 4.5), (255, 255, 255))
    return image


def _paint_grass(canvas: int, rng: np.random.Generator) -> Image.Image:
    image, draw, horizon = _sky_and_ground(canvas, rng, (150, 205, 245), (75, 165, 55), (0.3, 0.45))
    count = int(rng.integers(25, 40))
    xs, ys = rng.uniform(0, canvas, count), rng.uniform(horizon + 6, canvas, count)
    for x, y, lean in zip(xs, ys, rng.uniform(-4, 4, count)):
        draw.line([x, y, x + lean, y - 9], fill=(40, 115, 35), width=3)
    return image


def _paint_night(canvas: int, rng: np.random.Generator) -> Image.Image:
    image = Image.new("RGB", (canvas, canvas), (15, 22, 65))
    draw = ImageDraw.Draw(image)
    _dots(draw, rng, int(rng.integers(10, 18)), (0, 0, canvas, canvas), (2.0, 4.0), (255, 245, 190))
    return image


def _paint_checker(canvas: int, rng: np.random.Generator) -> Image.Image:
    tile = int(rng.integers(12, 20))
    shift_x, shift_y = rng.integers(0, tile, 2)
    steps = np.arange(canvas)
    column_parity, row_parity = ((steps + shift_x) // tile) % 2, ((steps + shift_y) // tile) % 2
    index = (row_parity[:, None] ^ column_parity[None, :]).astype(np.uint8)
    index[: int(canvas * rng.uniform(0.25, 0.4))] = 2  # the wall above the floor
    image = Image.fromarray(index, mode="P")
    image.putpalette([70, 70, 82, 235, 232, 222, 190, 175, 150])
    return image.convert("RGB")


def _paint_brick(canvas: int, rng: np.random.Generator) -> Image.Image:
    image = Image.new("RGB", (canvas, canvas), (215, 205, 190))  # mortar
    draw = ImageDraw.Draw(image)
    height = int(rng.integers(14, 19))
    width, offset = 2 * height, rng.uniform(0, 2 * height)
    for row, top in enumerate(range(-int(rng.integers(0, height)), canvas, height)):
        shades = rng.integers(-18, 19, canvas // width + 2)
        for column, shade in enumerate(shades):
            left = column * width - offset - (row % 2) * height  # alternate rows are offset by half a brick
            draw.rectangle([left + 2, top + 2, left + width - 2, top + height - 2],
                           fill=(170 + int(shade), 68 + int(shade) // 2, 48))
    return image


@functools.lru_cache(maxsize=4)
def _water_gradient(canvas: int) -> Image.Image:
    """Light near the surface, dark in the deep; fixed, so it is computed once per canvas size."""
    depth = np.linspace(0, 1, canvas)[:, None, None]
    top, bottom = np.array([55, 145, 215]), np.array([15, 50, 125])
    pixels = np.broadcast_to(top + depth * (bottom - top), (canvas, canvas, 3)).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(pixels))


def _paint_water(canvas: int, rng: np.random.Generator) -> Image.Image:
    image = _water_gradient(canvas).copy()
    draw = ImageDraw.Draw(image)
    for row in np.sort(rng.uniform(0.05, 0.95, int(rng.integers(4, 7)))) * canvas:
        draw.line(_wave(canvas, rng, row, canvas * 0.025), fill=(130, 195, 240), width=3)
    return image


def _paint_desert(canvas: int, rng: np.random.Generator) -> Image.Image:
    image = Image.new("RGB", (canvas, canvas), (250, 222, 170))
    draw = ImageDraw.Draw(image)
    far = _wave(canvas, rng, canvas * rng.uniform(0.35, 0.45), canvas * 0.05)
    draw.polygon(far + [canvas, canvas, 0, canvas], fill=(225, 170, 85))
    near = _wave(canvas, rng, canvas * rng.uniform(0.7, 0.8), canvas * 0.06)
    draw.polygon(near + [canvas, canvas, 0, canvas], fill=(200, 140, 60))  # a nearer, shaded dune
    return image


PAINTERS = {"beach": _paint_beach, "snow": _paint_snow, "grass": _paint_grass, "night": _paint_night,
             "checker": _paint_checker, "brick": _paint_brick, "water": _paint_water, "desert": _paint_desert}
# The painters' sizes (dots, tiles, lines) are in pixels of this canvas: 32 px output x 4 supersampling.
BACKGROUND_CANVAS = 128


def paint_background(scene: str, rng: np.random.Generator, canvas: int) -> Image.Image:
    """Paint at the canvas the textures were tuned for, then rescale, so that a scene looks the same (dots as
    big, tiles as many) at every output resolution."""
    image = PAINTERS[scene](BACKGROUND_CANVAS, rng)
    if canvas != BACKGROUND_CANVAS:
        image = image.resize((canvas, canvas), Image.Resampling.BILINEAR)
    return image
