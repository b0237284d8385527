"""Subject photos in, tensors out: image loading, resizing, prompt identifiers and a synthetic demo subject.

This is the I/O edge for images: PIL appears here and nowhere downstream. Everything leaving this module as a
tensor is float32 in [0, 1], CHW.
"""

from __future__ import annotations

import logging
import random
import re
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

from rewardbooth.core.errors import UserError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)

# What PIL raises for a file it cannot decode; struct.error and SyntaxError escape from some plugins on
# malformed headers, and a decompression bomb is refused rather than decoded.
_DECODE_ERRORS = (OSError, ValueError, EOFError, SyntaxError, struct.error, Image.DecompressionBombError)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_FIX_HINT = "add 3-6 .jpg/.png photos of the subject"
_FEW_PHOTOS = 3  # DreamBooth's 3-6 views of the subject
_MAX_LISTED = 8
# Reduce by an integer factor first while the image is over 3x the target: quality close to a direct bicubic
# resize at about half the time for a 6000 px photo (65 ms instead of 125 ms to 512 px on one CPU core).
_REDUCING_GAP = 3.0
_SUPERSAMPLE = 4


def load_image(path: str | Path) -> Image.Image:
    """Open any image file as an RGB PIL image, upright and composited over white.

    EXIF orientation is applied. Alpha (RGBA, LA, PA, P or L/RGB with a transparency key) is composited over
    white. 16- and 32-bit integer images are scaled to 8 bit by their bit depth (65535 -> 255), not clipped;
    float images are clipped to [0, 1] when their maximum is at most 1, else scaled like integer images.

    Raises:
        OSError, ValueError: from PIL, when the file cannot be read or decoded; callers decide what to do.
    """
    with Image.open(path) as opened:
        # Decode everything now so a truncated file fails here, not later in the middle of training.
        opened.load()
        declared_bits = _declared_bit_depth(opened)
        upright = ImageOps.exif_transpose(opened)
    return _to_rgb(upright, declared_bits)


def within(folder: Path, name: object) -> Path | None:
    """`folder / name` resolved, if it stays inside `folder` (through any symlink); None for an absolute or
    `../` name, or a link leading out: a folder from elsewhere must not make a reader open other files."""
    if not isinstance(name, str):
        return None
    root = Path(folder).resolve()
    path = (root / name).resolve()
    return path if path != root and path.is_relative_to(root) else None


def try_load_image(path: Path, warn: bool = True) -> Image.Image | None:
    """:func:`load_image`, or None (with a warning) for a file that cannot be read or decoded."""
    try:
        return load_image(path)
    except _DECODE_ERRORS as err:
        if warn:
                logger.warning("skipping '%s': cannot decode it as an image (%s: %s)", path, type(err).__name__,
                           _one_line(str(err)))
        return None


def load_subject_images(folder: str | Path, min_images: int = 1) -> list[tuple[Path, Image.Image]]:
    """Load every readable image of a subject folder (non-recursive, sorted by name, hidden files ignored).

    Files with an image suffix that fail to decode are skipped with a warning; files with other suffixes
    (notes, captions) are ignored silently. Images come back converted by :func:`load_image`.

    Raises:
        UserError: the folder is missing or not a directory, holds no image file, or fewer than
            ``min_images`` of its images could be read.
    """
    folder = Path(folder)
    if not folder.exists():
        raise UserError(
            f"subject folder '{folder}' does not exist; set data.instance_dir to a folder of "
            "3-6 .jpg/.png photos of the subject"
        )
    if not folder.is_dir():
        raise UserError(
            f"subject folder '{folder}' is a file, not a folder; set data.instance_dir to the "
            "folder that holds the photos"
        )
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    if not entries:
        raise UserError(f"subject folder '{folder}' is empty; {_FIX_HINT}")
    named_like_images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
    candidates = [p for p in named_like_images if p.is_file()]
    for path in sorted(set(named_like_images) - set(candidates)):
        # Named like a photo but not one: say so, rather than train on fewer photos than the user sees.
        what = "a broken link (its target does not exist)" if path.is_symlink() and not path.exists() else (
            "a folder" if path.is_dir() else "not a regular file")
        logger.warning("skipping '%s': it is %s, not an image file", path, what)
    if not candidates:
        raise UserError(
            f"subject folder '{folder}' has no image file (found: {_listing(entries, {})}); {_FIX_HINT}"
        )

    images: list[tuple[Path, Image.Image]] = []
    problems: dict[Path, str] = {}
    for path in candidates:
        try:
            images.append((path, load_image(path)))
        except _DECODE_ERRORS as err:
            problems[path] = _short_reason(err)
            logger.warning(
                "skipping '%s': cannot decode it as an image (%s: %s)",
                path,
                type(err).__name__,
                _one_line(str(err)),
            )
    if not images:
        raise UserError(
            f"subject folder '{folder}' has no readable image (found: "
            f"{_listing(entries, problems)}); {_FIX_HINT}"
        )
    if len(images) < min_images:
        raise UserError(
            f"subject folder '{folder}' has {len(images)} readable image(s) but at least "
            f"{min_images} are needed (found: {_listing(entries, problems)}); {_FIX_HINT}"
        )
    if len(images) < _FEW_PHOTOS:
        logger.warning("subject folder '%s' has only %d usable photo(s): with fewer than %d views the model "
                       "tends to copy them; %s", folder, len(images), _FEW_PHOTOS, _FIX_HINT)
    return images


