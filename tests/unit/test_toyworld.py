"""Unit tests for the toy world's generator (rewardbooth.toyworld): determinism, captions, rendering, subjects."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from rewardbooth.toyworld import (
    CLASSES,
    COLOURS,
    PATTERN_KINDS,
    POSITIONS,
    RESOLUTION,
    SCENES,
    SIZES,
    VOCABULARY,
    Scene,
    caption,
    class_prompt,
    instance_prompt,
    make_dataset,
    make_subject,
    prompt_set,
    reference_images,
    render,
    render_background,
    sample_scene,
    write_subject,
)

NUM_SUBJECTS = 16


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int64)


def _erode(mask: np.ndarray) -> np.ndarray:
    """Keep pixels whose four neighbours are in the mask too: drops the rim and the edge blended with the
    background, which vary even on a plain body."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner


def _object_mask(scene: Scene, seed: int, threshold: int = 40, **render_kwargs) -> tuple[np.ndarray, np.ndarray]:
    """(image pixels, mask of the pixels the object changed): render and background share one rng state."""
    image = _pixels(render(scene, np.random.default_rng(seed), **render_kwargs))
    background = _pixels(render_background(scene, np.random.default_rng(seed)))
    return image, np.abs(image - background).sum(axis=-1) > threshold


# --- the dataset -------------------------------------------------------------------------------------------


def test_make_dataset_is_deterministic_and_shaped():
    images, captions, scenes = make_dataset(seed=3, count=20)
    again_images, again_captions, again_scenes = make_dataset(seed=3, count=20)
    assert images.shape == (20, RESOLUTION, RESOLUTION, 3) and images.dtype == np.uint8
    assert np.array_equal(images, again_images)
    assert captions == again_captions and scenes == again_scenes
    assert len({image.tobytes() for image in images}) == 20  # no two items alike


def test_item_depends_only_on_seed_and_index():
    images, captions, scenes = make_dataset(3, 20)
    few_images, few_captions, few_scenes = make_dataset(3, 5)
    assert np.array_equal(few_images, images[:5])
    assert few_captions == captions[:5] and few_scenes == scenes[:5]


def test_different_seeds_differ():
    first, _, _ = make_dataset(3, 8)
    second, _, _ = make_dataset(4, 8)
    assert all(not np.array_equal(a, b) for a, b in zip(first, second))


def test_sample_scene_covers_every_value():
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng) for _ in range(600)]
    assert {s.object_class for s in scenes} == set(CLASSES)
    assert {s.colour for s in scenes} == set(COLOURS)
    assert {s.size for s in scenes} == set(SIZES)
    assert {s.position for s in scenes} == set(POSITIONS)
    assert {s.scene for s in scenes} == set(SCENES)


# --- captions and vocabulary ----------------------------------------------------------------------------


def test_world_is_large_enough_and_vocabulary_sorted():
    assert len(CLASSES) >= 6 and len(COLOURS) >= 8 and len(SCENES) >= 8 and len(POSITIONS) >= 3
    assert list(VOCABULARY) == sorted(set(VOCABULARY))
    assert all(" " not in word for word in VOCABULARY)


def test_vocabulary_covers_captions_and_prompts():
    rng = np.random.default_rng(1)
    words = {word for _ in range(2000) for word in caption(sample_scene(rng), rng, drop=0.3).split()}
    words |= {word for _ in range(200) for word in caption(sample_scene(rng)).split()}
    for index in range(NUM_SUBJECTS):
        subject = make_subject(index)
        for prompt in [*prompt_set(subject), instance_prompt(subject), class_prompt(subject)]:
            words |= set(prompt.split()) - {"sks"}
    assert words <= set(VOCABULARY), words - set(VOCABULARY)
    assert "sks" not in VOCABULARY  # the identifier stays a rare token, outside the world's words


def test_full_caption_names_every_attribute_in_order():
    scene = Scene("ball", "red", "large", "left", "beach")
    assert caption(scene) == "a large red ball on the left on the beach"
    for scene in (sample_scene(np.random.default_rng(seed)) for seed in range(20)):
        text = caption(scene)
        expected = f"a {scene.size} {scene.colour} {scene.object_class} {POSITIONS[scene.position]}"
        assert text == f"{expected} {SCENES[scene.scene]}"


def test_caption_drop_keeps_only_the_class():
    rng = np.random.default_rng(0)
    for object_class in CLASSES:
        assert caption(Scene(object_class, "blue", "small", "right", "snow"), rng, drop=1.0) == f"a {object_class}"


