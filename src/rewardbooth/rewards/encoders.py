"""Frozen image encoders a feature critic reads (`critic.name=feature`, `critic.encoder=NAME`).

An encoder maps images (B, 3, H, W) in [0, 1] to unit features (B, D), differentiably in the images and with
its own weights frozen. What a critic can carry of an image reward is bounded by what its encoder knows
(docs/critic.md): on the toy world a head on features that already separate subject identities followed the
identity reward's gradient at cos ~0.5, a head on generic features at 0.07-0.17. So the choice is the user's,
by what the reward measures:

- `dinov2` (default `facebook/dinov2-small`), `dino` (`facebook/dino-vits16`): instance identity (DreamBench's
  DINO); the CLS token of the final layer.
- `clip` (`openai/clip-vit-base-patch32`), `siglip` (`google/siglip-base-patch16-224`): semantic content and
  what text describes; the projected (CLIP) or pooled (SigLIP) image embedding.
- `toy_encoder`: the toy world's third identity network, trained on subjects neither toy judge saw
  (subjects 30,000+, seed 2): never the reward's network nor the held-out judge's (a test checks).

`critic.encoder_model` replaces the default checkpoint with a local folder (saved with `save_pretrained`)
or a hub id, loaded with the class's real `from_pretrained`; a face-embedding network is a user encoder
given as `pkg.mod:factory` (called as `factory(device, model)`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from rewardbooth.core.registry import Registry
from rewardbooth.rewards.backbones import ClipFeatures, DinoFeatures, _side, load_backbone
from rewardbooth.rewards.preprocess import dino_preprocess

encoders = Registry("critic encoder")

DEFAULT_DINOV2 = "facebook/dinov2-small"
DEFAULT_SIGLIP = "google/siglip-base-patch16-224"


class ImageEncoder(Protocol):
    """Shape: images (B, 3, H, W) in [0, 1] -> (B, dim) float32, unit length; frozen, differentiable in the
    images."""

    dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


class _Wrapped:
    """An encoder from a features function and its width (the width read once from a probe image)."""

    def __init__(self, features: Callable[[torch.Tensor], torch.Tensor], device: torch.device, side: int):
        self.features = features
        with torch.no_grad():
            self.dim = int(features(torch.zeros(1, 3, side, side, device=device)).shape[-1])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


@encoders.register("dino")
def dino_encoder(device: torch.device, model: str | None = None) -> ImageEncoder:
    from rewardbooth.rewards.backbones import DEFAULT_DINO

    features = DinoFeatures(model or DEFAULT_DINO, device, reward="critic encoder dino")
    return _Wrapped(features, device, features.crop_size)


@encoders.register("dinov2")
def dinov2_encoder(device: torch.device, model: str | None = None) -> ImageEncoder:
    from transformers import Dinov2Model

    network = load_backbone(Dinov2Model, model or DEFAULT_DINOV2, "critic encoder dinov2", device, "float32")
    # config.image_size is the pretraining crop (518); DINOv2's evaluation transform is DINO's (resize 256,
    # centre-crop 224, ImageNet statistics), and its position embeddings are interpolated to any size.
    crop = min(224, _side(network.config.image_size))

    def features(images: torch.Tensor) -> torch.Tensor:
        hidden = network(pixel_values=dino_preprocess(images.to(device), crop)).last_hidden_state
        return F.normalize(hidden[:, 0].float(), dim=-1)  # the final layer's (layer-normed) CLS token

    return _Wrapped(features, device, crop)


@encoders.register("clip")
def clip_encoder(device: torch.device, model: str | None = None) -> ImageEncoder:
    from rewardbooth.rewards.backbones import DEFAULT_CLIP

    clip = ClipFeatures(model or DEFAULT_CLIP, device, reward="critic encoder clip")
    return _Wrapped(clip.images, device, clip.image_size)


@encoders.register("siglip")
def siglip_encoder(device: torch.device, model: str | None = None) -> ImageEncoder:
    from transformers import SiglipVisionModel

    network = load_backbone(SiglipVisionModel, model or DEFAULT_SIGLIP, "critic encoder siglip", device, "float32")
    side = _side(network.config.image_size)

    def features(images: torch.Tensor) -> torch.Tensor:
        # SigLIP's processor resizes the whole image to side x side (bicubic, no crop) and maps [0, 1] to
        # [-1, 1] (mean 0.5, std 0.5).
        pixels = F.interpolate(images.to(device), size=(side, side), mode="bicubic", antialias=True).clamp(0, 1)
        return F.normalize(network(pixel_values=pixels * 2 - 1).pooler_output.float(), dim=-1)

    return _Wrapped(features, device, side)


@encoders.register("toy_encoder")
def toy_encoder(device: torch.device, model: str | None = None) -> ImageEncoder:
    from rewardbooth.toyworld.assets import FEATURE_ENCODER_DIR, require
    from rewardbooth.toyworld.judge import load_judge
    from rewardbooth.toyworld.world import RESOLUTION

    folder = Path(model) if model else require(FEATURE_ENCODER_DIR, "judge.json", "rewardbooth.toyworld.judge")
    network = load_judge(folder).to(device).requires_grad_(False)

    def features(images: torch.Tensor) -> torch.Tensor:
        images = images.to(device)
        if tuple(images.shape[-2:]) != (RESOLUTION, RESOLUTION):  # a bucket's portrait too
            images = F.interpolate(images, size=(RESOLUTION, RESOLUTION), mode="bilinear", antialias=True)
        return network(images)[0].float()  # the identity embedding, unit length

    return _Wrapped(features, device, RESOLUTION)


def make_encoder(name: str, device: torch.device, model: str | None = None) -> ImageEncoder:
    """The named (or `pkg.mod:factory`) encoder, frozen, on `device`."""
    return encoders.get(name)(device, model)