def image_to_tensor(image: Image.Image, resolution: int, center_crop: bool = True) -> torch.Tensor:
    """Resize a PIL image to a square float tensor in [0, 1].

    ``center_crop=True`` resizes so the short side equals ``resolution`` and keeps the centre square;
    ``center_crop=False`` squashes the whole image to ``resolution x resolution``. Bicubic either way; tiny
    images are upscaled. A non-RGB image is first converted as :func:`load_image` would.

    Shape:
        output: (3, resolution, resolution), float32
    """
    if resolution < 1:
        raise ValueError(f"resolution must be a positive number of pixels, got {resolution}")
    rgb = image if image.mode == "RGB" else _to_rgb(image)
    width, height = rgb.size
    box = None
    if center_crop:
        # Cropping the centre square of the source and resizing it in one step is the same as resizing the
        # short side then cropping, without a second resample or an off-by-one from rounding.
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        box = (left, top, left + side, top + side)
    resized = rgb.resize(
        (resolution, resolution), Image.Resampling.BICUBIC, box=box, reducing_gap=_REDUCING_GAP
    )
    return pil_to_tensor(resized)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as it is (no resize) in the project's convention; a non-RGB image is first converted as
    :func:`load_image` would.

    Shape:
        output: (3, H, W), float32 in [0, 1]
    """
    rgb = image if image.mode == "RGB" else _to_rgb(image)
    pixels = torch.from_numpy(np.array(rgb, dtype=np.uint8))  # (H, W, 3)
    return pixels.permute(2, 0, 1).contiguous().to(torch.float32).div_(255.0)


def check_identifier(prompt: str, identifier: str) -> None:
    """Raise UserError unless ``identifier`` is a whole word of ``prompt`` (case-sensitive)."""
    if not identifier.strip():
        raise UserError("data.identifier is empty; set it to a rare token such as 'sks'")
    if not names_identifier(prompt, identifier):
        example = f"a photo of {identifier} dog"
        raise UserError(
            f"instance prompt '{_one_line(prompt)}' does not contain the identifier '{identifier}'; "
            f"write it like '{example}' (or set data.identifier)"
        )


def names_identifier(prompt: str, identifier: str) -> bool:
    """Whether ``identifier`` is a whole word of ``prompt`` (case-sensitive)."""
    return _identifier_pattern(identifier).search(prompt) is not None


def remove_identifier(prompt: str, identifier: str) -> str:
    """Drop the identifier word and collapse whitespace, as DreamBench's CLIP-T protocol scores text.

    'a sks dog on the beach' -> 'a dog on the beach'.
    """
    without = _identifier_pattern(identifier).sub(" ", prompt)
    collapsed = " ".join(without.split())
    # Removing a word right before punctuation would otherwise leave 'a photo of , a dog'.
    return re.sub(r" ([,.;:!?])", r"\1", collapsed)


def make_example_subject(
    folder: str | Path, num_images: int = 4, size: int = 64, seed: int = 0
) -> list[Path]:
    """Write PNG photos of one synthetic subject to ``folder`` and return their paths.

    The subject is a disc, orange above and teal below, crossed by a navy stripe: distinctive enough for a
    reward model to tell apart, simple enough to draw. Each photo places it at a different position and
    scale over a different two-band background with a little clutter. Deterministic from ``seed``, so the
    demo and the tests never need a download.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for index in range(num_images):
        path = folder / f"subject_{index:02d}.png"
        _draw_subject_photo(rng, size).save(path, format="PNG")
        paths.append(path)
    return paths