def test_caption_drop_rate_is_respected():
    rng = np.random.default_rng(0)
    scene = Scene("star", "green", "small", "center", "night")
    captions = [caption(scene, rng, drop=0.3) for _ in range(2000)]
    assert all("star" in text for text in captions)
    assert 0.6 < np.mean(["green" in text for text in captions]) < 0.8
    assert 0.6 < np.mean(["at night" in text for text in captions]) < 0.8
    assert len(set(captions)) == 16  # every subset of the four droppable attributes occurs


# --- rendering ---------------------------------------------------------------------------------------------


def test_render_is_rgb_and_reproducible():
    scene = Scene("cone", "orange", "large", "center", "brick")
    first = render(scene, np.random.default_rng(5))
    assert first.mode == "RGB" and first.size == (RESOLUTION, RESOLUTION)
    assert np.array_equal(_pixels(first), _pixels(render(scene, np.random.default_rng(5))))
    assert not np.array_equal(_pixels(first), _pixels(render(scene, np.random.default_rng(6))))
    assert render(scene, np.random.default_rng(5), resolution=48).size == (48, 48)


@pytest.mark.parametrize("background", ["night", "grass", "brick", "water"])
def test_object_carries_its_named_colour(background):
    names, palette = list(COLOURS), np.array(list(COLOURS.values()))
    for object_class, colour, seed in itertools.product(["ball", "box"], names, range(2)):
        image, mask = _object_mask(Scene(object_class, colour, "large", "center", background), seed)
        mean = image[mask].mean(axis=0)
        nearest = names[int(np.argmin(((palette - mean) ** 2).sum(axis=1)))]
        assert nearest == colour, (object_class, colour, background, mean)


def test_left_objects_lie_left_of_right_objects():
    for object_class, seed in itertools.product(CLASSES, range(3)):
        centres = {}
        for position in ("left", "center", "right"):
            _, mask = _object_mask(Scene(object_class, "red", "small", position, "grass"), seed)
            centres[position] = np.nonzero(mask)[1].mean()
        assert centres["left"] < centres["center"] < centres["right"], (object_class, centres)


def test_large_objects_cover_more_pixels():
    for object_class, seed in itertools.product(CLASSES, range(3)):
        areas = {size: _object_mask(Scene(object_class, "blue", size, "center", "desert"), seed)[1].sum()
                 for size in SIZES}
        assert areas["large"] > 2 * areas["small"] > 0, (object_class, areas)


def test_scenes_differ_from_each_other():
    backgrounds = {name: _pixels(render_background(Scene("ball", "red", "large", "center", name),
                                                   np.random.default_rng(0))) for name in SCENES}
    for first, second in itertools.combinations(SCENES, 2):
        assert np.abs(backgrounds[first] - backgrounds[second]).mean() > 20, (first, second)


def test_scene_looks_the_same_at_another_resolution():
    for name in SCENES:
        scene = Scene("ball", "red", "large", "center", name)
        small = _pixels(render_background(scene, np.random.default_rng(0)))
        large = render_background(scene, np.random.default_rng(0), resolution=2 * RESOLUTION)
        shrunk = _pixels(large.resize((RESOLUTION, RESOLUTION), Image.Resampling.BOX))
        assert np.abs(small - shrunk).mean() < 8, name


def test_scenes_vary_with_the_seed():
    for name in SCENES:
        scene = Scene("ball", "red", "large", "center", name)
        one, two = (_pixels(render_background(scene, np.random.default_rng(seed))) for seed in (0, 1))
        assert not np.array_equal(one, two), name


# --- subjects ----------------------------------------------------------------------------------------------


def test_make_subject_is_deterministic_and_cycles_classes():
    assert make_subject(7) == make_subject(7)
    subjects = [make_subject(index) for index in range(NUM_SUBJECTS)]
    assert {s.object_class for s in subjects[: len(CLASSES)]} == set(CLASSES)
    assert [s.object_class for s in subjects] == [CLASSES[i % len(CLASSES)] for i in range(NUM_SUBJECTS)]
    assert {s.pattern.kind for s in subjects} == set(PATTERN_KINDS)
    for subject in subjects:
        assert subject.pattern.colour != subject.colour
        assert abs(subject.aspect - 1) > 0.15


def test_subjects_of_one_class_differ():
    for first in range(len(CLASSES)):
        one, other = make_subject(first), make_subject(first + len(CLASSES))
        assert one.object_class == other.object_class
        assert one.pattern.kind != other.pattern.kind or one.colour != other.colour


def test_make_subject_rejects_negative_index():
    with pytest.raises(ValueError):
        make_subject(-1)


