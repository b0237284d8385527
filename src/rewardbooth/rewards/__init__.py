"""Rewards: score the look-forward prediction x0_hat, one float per sample, higher is better.

Contract (tests/test_reward_contract.py runs it over every entry): a factory
``make(setup: RewardSetup, **options) -> Reward`` builds the reward once (loading any backbone); calling
``reward(x0_hat, context)`` returns float32 scores of shape (B,), and ``reward.differentiable`` says whether
gradients flow from the scores to x0_hat. The factory can also be given as ``package.module:factory``.
"""

from rewardbooth.rewards import look_forward, toy  # noqa: F401  (registers)
from rewardbooth.rewards.base import Reward, RewardContext, RewardSetup, make_reward, rewards

__all__ = ["Reward", "RewardContext", "RewardSetup", "make_reward", "rewards"]
