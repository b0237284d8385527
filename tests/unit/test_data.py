"""Unit tests for rewardbooth.data.images: every image is built in code under tmp_path, no network."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rewardbooth.core.errors import UserError
from rewardbooth.data.images import (
    IMAGE_SUFFIXES,
    check_identifier,
    image_to_tensor,
    load_image,
    load_subject_images,
    make_example_subject,
    remove_identifier,
)

WHITE, BLACK = (255, 255, 255), (0, 0, 0)
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _saved(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def _pixels(image: Image.Image) -> list[tuple[int, int, int]]:
    assert image.mode == "RGB"
    return [image.getpixel((x, 0)) for x in range(image.width)]


def _noise_jpeg_bytes(size: int = 64) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


# --- load_image: one test per PIL mode -------------------------------------------------------------------


def test_image_suffixes_are_lowercase_with_dot():
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"} == IMAGE_SUFFIXES


def test_cmyk_converts_to_rgb(tmp_path):
    image = Image.new("CMYK", (2, 1))
    image.putpixel((0, 0), (0, 0, 0, 0))  # no ink: white
    image.putpixel((1, 0), (0, 255, 255, 0))  # magenta + yellow: red
    loaded = load_image(_saved(image, tmp_path / "cmyk.tif"))
    assert _pixels(loaded) == [WHITE, RED]


def test_rgba_composites_over_white(tmp_path):
    image = Image.new("RGBA", (3, 1))
    image.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent red must vanish into white
    image.putpixel((1, 0), (0, 0, 255, 255))
    image.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black: mid grey
    loaded = load_image(_saved(image, tmp_path / "rgba.png"))
    transparent, opaque, half = _pixels(loaded)
    assert transparent == WHITE
    assert opaque == BLUE
    assert all(abs(c - 127) <= 1 for c in half)


def test_la_composites_over_white(tmp_path):
    image = Image.new("LA", (2, 1))
    image.putpixel((0, 0), (0, 0))
    image.putpixel((1, 0), (0, 255))
    assert _pixels(load_image(_saved(image, tmp_path / "la.png"))) == [WHITE, BLACK]


def test_grey_l_is_replicated(tmp_path):
    image = Image.new("L", (2, 1))
    image.putpixel((0, 0), 100)
    image.putpixel((1, 0), 255)
    assert _pixels(load_image(_saved(image, tmp_path / "l.png"))) == [(100, 100, 100), WHITE]


def test_bilevel_mode_1(tmp_path):
    image = Image.new("1", (2, 1))
    image.putpixel((1, 0), 1)
    assert _pixels(load_image(_saved(image, tmp_path / "bw.png"))) == [BLACK, WHITE]


def _palette_image() -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([*RED, *GREEN])
    image.putpixel((1, 0), 1)
    return image


def test_palette_without_transparency(tmp_path):
    assert _pixels(load_image(_saved(_palette_image(), tmp_path / "p.png"))) == [RED, GREEN]


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_with_transparency_composites_over_white(tmp_path, suffix):
    path = _saved(_palette_image(), tmp_path / f"p_trns{suffix}", transparency=0)
    assert _pixels(load_image(path)) == [WHITE, GREEN]


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    image = Image.fromarray(np.array([[0, 32768, 65535, 1000]], dtype=np.uint16))
    path = _saved(image, tmp_path / "deep.png")
    with Image.open(path) as raw:
        assert raw.mode == "I;16"  # the mode this test is about
    values = [p[0] for p in _pixels(load_image(path))]
    # PIL's own convert('L') would give [0, 255, 255, 255] here.
    assert values == [0, 128, 255, 4]


def test_16bit_big_endian_tiff(tmp_path):
    image = Image.fromarray(np.array([[0, 32768, 65535]], dtype=">u2"))
    path = _saved(image, tmp_path / "deep_be.tif")
    with Image.open(path) as raw:
        assert raw.mode == "I;16B"
    assert [p[0] for p in _pixels(load_image(path))] == [0, 128, 255]


def test_32bit_integer_tiff_scaled_by_its_depth(tmp_path):
    image = Image.fromarray(np.array([[0, 2**30, 2**31 - 1]], dtype=np.int32))
    path = _saved(image, tmp_path / "int32.tif")
    with Image.open(path) as raw:
        assert raw.mode == "I"
    assert [p[0] for p in _pixels(load_image(path))] == [0, 128, 255]


def test_16bit_pgm_opens_as_mode_i_and_scales_by_16_bits(tmp_path):
    image = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    path = _saved(image, tmp_path / "deep.pgm")
    with Image.open(path) as raw:
        assert raw.mode == "I"
    assert [p[0] for p in _pixels(load_image(path))] == [0, 128, 255]


@pytest.mark.parametrize(("suffix", "mode"), [(".png", "I;16"), (".pgm", "I"), (".tif", "I;16")])
def test_dark_16bit_image_stays_dark(tmp_path, suffix, mode):
    # All values fit in 8 bits, yet the file says 16: 200 of 65535 is near black, not 200 of 255.
    image = Image.fromarray(np.array([[0, 200, 255]], dtype=np.uint16))
    path = _saved(image, tmp_path / f"dark{suffix}")
    with Image.open(path) as raw:
        assert raw.mode == mode
    assert [p[0] for p in _pixels(load_image(path))] == [0, 1, 1]


def test_32bit_tiff_with_small_values_is_scaled_by_32_bits(tmp_path):
    # The file says 32 bits, so even 65535 is near black; guessing from the data would say 16 bits.
    image = Image.fromarray(np.array([[0, 255, 65535]], dtype=np.int32))
    assert [p[0] for p in _pixels(load_image(_saved(image, tmp_path / "small32.tif")))] == [0, 0, 0]


def test_in_memory_mode_i_guesses_depth_from_data():
    # No file to declare a depth: 8-bit data stays as is, 16-bit data is scaled by 65535.
    eight = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32))
    sixteen = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32))
    assert eight.mode == sixteen.mode == "I"
    assert [round(float(v) * 255) for v in image_to_tensor(eight, 3, center_crop=False)[0, 0]] == [
        0,
        100,
        255,
    ]
    assert [round(float(v) * 255) for v in image_to_tensor(sixteen, 3, center_crop=False)[0, 0]] == [
        0,
        128,
        255,
    ]


def test_float_in_unit_range_is_clipped(tmp_path):
    image = Image.fromarray(np.array([[0.0, 0.5, 1.0, -0.25]], dtype=np.float32))
    assert image.mode == "F"
    values = [p[0] for p in _pixels(load_image(_saved(image, tmp_path / "f.tif")))]
    assert values == [0, 128, 255, 0]


def test_float_above_one_is_scaled_like_integers(tmp_path):
    image = Image.fromarray(np.array([[0.0, 32768.0, 65535.0]], dtype=np.float32))
    assert [p[0] for p in _pixels(load_image(_saved(image, tmp_path / "f16.tif")))] == [0, 128, 255]


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (128, 128, 128))
    image.paste(RED, (0, 0, 8, 8))  # mark the stored top-left corner
    exif = image.getexif()
    exif[0x0112] = 6  # camera held rotated: display needs a 90 degree clockwise turn
    path = _saved(image, tmp_path / "rotated.jpg", exif=exif, quality=95)
    loaded = load_image(path)
    assert loaded.size == (20, 40)
    # Turning clockwise moves the top-left corner to the top-right.
    r, g, b = loaded.getpixel((loaded.width - 3, 2))
    assert r > 200 and g < 60 and b < 60
    r, g, b = loaded.getpixel((2, 2))
    assert abs(r - 128) < 20 and abs(g - 128) < 20


def test_load_image_raises_pil_error_on_garbage(tmp_path):
    path = tmp_path / "garbage.jpg"
    path.write_bytes(b"not an image at all")
    with pytest.raises(OSError):
        load_image(path)


# --- image_to_tensor ---------------------------------------------------------------------------------------


def _assert_unit_square(tensor: torch.Tensor, resolution: int) -> None:
    assert tensor.shape == (3, resolution, resolution)
    assert tensor.dtype == torch.float32
    assert float(tensor.min()) >= 0.0 and float(tensor.max()) <= 1.0


def test_tiny_image_is_upscaled():
    image = Image.new("RGB", (7, 5), (0, 0, 255))
    tensor = image_to_tensor(image, 32)
    _assert_unit_square(tensor, 32)
    assert torch.allclose(tensor[2], torch.ones(32, 32)) and float(tensor[:2].max()) == 0.0


def test_large_image_is_resized_and_center_cropped():
    image = Image.new("RGB", (4000, 3000), RED)
    image.paste(GREEN, (2000, 0, 4000, 3000))  # right half green
    tensor = image_to_tensor(image, 64)
    _assert_unit_square(tensor, 64)
    assert float(tensor[0, :, 2].min()) > 0.95 and float(tensor[1, :, 2].max()) < 0.05
    assert float(tensor[1, :, -3].min()) > 0.95 and float(tensor[0, :, -3].max()) < 0.05


def _centre_band_image() -> Image.Image:
    """300x100: a red centre band a bit wider than the centre square, blue on both sides."""
    image = Image.new("RGB", (300, 100), BLUE)
    image.paste(RED, (90, 0, 210, 100))
    return image


def test_center_crop_keeps_the_middle():
    tensor = image_to_tensor(_centre_band_image(), 32, center_crop=True)
    _assert_unit_square(tensor, 32)
    assert float(tensor[0].min()) > 0.95  # red everywhere: the blue borders were cropped away
    assert float(tensor[2].max()) < 0.05


def test_no_center_crop_squashes_the_whole_image():
    tensor = image_to_tensor(_centre_band_image(), 30, center_crop=False)
    _assert_unit_square(tensor, 30)
    for column in (0, 29):
        assert float(tensor[2, :, column].min()) > 0.95  # the blue borders survive
    assert float(tensor[0, :, 15].min()) > 0.95


def test_non_rgb_input_is_converted():
    tensor = image_to_tensor(Image.new("L", (10, 10), 255), 8)
    _assert_unit_square(tensor, 8)
    assert torch.allclose(tensor, torch.ones(3, 8, 8))


def test_exact_pixel_values_map_to_unit_range():
    image = Image.new("RGB", (4, 4), (0, 51, 255))
    tensor = image_to_tensor(image, 4)
    assert torch.allclose(tensor[:, 0, 0], torch.tensor([0.0, 0.2, 1.0]))


def test_bad_resolution_is_rejected():
    with pytest.raises(ValueError, match="resolution"):
        image_to_tensor(Image.new("RGB", (4, 4)), 0)


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
