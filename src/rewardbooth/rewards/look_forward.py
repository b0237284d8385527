"""The paper's main reward: how close the one-jump prediction x0_hat lands to the reference latent."""

from __future__ import annotations

import torch

from rewardbooth.maths.dpg import per_sample_mse
from rewardbooth.rewards.base import RewardContext, RewardOutput, RewardSetup, rewards


@rewards.register("look_forward")
class LookForwardReward:
    """r = -mean((x0_hat - x0)^2) over latent elements (Wei et al. 2024, Eq. 7)."""

    differentiable = True
    kind = "latent"  # it compares x0_hat with the training latent: there is none for a generated image
    needs_reference = True  # nor for a prompt-only state (objective.scene_share): refused there at setup

    def __init__(self, setup: RewardSetup):
        pass  # needs nothing built: the reference latent arrives with every batch

    def __call__(self, x0_hat: torch.Tensor, context: RewardContext) -> RewardOutput:
        if context.x0 is None:
            raise ValueError("look_forward needs the reference latent, which prompt-only states do not have")
        return RewardOutput(-per_sample_mse(x0_hat, context.x0))
