"""The toy world's procedural generator: captioned 32x32 images of one object in a scene.

An image shows one 2D silhouette (a class from `CLASSES`) with a plain body colour and a thin darker (or, for
dark bodies, lighter) rim, at a named size and position, over a textured background (`SCENES`). Drawing
happens on a canvas `SUPERSAMPLE` times larger than the output, then a Lanczos downsample antialiases it.

Randomness comes only from the `numpy.random.Generator` passed in, always consumed in the same order
(scene attributes, background, placement, caption drops), so every image is reproducible from its seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from rewardbooth.toyworld.backgrounds import BACKGROUND_CANVAS, PAINTERS, paint_background

RESOLUTION = 32
SUPERSAMPLE = 4  # draw at 4x and downsample: binary polygons become antialiased edges

CLASSES: tuple[str, ...] = ("ball", "box", "cone", "star", "ring", "cross", "diamond", "moon")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 170, 50),
    "blue": (35, 70, 225),
    "yellow": (245, 220, 30),
    "purple": (140, 45, 185),
    "orange": (245, 135, 20),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
    "pink": (250, 140, 195),
}
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: dict[str, str] = {"left": "on the left", "center": "in the middle", "right": "on the right"}
SCENES: dict[str, str] = {
    "beach": "on the beach",
    "snow": "in the snow",
    "grass": "on the grass",
    "night": "at night",
    "checker": "on a checkered floor",
    "brick": "in front of a brick wall",
    "water": "underwater",
    "desert": "in the desert",
}
VOCABULARY: tuple[str, ...] = tuple(sorted(
    {"a"} | set(CLASSES) | set(COLOURS) | set(SIZES)
    | {word for phrase in (*POSITIONS.values(), *SCENES.values()) for word in phrase.split()}))

# Body radius as a fraction of the image width; the two ranges leave a gap so "small" and "large" never meet.
_SIZE_RADIUS = {"small": (0.12, 0.15), "large": (0.22, 0.26)}
_POSITION_X = {"left": 0.3, "center": 0.5, "right": 0.7}
_JITTER = 0.04  # centre jitter, fraction of the width: small enough that left/centre/right never overlap
# Largest rotation (degrees) per class: enough for pose variety, small enough that a box never turns into a
# diamond and a cross never into an "x".
_MAX_ROTATION = {"ball": 30, "box": 12, "cone": 15, "star": 36, "ring": 30, "cross": 12, "diamond": 10, "moon": 25}
_RIM = 0.09  # rim thickness in body radii: keeps a white ball visible in the snow and a black one at night


def _circle(radius: float = 1.0, centre: tuple[float, float] = (0.0, 0.0), vertices: int = 40) -> np.ndarray:
    """A circle as a polygon (vertices, 2), so that stretch and rotation apply to it like to any shape."""
    theta = np.linspace(0, 2 * math.pi, vertices, endpoint=False)
    return np.stack([centre[0] + radius * np.cos(theta), centre[1] + radius * np.sin(theta)], axis=1)


def _star(tips: int = 5, inner: float = 0.45) -> np.ndarray:
    theta = np.linspace(0, 2 * math.pi, 2 * tips, endpoint=False) - math.pi / 2
    radii = np.where(np.arange(2 * tips) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(theta), radii * np.sin(theta)], axis=1)


def _polygon(*points: tuple[float, float]) -> np.ndarray:
    return np.array(points, dtype=float)


# Each class: polygons in the unit body frame (y down, radius ~1), each either added (True) or cut out (False),
# drawn in order. Ring and moon are a disc with a second disc cut out.
_SHAPES: dict[str, tuple[tuple[np.ndarray, bool], ...]] = {
    "ball": ((_circle(), True),),
    "box": ((_polygon((-0.82, -0.82), (0.82, -0.82), (0.82, 0.82), (-0.82, 0.82)), True),),
    "cone": ((_polygon((0.0, -1.0), (0.88, 0.8), (-0.88, 0.8)), True),),
    "star": ((_star(), True),),
    "ring": ((_circle(), True), (_circle(0.5), False)),
    "cross": ((_polygon((-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1),
                        (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)), True),),
    "diamond": ((_polygon((0.0, -1.05), (0.68, 0.0), (0.0, 1.05), (-0.68, 0.0)), True),),
    "moon": ((_circle(1.0, (-0.15, 0.0)), True), (_circle(0.85, (0.4, -0.2)), False)),
}


@dataclass(frozen=True)
class Scene:
    """What one image shows; `caption` names these attributes."""

    object_class: str
    colour: str  # main body colour, key of COLOURS
    size: str  # "small" or "large"
    position: str  # key of POSITIONS
    scene: str  # key of SCENES


@dataclass(frozen=True)
class Placement:
    """Where a body lands on the canvas: centre and radius in canvas pixels, rotation in degrees, stretch."""

    x: float
    y: float
    radius: float
    angle: float = 0.0
    aspect: float = 1.0  # width / height; area is kept, so a stretched body is as "large" as a plain one

    def to_canvas(self, points: np.ndarray) -> np.ndarray:
        """Unit body-frame points (N, 2) -> canvas pixel coordinates (N, 2)."""
        stretch = np.array([math.sqrt(self.aspect), 1 / math.sqrt(self.aspect)]) * self.radius
        cos, sin = math.cos(math.radians(self.angle)), math.sin(math.radians(self.angle))
        rotation = np.array([[cos, sin], [-sin, cos]])
        return (points * stretch) @ rotation + np.array([self.x, self.y])


class PatternLike(Protocol):
    """Detail painted on a body (see `subjects.Pattern`): a colour and where, in canvas pixels, it goes."""

    colour: str

    def draw_mask(self, placement: Placement, canvas: int, outlines: list[list[float]]) -> Image.Image:
        """An "L" mask of the pattern; `outlines` are the body's polygons as flat canvas coordinate lists."""
        ...