def _first_subject_of_each_kind():
    found = {}
    for index in range(60):
        found.setdefault(make_subject(index).pattern.kind, make_subject(index))
    return [found[kind] for kind in PATTERN_KINDS]


@pytest.mark.parametrize("subject", _first_subject_of_each_kind(), ids=PATTERN_KINDS)
def test_subject_pattern_is_not_a_plain_body(subject):
    """Pretraining bodies are one colour; a subject's body holds a second, clearly different one."""
    for seed in range(3):
        scene = subject.scene("large", "center", "night")
        patterned, mask = _object_mask(scene, seed, pattern=subject.pattern, aspect=subject.aspect)
        plain, plain_mask = _object_mask(scene, seed, aspect=subject.aspect)
        spread = patterned[_erode(mask)].var(axis=0).sum()
        plain_spread = plain[_erode(plain_mask)].var(axis=0).sum()
        assert spread > 3 * plain_spread, (subject.pattern.kind, spread, plain_spread)
        share = np.mean(np.abs(patterned[mask] - COLOURS[subject.pattern.colour]).sum(axis=-1) < 90)
        assert share > 0.08, (subject.pattern.kind, share)  # the pattern colour shows, not just a blend


def test_reference_images_vary_and_reproduce():
    subject = make_subject(2)
    views = reference_images(subject, count=6, seed=0)
    assert len(views) == 6 and all(view.size == (RESOLUTION, RESOLUTION) for view in views)
    assert len({view.tobytes() for view in views}) == 6
    again = reference_images(subject, count=6, seed=0)
    assert all(np.array_equal(_pixels(a), _pixels(b)) for a, b in zip(views, again))
    other = reference_images(subject, count=6, seed=1)
    assert not all(np.array_equal(_pixels(a), _pixels(b)) for a, b in zip(views, other))
    # At least three scenes: background corners (never covered by the object) take >= 3 distinct looks.
    corners = {tuple(_pixels(view)[0, 0] // 16) for view in views}
    assert len(corners) >= 3


def test_prompt_set_is_dreambench_shaped():
    for index in range(NUM_SUBJECTS):
        subject = make_subject(index)
        prompts = prompt_set(subject)
        name = f"sks {subject.object_class}"
        assert len(prompts) == 25 and len(set(prompts)) == 25
        assert all(name in prompt for prompt in prompts)
        recontext, properties = prompts[:20], prompts[20:]
        assert all(not any(f" {colour} " in f" {p} " for colour in COLOURS) for p in recontext)
        changed = [p.split()[1] for p in properties]
        assert all(p == f"a {colour} {name}" for p, colour in zip(properties, changed))
        assert set(changed) <= set(COLOURS) - {subject.colour} and len(set(changed)) == 5
        assert {phrase for phrase in SCENES.values() if any(phrase in p for p in recontext)} == set(SCENES.values())
        # A 16-token text context: start, end, the words, and two extra byte tokens for "sks".
        assert max(len(p.split()) for p in prompts) + 2 + 2 <= 16
    assert prompt_set(make_subject(0), identifier="zwx")[0].startswith("a zwx ball")


def test_instance_and_class_prompts():
    subject = make_subject(1)
    assert instance_prompt(subject) == f"a sks {subject.object_class}"
    assert instance_prompt(subject, "zwx") == f"a zwx {subject.object_class}"
    assert class_prompt(subject) == f"a {subject.object_class}"


def test_write_subject_writes_files_and_refuses_to_overwrite(tmp_path):
    import json

    subject = make_subject(4)
    folder = tmp_path / "subject"
    paths = write_subject(subject, folder, count=4, seed=0)
    assert sorted(p.name for p in paths) == ["prompts.txt", "ref_00.png", "ref_01.png", "ref_02.png",
                                             "ref_03.png", "subject.json"]
    assert all(path.exists() for path in paths)
    with Image.open(folder / "ref_01.png") as saved:
        assert np.array_equal(_pixels(saved.convert("RGB")), _pixels(reference_images(subject, 4, 0)[1]))
    assert (folder / "prompts.txt").read_text().splitlines() == prompt_set(subject)
    attributes = json.loads((folder / "subject.json").read_text())
    assert attributes["object_class"] == subject.object_class and attributes["pattern"]["kind"]
    with pytest.raises(FileExistsError):
        write_subject(subject, folder, count=4)
    lone = tmp_path / "partial"
    lone.mkdir()
    (lone / "prompts.txt").write_text("mine\n")
    with pytest.raises(FileExistsError):
        write_subject(subject, lone)
    assert not (lone / "ref_00.png").exists() and (lone / "prompts.txt").read_text() == "mine\n"
