"""Subjects: specific instances of the toy world's classes, never seen in pretraining.

A subject is a class with a body colour, a structured pattern on the body (two-tone split, stripes, dots, an
off-centre mark or a thick contrasting rim) and unusual proportions. Pretraining only ever shows plain,
unstretched bodies, so the pattern and the stretch are the identity a personalization method must learn from
a handful of reference images. Everything is derived from the subject's index and is reproducible.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from rewardbooth.toyworld.world import (
    CLASSES,
    COLOURS,
    POSITIONS,
    RESOLUTION,
    SCENES,
    SIZES,
    Placement,
    Scene,
    body_mask,
    render,
)

PATTERN_KINDS: tuple[str, ...] = ("two_tone", "stripes", "dots", "mark", "outline")
IDENTIFIER = "sks"  # the rare token of DreamBooth (Ruiz et al., 2023, §4.1); not a word of the world

_SUBJECT_SALT = 0x5B7EC7  # separates subject streams from the dataset's and the references' streams
_REFERENCE_SALT = 0x4EF5
_PROPERTY_SALT = 0x9C01
# A thick rim would cover the whole of these bodies' narrow arms and bands, leaving no body colour to see.
_THIN_CLASSES = frozenset({"ring", "cross", "star", "moon"})
# Radius of the largest disc inside each body (unit frame) that can carry an outline: sets the rim's width.
_INRADIUS = {"ball": 1.0, "box": 0.82, "cone": 0.55, "diamond": 0.57}
_FIRST_KIND = {"ball": "two_tone", "box": "stripes", "cone": "dots", "star": "mark", "ring": "two_tone",
               "cross": "stripes", "diamond": "outline", "moon": "dots"}
_FAR = 10.0  # a half-plane or a stripe reaching this far (in body radii) crosses the whole body


@dataclass(frozen=True)
class Pattern:
    """Structured detail painted on the body, in the body's own frame (it stretches and turns with it)."""

    kind: str  # one of PATTERN_KINDS
    colour: str  # key of COLOURS, never the body colour
    angle: float = 0.0  # orientation of the two-tone split or the stripes, degrees
    count: int = 1  # number of stripes or dots
    width: float = 0.0  # stripe width, dot or mark radius, or rim thickness, in body radii
    points: tuple[tuple[float, float], ...] = ()  # dot or mark centres, body frame (radius 1)

    def draw_mask(self, placement: Placement, canvas: int, outlines: list[list[float]]) -> Image.Image:
        """An "L" mask of where the pattern colour goes; the renderer keeps only its part inside the body."""
        mask = Image.new("L", (canvas, canvas), 0)
        draw = ImageDraw.Draw(mask)
        if self.kind == "outline":
            thickness = max(2, round(2 * self.width * placement.radius))  # a line straddles the edge
            for outline in outlines:
                draw.line(outline + outline[:2], fill=255, width=thickness, joint="curve")
            return mask
        for polygon in self.polygons():
            draw.polygon(placement.to_canvas(polygon).ravel().tolist(), fill=255)
        return mask

    def polygons(self) -> list[np.ndarray]:
        """The pattern's regions as polygons (N, 2) in the body frame."""
        if self.kind == "two_tone":
            return [_rotate(np.array([[0, -_FAR], [_FAR, -_FAR], [_FAR, _FAR], [0, _FAR]]), self.angle)]
        if self.kind == "stripes":
            period = 1.6 / self.count
            centres = (np.arange(self.count) - (self.count - 1) / 2) * period
            half = self.width / 2
            return [_rotate(np.array([[c - half, -_FAR], [c + half, -_FAR], [c + half, _FAR], [c - half, _FAR]]),
                            self.angle) for c in centres]
        return [_disc(self.width, point) for point in self.points]


@dataclass(frozen=True)
class Subject:
    """One specific instance: what makes it itself is its pattern and its stretch."""

    index: int
    object_class: str
    colour: str  # body colour
    pattern: Pattern
    aspect: float  # width / height stretch, away from 1 so that it is distinctive

    def scene(self, size: str = "large", position: str = "center", scene: str = "grass") -> Scene:
        """The subject's class and colour in a given size, position and scene."""
        return Scene(self.object_class, self.colour, size, position, scene)

    def render(self, scene: Scene, rng: np.random.Generator, resolution: int = RESOLUTION) -> Image.Image:
        """`scene` with this subject's pattern and stretch on the body."""
        return render(scene, rng, resolution, pattern=self.pattern, aspect=self.aspect)


def _rotate(points: np.ndarray, degrees: float) -> np.ndarray:
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return points @ np.array([[cos, sin], [-sin, cos]])


def _disc(radius: float, centre: tuple[float, float], vertices: int = 24) -> np.ndarray:
    theta = np.linspace(0, 2 * math.pi, vertices, endpoint=False)
    return np.stack([centre[0] + radius * np.cos(theta), centre[1] + radius * np.sin(theta)], axis=1)


def _contrasting(colour: str) -> list[str]:
    """Colours far enough from `colour` that a pattern in them stands out at 32 px."""
    body = np.array(COLOURS[colour])
    return [name for name, rgb in COLOURS.items() if np.linalg.norm(body - np.array(rgb)) > 160]


