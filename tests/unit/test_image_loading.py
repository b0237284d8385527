"""Unit tests for rewardbooth.data.images' pixel path: load_image (one test per PIL mode) and image_to_tensor.
Every image is built in code under tmp_path, no network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rewardbooth.data.images import IMAGE_SUFFIXES, image_to_tensor, load_image

WHITE, BLACK = (255, 255, 255), (0, 0, 0)
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _saved(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def _pixels(image: Image.Image) -> list[tuple[int, int, int]]:
    assert image.mode == "RGB"
    return [image.getpixel((x, 0)) for x in range(image.width)]


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
