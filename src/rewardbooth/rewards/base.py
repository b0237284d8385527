"""The reward registry and the types its entries share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from rewardbooth.registry import Registry

rewards = Registry("reward")


@dataclass(frozen=True)
class RewardSetup:
    """What a reward factory may use once, at build time."""

    reference_images: torch.Tensor  # (N, 3, H, W) float32 in [0, 1]: the subject's photos
    identifier: str
    device: torch.device


@dataclass
class RewardContext:
    """What a reward may use per batch, besides x0_hat."""

    x0: torch.Tensor  # (B, C, h, w) reference latents the noisy states were made from
    prompts: list[str]
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None  # latents -> images (B, 3, H, W) in [0, 1]


class Reward(Protocol):
    differentiable: bool

    def __call__(self, x0_hat: torch.Tensor, context: RewardContext) -> torch.Tensor:
        """Shape: x0_hat (B, C, h, w) -> (B,) float32, higher is better."""


def make_reward(name: str | Callable[..., Any], setup: RewardSetup, **options: Any) -> Reward:
    return rewards.get(name)(setup, **options)