def _scatter(object_class: str, count: int, radius: float, rng: np.random.Generator,
             min_offset: float = 0.0) -> tuple[tuple[float, float], ...]:
    """`count` disc centres inside the class's silhouette, apart from each other and from the rim.

    Rejection sampling against a rasterised silhouette. The required clearance shrinks as tries fail, so that
    thin shapes (ring, moon) still get their dots, partly clipped by the body edge.
    """
    side, scale = 97, 40.0  # silhouette raster: unit radius = 40 px, centre at pixel 48
    inside = np.asarray(body_mask(object_class, Placement(48, 48, scale), side)) > 0
    ring = _disc(1.0, (0.0, 0.0), vertices=8)
    points: list[tuple[float, float]] = []
    tries = 2000
    for attempt in range(tries):
        if len(points) == count:
            break
        clearance = (radius + 0.12) * (1 - attempt / tries)  # 0.12: the renderer's rim
        candidate = rng.uniform(-1, 1, 2)
        probes = np.vstack([candidate, candidate + clearance * ring])
        pixels = np.clip(np.round(48 + scale * probes).astype(int), 0, side - 1)
        far_from_others = all(math.dist(candidate, p) > 2.2 * radius for p in points)
        if inside[pixels[:, 1], pixels[:, 0]].all() and far_from_others and np.hypot(*candidate) >= min_offset:
            points.append((round(float(candidate[0]), 3), round(float(candidate[1]), 3)))
    return tuple(points)


def _sample_pattern(kind: str, object_class: str, colour: str, rng: np.random.Generator) -> Pattern:
    pattern_colour = str(rng.choice(_contrasting(colour)))
    angle = round(float(rng.uniform(0, 180)), 1)
    if kind == "stripes":
        count = int(rng.integers(2, 5))
        return Pattern(kind, pattern_colour, angle, count, width=round(0.8 / count, 3))
    if kind == "dots":
        count = int(rng.integers(3, 6))
        return Pattern(kind, pattern_colour, angle, count, 0.17, _scatter(object_class, count, 0.17, rng))
    if kind == "mark":
        width = round(float(rng.uniform(0.28, 0.34)), 3)
        return Pattern(kind, pattern_colour, angle, 1, width, _scatter(object_class, 1, width, rng, 0.3))
    if kind == "outline":
        # Half the body's inner radius: the body colour keeps the middle half, the rim colour the outer one.
        width = _INRADIUS[object_class] * rng.uniform(0.42, 0.5)
        return Pattern(kind, pattern_colour, angle, 1, round(float(width), 3))
    return Pattern(kind, pattern_colour, angle)


def random_pattern(object_class: str, colour: str, rng: np.random.Generator) -> Pattern:
    """A pattern of any kind the class can carry, for pretraining bodies (`world.make_dataset`'s sampler)."""
    kinds = [kind for kind in PATTERN_KINDS if not (kind == "outline" and object_class in _THIN_CLASSES)]
    return _sample_pattern(str(rng.choice(kinds)), object_class, colour, rng)