def _declared_bit_depth(image: Image.Image) -> int | None:
    """Bits per sample the file declares for a 32-bit container mode ('I'), or None if it does not say."""
    if image.mode != "I":
        return None
    # PNG and PGM hold at most 16 bits per sample, but PIL opens 16-bit PGM (and, before Pillow 10, 16-bit
    # PNG) as 'I'; PGM data is always rescaled to 0..65535 on load.
    if image.format in ("PNG", "PPM"):
        return 16
    bits = getattr(image, "tag_v2", {}).get(258)  # TIFF BitsPerSample
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return int(bits) if bits else None


def _to_rgb(image: Image.Image, declared_bits: int | None = None) -> Image.Image:
    """Convert any PIL mode to RGB: alpha over white, high bit depth scaled down, CMYK/L/1/P converted."""
    if image.mode.startswith("I") or image.mode == "F":
        return _high_depth_to_l(image, declared_bits).convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_l(image: Image.Image, declared_bits: int | None) -> Image.Image:
    """Scale a 16/32-bit integer or float single-channel image to 8-bit 'L' by its bit depth."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(values.max(initial=0.0))
    if image.mode == "F" and peak <= 1.0:
        unit = np.clip(values, 0.0, 1.0)
    else:
        if image.mode.startswith("I;16"):
            bits = 16
        else:
            # Without a declaration, the smallest usual depth that holds the data is the best guess; PIL's own
            # convert('L') would clip everything above 255 to white instead.
            bits = declared_bits or (8 if peak <= 255 else 16 if peak <= 65535 else 32)
        # Mode 'I' is signed 32-bit, so a 32-bit sample tops out at 2**31 - 1.
        full_scale = 2**31 - 1 if bits >= 32 else 2**bits - 1
        unit = np.clip(values / full_scale, 0.0, 1.0)
    return Image.fromarray(np.round(unit * 255.0).astype(np.uint8))


def _identifier_pattern(identifier: str) -> re.Pattern[str]:
    # Lookarounds instead of \b so identifiers with punctuation, such as '<sks>', still match as words.
    return re.compile(rf"(?<!\w){re.escape(identifier)}(?!\w)")


def _short_reason(err: BaseException) -> str:
    if isinstance(err, Image.DecompressionBombError):
        return "too large"
    if "truncated" in str(err):
        return "truncated"
    return "corrupt"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _listing(entries: list[Path], problems: dict[Path, str]) -> str:
    """'a.txt, b.jpg [corrupt], ...' for an error message, shortened past a few entries."""
    names = [f"{p.name} [{problems[p]}]" if p in problems else p.name for p in entries]
    shown = ", ".join(names[:_MAX_LISTED])
    hidden = len(names) - _MAX_LISTED
    return f"{shown}, ... (+{hidden} more)" if hidden > 0 else shown


def _draw_subject_photo(rng: random.Random, size: int) -> Image.Image:
    """One photo of the synthetic subject, drawn at 4x and downsampled so edges are anti-aliased."""
    canvas = size * _SUPERSAMPLE
    sky = tuple(rng.randint(120, 235) for _ in range(3))
    ground = tuple(rng.randint(40, 160) for _ in range(3))
    image = Image.new("RGB", (canvas, canvas), sky)
    draw = ImageDraw.Draw(image)
    horizon = int(canvas * rng.uniform(0.45, 0.8))
    draw.rectangle((0, horizon, canvas, canvas), fill=ground)
    for _ in range(rng.randint(1, 3)):
        x0, y0 = rng.uniform(0, canvas), rng.uniform(0, canvas)
        w, h = rng.uniform(0.05, 0.2) * canvas, rng.uniform(0.05, 0.2) * canvas
        grey = rng.randint(70, 200)
        draw.rectangle((x0, y0, x0 + w, y0 + h), fill=(grey, grey, grey))

    radius = rng.uniform(0.16, 0.32) * canvas
    cx = rng.uniform(radius, canvas - radius)
    cy = rng.uniform(radius, canvas - radius)
    disc = (cx - radius, cy - radius, cx + radius, cy + radius)
    draw.pieslice(disc, 180, 360, fill=(235, 120, 30))  # top half
    draw.pieslice(disc, 0, 180, fill=(20, 140, 150))  # bottom half
    half_stripe = radius / 7
    # End the stripe where it meets the circle so it never pokes out of the disc.
    chord = (radius**2 - half_stripe**2) ** 0.5
    draw.polygon(
        [
            (cx - chord, cy - half_stripe),
            (cx + chord, cy - half_stripe),
            (cx + chord, cy + half_stripe),
            (cx - chord, cy + half_stripe),
        ],
        fill=(25, 30, 80),
    )
    return image.resize((size, size), Image.Resampling.LANCZOS)
