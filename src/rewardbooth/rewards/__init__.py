"""Rewards: score the look-forward prediction x0_hat, one float per sample, higher is better.

Contract (tests/contract/test_reward_contract.py runs it over every entry): a factory
``make(setup: RewardSetup, **options) -> Reward`` (a registered reward class is its own factory) builds the
reward once, loading any backbone and importing optional dependencies lazily; calling ``reward(x0_hat,
context)`` returns a ``RewardOutput``: float32 scores of shape (B,) and per-sample diagnostics (a user reward
may return the bare scores). ``reward.differentiable`` says whether gradients flow from the scores to x0_hat.
A user reward is named ``package.module:factory``; ``objective.reward`` may weight several.
"""

from rewardbooth.rewards import backbones, face, look_forward, toy  # noqa: F401  (registers)
from rewardbooth.rewards.base import (
    Reward,
    RewardContext,
    RewardOutput,
    RewardSetup,
    WeightedSum,
    as_output,
    build_reward,
    make_reward,
    reward_weights,
    rewards,
)

__all__ = ["Reward", "RewardContext", "RewardOutput", "RewardSetup", "WeightedSum", "as_output", "build_reward",
           "make_reward", "reward_weights", "rewards"]