def sample_scene(rng: np.random.Generator) -> Scene:
    """Every attribute uniform and independent."""
    return Scene(object_class=CLASSES[rng.integers(len(CLASSES))],
                 colour=list(COLOURS)[rng.integers(len(COLOURS))],
                 size=SIZES[rng.integers(len(SIZES))],
                 position=list(POSITIONS)[rng.integers(len(POSITIONS))],
                 scene=list(SCENES)[rng.integers(len(SCENES))])


def caption(scene: Scene, rng: np.random.Generator | None = None, drop: float = 0.0) -> str:
    """Describe `scene`: "a <size> <colour> <class> <position> <scene>", e.g. "a large red ball on the left on
    the beach".

    With `rng` and `drop` > 0, size, colour, position and scene are each left out with probability `drop`, so
    the model also learns short prompts ("a ball in the snow"); the class is never left out.
    """
    keep = rng.random(4) >= drop if rng is not None and drop > 0 else np.ones(4, dtype=bool)
    words = ["a"]
    words += [scene.size] if keep[0] else []
    words += [scene.colour] if keep[1] else []
    words.append(scene.object_class)
    words += [POSITIONS[scene.position]] if keep[2] else []
    words += [SCENES[scene.scene]] if keep[3] else []
    return " ".join(words)


assert set(PAINTERS) == set(SCENES) and BACKGROUND_CANVAS == RESOLUTION * SUPERSAMPLE


# --- the object -------------------------------------------------------------------------------------------


def _place(scene: Scene, rng: np.random.Generator, canvas: int, aspect: float) -> Placement:
    """Jitter the centre around the named position, the radius within the named size, and the rotation."""
    x = _POSITION_X[scene.position] + rng.uniform(-_JITTER, _JITTER)
    y = 0.55 + rng.uniform(-_JITTER, _JITTER)
    radius = rng.uniform(*_SIZE_RADIUS[scene.size])
    limit = _MAX_ROTATION[scene.object_class]
    return Placement(x * canvas, y * canvas, radius * canvas, rng.uniform(-limit, limit), aspect)