def make_subject(index: int) -> Subject:
    """Subject number `index`, the same every time.

    Consecutive indices cycle through CLASSES. The first cycle (indices 0-7) shows every pattern kind; each
    later cycle moves every class on to its next kind, so the first subjects of any class all carry different
    kinds of pattern (five kinds, four for thin classes).
    """
    if index < 0:
        raise ValueError(f"subject index must be >= 0, got {index}")
    rng = np.random.default_rng([index, _SUBJECT_SALT])
    object_class = CLASSES[index % len(CLASSES)]
    kinds = [kind for kind in PATTERN_KINDS if not (kind == "outline" and object_class in _THIN_CLASSES)]
    kind = kinds[(kinds.index(_FIRST_KIND[object_class]) + index // len(CLASSES)) % len(kinds)]
    colour = str(rng.choice(list(COLOURS)))
    pattern = _sample_pattern(kind, object_class, colour, rng)
    # Clearly wider or clearly taller than any pretraining body (those all have aspect 1).
    aspect = rng.uniform(0.72, 0.84) if rng.random() < 0.5 else rng.uniform(1.2, 1.35)
    return Subject(index, object_class, colour, pattern, round(float(aspect), 3))


def reference_images(subject: Subject, count: int = 5, seed: int = 0) -> list[Image.Image]:
    """`count` views of the subject: different scenes (all distinct up to 8), positions and rotations,
    mostly large (every fourth view, from the third, is small), as a user's few photos would be."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    rng = np.random.default_rng([subject.index, seed, _REFERENCE_SALT])
    scenes, positions = rng.permutation(list(SCENES)), rng.permutation(list(POSITIONS))
    views = []
    for view in range(count):
        size = "small" if view % 4 == 2 else "large"
        scene = subject.scene(size, str(positions[view % len(positions)]), str(scenes[view % len(scenes)]))
        views.append(subject.render(scene, rng))
    return views


def instance_prompt(subject: Subject, identifier: str = IDENTIFIER) -> str:
    """The prompt the reference images are trained with, e.g. "a sks ball"."""
    return f"a {identifier} {subject.object_class}"


def class_prompt(subject: Subject) -> str:
    """The prompt of the class-prior images, e.g. "a ball"."""
    return f"a {subject.object_class}"


def prompt_set(subject: Subject, identifier: str = IDENTIFIER) -> list[str]:
    """DreamBench-style evaluation prompts: 20 recontextualisations, then 5 colour changes.

    Recontextualisation: every scene, every position, every size, then 7 size + position + scene
    combinations (skipping the brick wall, whose 5-word phrase would make the longest prompts overflow a
    16-token context once the identifier is split into byte tokens). Property: the subject in 5 colours other
    than its body colour, chosen per subject.
    """
    name = f"{identifier} {subject.object_class}"
    prompts = [f"a {name} {phrase}" for phrase in SCENES.values()]
    prompts += [f"a {name} {phrase}" for phrase in POSITIONS.values()]
    prompts += [f"a {size} {name}" for size in SIZES]
    short_scenes = [scene for scene in SCENES if scene != "brick"]
    for k in range(20 - len(prompts)):
        size, position = SIZES[k % len(SIZES)], list(POSITIONS)[k % len(POSITIONS)]
        scene = short_scenes[(k + subject.index) % len(short_scenes)]
        prompts.append(f"a {size} {name} {POSITIONS[position]} {SCENES[scene]}")
    rng = np.random.default_rng([subject.index, _PROPERTY_SALT])
    others = [colour for colour in COLOURS if colour != subject.colour]
    prompts += [f"a {colour} {name}" for colour in rng.permutation(others)[:5]]
    return prompts


# Prompts without photos (data.scene_prompts=toy) train on these scenes and this position only; the held-out
# evaluation prompts (`held_out_prompt_set`) name none of them, so a gain in alignment there is not a prompt
# seen in training (the world has 8 scenes and 3 positions: string-level disjointness would mean nothing).
TRAINING_SCENES: tuple[str, ...] = ("snow", "night", "water", "desert")
TRAINING_POSITIONS: tuple[str, ...] = ("right",)


def scene_templates() -> list[str]:
    """The toy world's training scene prompts, `{subject}` for e.g. 'sks ball': each training scene, the
    training position, and the two together."""
    scenes, positions = [SCENES[s] for s in TRAINING_SCENES], [POSITIONS[p] for p in TRAINING_POSITIONS]
    return ([f"a {{subject}} {phrase}" for phrase in scenes + positions]
            + [f"a {{subject}} {position} {scene}" for position in positions for scene in scenes])


def held_out_prompt_set(subject: Subject, identifier: str = IDENTIFIER) -> list[str]:
    """`prompt_set` without every prompt that names a training scene or position (`TRAINING_SCENES`,
    `TRAINING_POSITIONS`): what runs trained on scene prompts are evaluated on."""
    trained = [SCENES[s] for s in TRAINING_SCENES] + [POSITIONS[p] for p in TRAINING_POSITIONS]
    return [prompt for prompt in prompt_set(subject, identifier) if not any(f" {phrase}" in prompt for phrase in trained)]


def write_subject(subject: Subject, folder: Path, count: int = 5, seed: int = 0,
                  identifier: str = IDENTIFIER) -> list[Path]:
    """Write ref_00.png ... (the reference views), prompts.txt (`prompt_set`, one a line) and subject.json.

    Refuses, before writing anything, if any of those files already exists.
    """
    folder = Path(folder)
    images = [folder / f"ref_{view:02d}.png" for view in range(count)]
    prompts_path, attributes_path = folder / "prompts.txt", folder / "subject.json"
    existing = [path for path in [*images, prompts_path, attributes_path] if path.exists()]
    if existing:
        raise FileExistsError(f"{existing[0]} already exists; choose an empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    for path, image in zip(images, reference_images(subject, count, seed)):
        image.save(path)
    prompts_path.write_text("\n".join(prompt_set(subject, identifier)) + "\n")
    attributes = {**dataclasses.asdict(subject), "identifier": identifier, "reference_seed": seed}
    attributes_path.write_text(json.dumps(attributes, indent=2) + "\n")
    return [*images, prompts_path, attributes_path]


def main(argv: list[str] | None = None) -> None:
    """Write toy subjects as a DreamBench-layout dataset (one folder per subject) for `rewardbooth sweep`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rewardbooth.toyworld.subjects", description=main.__doc__)
    parser.add_argument("output", type=Path, help="dataset folder")
    parser.add_argument("--indices", type=int, nargs="+", default=list(range(100, 108)),
                        help="subject indices (100+ are the benchmark's reported subjects)")
    parser.add_argument("--views", type=int, default=5, help="reference photos per subject")
    args = parser.parse_args(argv)
    for index in args.indices:
        write_subject(make_subject(index), args.output / f"subject_{index:03d}", count=args.views)
    print(f"wrote {len(args.indices)} subjects to {args.output}")


if __name__ == "__main__":
    main()
