"""Rewards: score a training sample, one float per sample, higher is better. Two kinds (`rewards.base`):

- image scorers (dino, clip_image, clip_text, face, toy_identity): ``scorer.score_images(images, prompts)``
  on images (B, 3, H, W) in [0, 1]; checkpoint selection and the evaluator call them on generated images,
  the trainer on decode(x0_hat) through ``OnDecodedImages``;
- latent rewards (look_forward): ``reward(x0_hat, context)``, for training only.

Contract (tests/contract/test_reward_contract.py runs it over every entry): a factory
``make(setup: RewardSetup, **options)`` (a registered class is its own factory) builds the reward once,
loading any backbone and importing optional dependencies lazily; scoring returns a ``RewardOutput``: float32
scores of shape (B,) and per-sample diagnostics (a user reward may return the bare scores).
``differentiable`` says whether gradients flow from the scores to the input, ``kind`` ("image" or
"latent") which of the two it is. A user reward is named ``package.module:factory``; ``objective.reward``
may weight several.
"""

from rewardbooth.rewards import backbones, face, look_forward, toy  # noqa: F401  (registers)
from rewardbooth.rewards.base import (
    ByRowKind,
    ImageScorer,
    OnDecodedImages,
    Reward,
    RewardContext,
    RewardOutput,
    RewardSetup,
    WeightedImageSum,
    WeightedSum,
    as_output,
    build_reward,
    build_scorer,
    declared_kind,
    differentiable_twin,
    kind_of,
    make_reward,
    make_scorer,
    reward_weights,
    rewards,
)

__all__ = ["ByRowKind", "ImageScorer", "OnDecodedImages", "Reward", "RewardContext", "RewardOutput", "RewardSetup",
           "WeightedImageSum", "WeightedSum", "as_output", "build_reward", "build_scorer", "declared_kind",
           "differentiable_twin", "kind_of", "make_reward", "make_scorer", "reward_weights", "rewards"]
