"""Unit tests for rewardbooth.data.images: subject folders, identifiers and the example subject; every image is built
in code under tmp_path, no network. The pixel path (load_image, image_to_tensor): test_image_loading.py."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rewardbooth.core.errors import UserError
from rewardbooth.data.images import (
    check_identifier,
    load_image,
    load_subject_images,
    make_example_subject,
    remove_identifier,
)

RED = (255, 0, 0)


def _noise_jpeg_bytes(size: int = 64) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


# --- load_subject_images -----------------------------------------------------------------------------------


def _write_good_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (16, 12), (40 * i, 100, 200)).save(folder / name)


def _user_error(folder_arg, min_images: int = 1) -> str:
    with pytest.raises(UserError) as info:
        load_subject_images(folder_arg, min_images=min_images)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_folder(tmp_path):
    message = _user_error(tmp_path / "nowhere")
    assert "nowhere" in message and "does not exist" in message


def test_file_instead_of_folder(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(_noise_jpeg_bytes())
    message = _user_error(path)
    assert "photo.jpg" in message and "not a folder" in message


def test_empty_folder(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    message = _user_error(folder)
    assert "empty" in message and "add 3-6" in message


def test_folder_with_only_text(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    message = _user_error(folder)
    assert "texts" in message and "no image file" in message and "notes.txt" in message


def test_folder_whose_only_jpeg_is_garbage(tmp_path, caplog):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "b.jpg").write_bytes(b"\x00garbage bytes, not a jpeg")
    (folder / "a.txt").write_text("caption")
    with caplog.at_level(logging.WARNING, logger="rewardbooth.data.images"):
        message = _user_error(folder)
    assert "bad" in message and "no readable image" in message
    assert "a.txt, b.jpg [corrupt]" in message
    assert any("b.jpg" in r.getMessage() for r in caplog.records)


def test_mixed_folder_skips_broken_files_with_warnings(tmp_path, caplog):
    folder = tmp_path / "subject"
    _write_good_images(folder, ["c.png", "a.jpg", "b.webp"])
    good_png = io.BytesIO()
    Image.new("RGB", (32, 32), RED).save(good_png, format="PNG")
    (folder / "corrupt.png").write_bytes(good_png.getvalue()[:40] + b"\xff" * 200)
    jpeg = _noise_jpeg_bytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "notes.txt").write_text("not a photo")
    (folder / ".hidden.png").write_bytes(b"hidden and broken")
    (folder / "._a.jpg").write_bytes(b"macOS resource fork")

    with caplog.at_level(logging.WARNING, logger="rewardbooth.data.images"):
        images = load_subject_images(folder)

    assert [p.name for p, _ in images] == ["a.jpg", "b.webp", "c.png"]
    assert all(img.mode == "RGB" and img.size == (16, 12) for _, img in images)
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "corrupt.png" in warned and "truncated.jpg" in warned
    assert "truncated" in warned.replace("truncated.jpg", "")  # the reason, not just the name
    assert "notes.txt" not in warned and "hidden" not in warned and "._a.jpg" not in warned


def test_uppercase_suffix_is_an_image(tmp_path):
    folder = tmp_path / "upper"
    _write_good_images(folder, ["A.JPG"])
    assert [p.name for p, _ in load_subject_images(folder)] == ["A.JPG"]


def test_min_images_enforced(tmp_path):
    folder = tmp_path / "two"
    _write_good_images(folder, ["a.png", "b.png"])
    assert len(load_subject_images(folder, min_images=2)) == 2
    message = _user_error(folder, min_images=3)
    assert "2 readable" in message and "at least 3" in message


# --- identifiers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["a sks dog", "sks", "a photo of sks, on the beach", "sks dog"])
def test_check_identifier_accepts_whole_word(prompt):
    check_identifier(prompt, "sks")


@pytest.mark.parametrize("prompt", ["asksdog", "a photo of a dog", "a SKS dog", "a sks_dog", "a sksdog"])
def test_check_identifier_rejects(prompt):
    with pytest.raises(UserError) as info:
        check_identifier(prompt, "sks")
    assert "\n" not in str(info.value)


def test_check_identifier_message():
    with pytest.raises(UserError) as info:
        check_identifier("a photo of a dog", "sks")
    assert str(info.value) == (
        "instance prompt 'a photo of a dog' does not contain the identifier 'sks'; "
        "write it like 'a photo of sks dog' (or set data.identifier)"
    )


def test_check_identifier_with_punctuation_token():
    check_identifier("a photo of <sks> dog", "<sks>")
    with pytest.raises(UserError):
        check_identifier("a photo of sks dog", "<sks>")


def test_check_identifier_rejects_empty_identifier():
    with pytest.raises(UserError, match="data.identifier"):
        check_identifier("a photo of dog", "  ")


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a sks dog on the beach", "a dog on the beach"),
        ("sks dog", "dog"),
        ("a  photo of   sks   dog ", "a photo of dog"),
        ("a photo of sks, a dog", "a photo of, a dog"),
        ("asksdog sks", "asksdog"),  # only the whole word goes
        ("a photo of a dog", "a photo of a dog"),
    ],
)
def test_remove_identifier(prompt, expected):
    assert remove_identifier(prompt, "sks") == expected


# --- make_example_subject ----------------------------------------------------------------------------------


def _arrays(paths: list[Path]) -> list[np.ndarray]:
    return [np.asarray(load_image(p), dtype=np.int16) for p in paths]


def test_example_subject_count_size_and_folder_creation(tmp_path):
    folder = tmp_path / "new" / "subject"
    paths = make_example_subject(folder, num_images=5, size=48)
    assert len(paths) == 5 and all(p.parent == folder and p.suffix == ".png" for p in paths)
    assert [p.name for p, _ in load_subject_images(folder)] == [p.name for p in paths]
    assert all(a.shape == (48, 48, 3) for a in _arrays(paths))


def test_example_subject_is_deterministic(tmp_path):
    first = make_example_subject(tmp_path / "a", seed=3)
    again = make_example_subject(tmp_path / "b", seed=3)
    other = make_example_subject(tmp_path / "c", seed=4)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert all(not np.array_equal(x, y) for x, y in zip(_arrays(first), _arrays(other)))


def test_example_subject_photos_differ_but_share_the_subject(tmp_path):
    arrays = _arrays(make_example_subject(tmp_path, num_images=4, size=64, seed=0))
    for i in range(len(arrays)):
        for j in range(i + 1, len(arrays)):
            assert np.abs(arrays[i] - arrays[j]).mean() > 5
    orange = np.array([235, 120, 30])
    teal = np.array([20, 140, 150])
    for array in arrays:
        # Every photo shows both halves of the disc in their exact colours.
        assert (np.abs(array - orange).max(axis=-1) <= 3).sum() > 20
        assert (np.abs(array - teal).max(axis=-1) <= 3).sum() > 20


def test_example_subject_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        make_example_subject(tmp_path, num_images=0)
    with pytest.raises(ValueError):
        make_example_subject(tmp_path, size=4)


def test_entries_named_like_photos_that_are_not_are_reported(tmp_path, caplog):
    folder = tmp_path / "subject"
    _write_good_images(folder, ["a.png", "b.png", "c.png"])
    (folder / "x.png").mkdir()
    (folder / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    with caplog.at_level(logging.WARNING, logger="rewardbooth.data.images"):
        images = load_subject_images(folder)
    assert [p.name for p, _ in images] == ["a.png", "b.png", "c.png"]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "x.png': it is a folder" in warned, warned
    assert "gone.jpg': it is a broken link" in warned, warned


def test_fewer_than_three_photos_are_used_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "subject"
    _write_good_images(folder, ["only.png"])
    with caplog.at_level(logging.WARNING, logger="rewardbooth.data.images"):
        assert len(load_subject_images(folder)) == 1
    assert "only 1 usable photo" in caplog.text
    _write_good_images(folder, ["two.png", "three.png"])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rewardbooth.data.images"):
        load_subject_images(folder)
    assert "usable photo" not in caplog.text


def test_photos_far_below_the_training_resolution_are_reported(tmp_path, caplog):
    from rewardbooth.training.subjects import warn_if_small

    photos = [(tmp_path / "tiny.png", Image.new("RGB", (1, 1))), (tmp_path / "small.png", Image.new("RGB", (8, 8))),
              (tmp_path / "fine.png", Image.new("RGB", (300, 400)))]
    with caplog.at_level(logging.WARNING, logger="rewardbooth.training.setup"):
        warn_if_small(photos, 512)
    assert "2 of 3 photos are far below data.resolution=512" in caplog.text and "1x1 px, upscaled 512x" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rewardbooth.training.setup"):
        warn_if_small(photos[2:], 512)
    assert caplog.text == ""


def test_resolution_far_above_the_model_size_is_reported(caplog):
    from rewardbooth.core.config import ModelConfig
    from rewardbooth.models import load_model
    from rewardbooth.models.parts import check_resolution

    parts = load_model(ModelConfig("tiny"))  # drawn at 64 px
    with caplog.at_level(logging.WARNING, logger="rewardbooth.training.setup"):
        check_resolution(128, parts)
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING, logger="rewardbooth.training.setup"):
        check_resolution(512, parts)
    assert "data.resolution=512 is 8x the 64 px this model was trained at" in caplog.text
