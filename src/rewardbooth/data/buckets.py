"""Aspect-ratio buckets (`data.aspect_buckets`): each photo is trained at the size of about resolution^2 pixels
whose shape is nearest its own, instead of its centre square.

The sizes are kohya sd-scripts' (`make_bucket_resolutions`, `--enable_bucket`): for every width w that is a
multiple of the step, the tallest height h, also a multiple, with w * h <= resolution^2, plus the square; kept
while the long side is at most 2x the short one (wider framings lose too much of the subject at this area).
The step is the family's size multiple (`Family.resolution_multiple`: FLUX and SD3 16 px, the VAE's 8 times
the 2x2 patches; SD 1.x 64 px, 8 times the UNet's three downsamplings, kohya's default `bucket_reso_steps`).

A photo goes to the bucket whose aspect ratio is nearest in log scale (a 2:3 portrait and a 3:2 landscape are
equally far from square), is resized to cover it and centre-cropped by the little that is left over (at most
half a step per side), or, with data.center_crop=false, squashed into it.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import torch
from PIL import Image

from rewardbooth.core.errors import UserError
from rewardbooth.data.images import _REDUCING_GAP, _to_rgb, pil_to_tensor

MAX_ASPECT = 2.0  # long side / short side of the widest bucket made
_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


class Bucket(NamedTuple):
    """One training size in pixels, named as 'WIDTHxHEIGHT' (448x576 is a portrait)."""

    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def log_aspect(self) -> float:
        return math.log(self.width / self.height)


def make_buckets(resolution: int, step: int) -> list[Bucket]:
    """Every bucket of area at most resolution^2 with sides multiples of `step`, ratio at most MAX_ASPECT,
    sorted by width (the tallest portrait first)."""
    area = resolution * resolution
    sizes = {Bucket(resolution, resolution)}
    for width in range(step, int(resolution * math.sqrt(MAX_ASPECT)) + 1, step):
        height = area // width // step * step
        if height >= step and max(width, height) <= MAX_ASPECT * min(width, height):
            sizes.update({Bucket(width, height), Bucket(height, width)})  # kohya's too: each size both ways
    return sorted(sizes)


def buckets_of(setting: bool | tuple[str, ...], resolution: int, step: int) -> list[Bucket] | None:
    """The run's buckets from data.aspect_buckets: None when off, made when true, else the listed sizes.

    Raises:
        UserError: a listed size is not 'WIDTHxHEIGHT' with both sides positive multiples of `step`.
    """
    if setting is False:
        return None
    if setting is True:
        return make_buckets(resolution, step)
    if not setting:
        raise UserError("data.aspect_buckets is an empty list; list sizes like [512x512, 448x576] or set it to true")
    buckets = []
    for text in setting:
        match = _SIZE.match(str(text))
        if match is None:
            raise UserError(f"bad size {text!r} in data.aspect_buckets: write WIDTHxHEIGHT, e.g. 448x576")
        bucket = Bucket(int(match.group(1)), int(match.group(2)))
        if min(bucket) < step or bucket.width % step or bucket.height % step:
            fixed = Bucket(*(max(step, round(side / step) * step) for side in bucket))
            raise UserError(f"data.aspect_buckets size {bucket} has a side that is not a multiple of {step} (this "
                            f"model's size step); use {fixed}")
        buckets.append(bucket)
    return sorted(set(buckets))


def nearest_bucket(width: int, height: int, buckets: list[Bucket]) -> Bucket:
    """The bucket nearest an image's aspect ratio in log scale (the first of equals)."""
    aspect = math.log(width / height)
    return min(buckets, key=lambda bucket: abs(bucket.log_aspect - aspect))


def fit_to_bucket(image: Image.Image, bucket: Bucket, crop: bool = True) -> torch.Tensor:
    """Resize an image to cover the bucket and centre-crop the rest (`crop`), or squash it into the bucket.

    For a square bucket this is `images.image_to_tensor` at that size, pixel for pixel.

    Shape:
        output: (3, bucket.height, bucket.width), float32 in [0, 1]
    """
    rgb = image if image.mode == "RGB" else _to_rgb(image)
    width, height = rgb.size
    box = None
    if crop:
        # The source region with the bucket's aspect ratio, centred, resized in one step (no second resample).
        if width * bucket.height > height * bucket.width:  # wider than the bucket: keep the full height
            crop_width, crop_height = height * bucket.width / bucket.height, height
        else:
            crop_width, crop_height = width, width * bucket.height / bucket.width
        left, top = (width - crop_width) / 2, (height - crop_height) / 2
        box = (left, top, left + crop_width, top + crop_height)
    resized = rgb.resize((bucket.width, bucket.height), Image.Resampling.BICUBIC, box=box, reducing_gap=_REDUCING_GAP)
    return pil_to_tensor(resized)
