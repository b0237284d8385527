"""The image preprocessing of the DreamBench backbones, as batched tensor maths (any device, grad-safe).

Images come in as the project's convention, float (B, 3, H, W) in [0, 1]; what comes out is what the
backbone was trained to see. Both pipelines are "resize the short side (bicubic), center-crop, normalise":

- DINO, official evaluation (facebookresearch/dino, eval_knn.py / eval_linear.py):
  ``Resize(256, interpolation=3)``, ``CenterCrop(224)``, ImageNet mean/std.
- CLIP (openai/CLIP, clip.py ``_transform``): ``Resize(224, BICUBIC)``, ``CenterCrop(224)``, CLIP mean/std.

Where these run torchvision on PIL images we run ``F.interpolate(mode="bicubic", antialias=True)``, whose
antialiased kernel is PIL's (Keys cubic with a = -0.5, support widened by the downscale factor). What differs:
PIL resamples 8-bit pixels and rounds after each pass, we stay in float, so results differ by up to about one
grey level (checked against PIL in tests/unit/test_reward_backbones.py); like PIL we resample width then height and
clip bicubic overshoot to [0, 1] after each pass. Sizes are parameters so that tiny test backbones (image_size 32) get the same
pipeline scaled down: DINO resizes to round(crop * 256 / 224) before cropping.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_short_side(images: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision ``Resize(size)`` semantics: the short side becomes ``size``, the long side keeps the aspect
    ratio, truncated to an integer as torchvision does.

    Shape: (B, C, H, W) -> (B, C, H', W') with min(H', W') == size.
    """
    height, width = images.shape[-2:]
    short, long = min(height, width), max(height, width)
    new_long = int(size * long / short)
    new_size = (size, new_long) if height <= width else (new_long, size)
    # PIL resamples width first, then height, clipping in between; doing the same keeps us within one grey
    # level of it where a single 2-D pass would differ by several at sharp edges.
    resized = _resample(images, (height, new_size[1]))
    return _resample(resized, new_size)


def _resample(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == size:
        return images  # PIL skips a pass that would not change the size, so must we
    resized = F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)
    return resized.clamp(0.0, 1.0)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision ``CenterCrop(size)`` on an image at least ``size`` on each side (offsets rounded likewise).

    Shape: (B, C, H, W) -> (B, C, size, size).
    """
    height, width = images.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"cannot center-crop {size}x{size} from a {height}x{width} image")
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return images[..., top:top + size, left:left + size]


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Per-channel (x - mean) / std. Shape: (B, 3, H, W) -> (B, 3, H, W)."""
    mean_tensor = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_tensor = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean_tensor) / std_tensor


def dino_preprocess(images: torch.Tensor, crop_size: int = 224, resize_size: int | None = None) -> torch.Tensor:
    """DINO's evaluation transform: resize the short side to 256, center-crop 224, ImageNet normalisation.

    ``resize_size`` defaults to round(crop_size * 256 / 224), the official ratio, for backbones of other sizes.
    Shape: (B, 3, H, W) float in [0, 1] -> (B, 3, crop_size, crop_size) float32.
    """
    resize_size = round(crop_size * 256 / 224) if resize_size is None else resize_size
    resized = resize_short_side(images.float(), resize_size)
    return normalize(center_crop(resized, crop_size), IMAGENET_MEAN, IMAGENET_STD)


def clip_preprocess(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """CLIP's transform: resize the short side to ``size``, center-crop ``size``, CLIP normalisation.

    Shape: (B, 3, H, W) float in [0, 1] -> (B, 3, size, size) float32.
    """
    resized = resize_short_side(images.float(), size)
    return normalize(center_crop(resized, size), CLIP_MEAN, CLIP_STD)