def _rim_colour(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """A darker shade of the body, or a lighter one for a body too dark to darken."""
    if sum(rgb) < 150:
        return tuple(int(c + 0.4 * (255 - c)) for c in rgb)
    return tuple(int(0.6 * c) for c in rgb)


def body_outlines(object_class: str, placement: Placement) -> list[list[float]]:
    """The class's polygons placed on the canvas, as flat coordinate lists (PIL's polygon format)."""
    return [placement.to_canvas(points).ravel().tolist() for points, _ in _SHAPES[object_class]]


def body_mask(object_class: str, placement: Placement, canvas: int) -> Image.Image:
    """An "L" mask (0 or 255) of the body's silhouette on a `canvas`-pixel square."""
    return _fill(object_class, body_outlines(object_class, placement), canvas)


def _fill(object_class: str, outlines: list[list[float]], canvas: int) -> Image.Image:
    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    for outline, (_, added) in zip(outlines, _SHAPES[object_class]):
        draw.polygon(outline, fill=255 if added else 0)
    return mask


def _joint(outline: list[float]) -> str | None:
    """Round joints keep a thick line solid at sharp corners; a circle's 40 gentle corners need none."""
    return "curve" if len(outline) < 40 else None


def _paint_body(image: Image.Image, scene: Scene, placement: Placement, pattern: PatternLike | None) -> None:
    canvas = image.width
    outlines = body_outlines(scene.object_class, placement)
    body = _fill(scene.object_class, outlines, canvas)
    # The inside is the body minus a band along every edge (holes included): painting the rim colour through
    # the whole body and the body colour through the inside leaves the rim.
    inside = body.copy()
    draw = ImageDraw.Draw(inside)
    rim = max(2, round(2 * _RIM * placement.radius))
    for outline in outlines:
        draw.line(outline + outline[:2], fill=0, width=rim, joint=_joint(outline))
    # Paste through the body's bounding box only: pasting through the whole canvas costs six times more.
    box = body.getbbox() or (0, 0, 1, 1)
    rgb = COLOURS[scene.colour]
    image.paste(_rim_colour(rgb), box, mask=body.crop(box))
    image.paste(rgb, box, mask=inside.crop(box))
    if pattern is not None:
        pattern_mask = ImageChops.darker(pattern.draw_mask(placement, canvas, outlines), inside)
        image.paste(COLOURS[pattern.colour], box, mask=pattern_mask.crop(box))


def _downsample(image: Image.Image, resolution: int) -> Image.Image:
    """Lanczos to the output size; `reducing_gap` first box-averages 2x, which halves the cost, unseen."""
    return image.resize((resolution, resolution), Image.Resampling.LANCZOS, reducing_gap=2.0)


def render_background(scene: Scene, rng: np.random.Generator, resolution: int = RESOLUTION) -> Image.Image:
    """The scene alone. It consumes `rng` exactly as `render` does before placing the object, so the same
    generator state gives the very background `render` paints behind the object."""
    return _downsample(paint_background(scene.scene, rng, resolution * SUPERSAMPLE), resolution)


def render(scene: Scene, rng: np.random.Generator, resolution: int = RESOLUTION,
           pattern: PatternLike | None = None, aspect: float = 1.0) -> Image.Image:
    """An RGB image of `scene`: background, then the object, jittered in place, size and rotation by `rng`.

    `pattern` paints detail on the body and `aspect` (width / height) stretches it. Subjects have both; a share
    of pretraining bodies carry a random pattern (never named in the caption), none is stretched.
    """
    canvas = resolution * SUPERSAMPLE
    image = paint_background(scene.scene, rng, canvas)
    _paint_body(image, scene, _place(scene, rng, canvas, aspect), pattern)
    return _downsample(image, resolution)


PatternSampler = Callable[[str, str, np.random.Generator], PatternLike]  # (class, body colour, rng) -> pattern


def sample_pair(rng: np.random.Generator, drop: float = 0.3, pattern_share: float = 0.0,
                pattern_sampler: PatternSampler | None = None) -> tuple[Image.Image, str, Scene]:
    """One random scene, its image and a caption with attributes dropped at rate `drop`.

    With probability `pattern_share` the body gets a random pattern from `pattern_sampler`, unnamed in the
    caption, as a web photo of "a mug" may show a striped mug: the base model (and its VAE) learns to draw
    such detail without any subject's particular one. At share 0 the generator is consumed as before.
    """
    scene = sample_scene(rng)
    pattern = None
    if pattern_share > 0 and pattern_sampler is not None and rng.random() < pattern_share:
        pattern = pattern_sampler(scene.object_class, scene.colour, rng)
    image = render(scene, rng, pattern=pattern)
    return image, caption(scene, rng, drop), scene


_DATASET_SALT = 0x7011  # keeps dataset streams apart from the subjects' streams seeded with small integers


def make_dataset(seed: int, count: int, drop: float = 0.3, pattern_share: float = 0.0,
                 pattern_sampler: PatternSampler | None = None) -> tuple[np.ndarray, list[str], list[Scene]]:
    """`count` captioned images: uint8 (count, RESOLUTION, RESOLUTION, 3), captions and scenes.

    Item i is drawn from its own generator seeded by (seed, i), so it is the same whatever `count` is.
    """
    images = np.empty((count, RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    captions, scenes = [], []
    for index in range(count):
        image, text, scene = sample_pair(np.random.default_rng([_DATASET_SALT, seed, index]), drop, pattern_share,
                                         pattern_sampler)
        images[index] = np.asarray(image)
        captions.append(text)
        scenes.append(scene)
    return images, captions, scenes
