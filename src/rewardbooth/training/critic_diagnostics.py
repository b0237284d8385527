"""Does the critic carry the reward? What a run measures about Q besides its regression loss.

A fitted critic is not a useful one (DESIGN.md §1): the policy receives dQ/da, not Q, and a critic can
regress the reward's values well while its input gradient points elsewhere (the timestep alone explains most
of the look-forward reward's variance). So every DPG run logs:

- ``critic/grad_cosine`` = cos(dQ/da, dr/da) and ``critic/grad_ratio`` = ||dQ/da|| / ||dr/da|| over the
  batch (both weighted by gamma^t, as the policy term is), every ``critic.diagnostics_every`` steps, when the
  reward is differentiable. The actions are detached copies, so this costs one critic backward and one reward
  backward (through the VAE decoder and backbone for an image reward), never a UNet backward.
- ``critic/r2``: the on-policy R^2 of Q(s, a_taken), read before the critic regresses on these samples, against
  their rewards, over the last ``critic.r2_window`` samples (every process's). Saved in checkpoints, so a
  resumed run logs what an uninterrupted one logs.

For a reward without a gradient (dlib's face identity, a user's black box), check the critic configuration on
a differentiable proxy first: the same run with `dino` (or `toy_identity`) in its place logs both figures.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rewardbooth.maths.dpg import gradient_alignment, r_squared

MIN_R2_SAMPLES = 8  # below this the windowed R^2 is too noisy to log


def alignment_terms(q_of_action: Callable[[torch.Tensor], torch.Tensor],
                    reward_of_action: Callable[[torch.Tensor], torch.Tensor],
                    action: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """cos(dQ/da, dr/da) and the norm ratio at these actions, as log terms.

    `q_of_action` and `reward_of_action` map a batch of actions to (B,) values through the same look-forward
    step the loop uses; only the action's gradient is computed (no parameter receives one).

    Shape: action (B, C, h, w); weights (B,) -> scalars
    """
    probe = action.detach().float().requires_grad_(True)
    with torch.enable_grad():
        (critic_gradient,) = torch.autograd.grad((weights * q_of_action(probe)).sum(), probe)
        rewards = reward_of_action(probe)
        reward_gradient = None
        if rewards.requires_grad:
            (reward_gradient,) = torch.autograd.grad((weights * rewards).sum(), probe, allow_unused=True)
    if reward_gradient is None:
        reward_gradient = torch.zeros_like(probe)
    cosine, ratio = gradient_alignment(critic_gradient, reward_gradient)
    return {"critic/grad_cosine": cosine, "critic/grad_ratio": ratio}


class FitWindow:
    """The last `size` (Q, reward) pairs of the actions taken, for the on-policy R^2 of the critic."""

    def __init__(self, size: int):
        self.size = size
        self.q: list[float] = []
        self.rewards: list[float] = []

    def add(self, q: torch.Tensor, rewards: torch.Tensor) -> None:
        self.q = (self.q + q.detach().float().cpu().tolist())[-self.size:]
        self.rewards = (self.rewards + rewards.detach().float().cpu().tolist())[-self.size:]

    def r2(self) -> float | None:
        if len(self.q) < min(MIN_R2_SAMPLES, self.size):
            return None
        return float(r_squared(torch.tensor(self.q), torch.tensor(self.rewards)))

    def state_dict(self) -> dict[str, list[float]]:
        """Plain floats (JSON round-trips them exactly)."""
        return {"q": list(self.q), "rewards": list(self.rewards)}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.q, self.rewards = list(state["q"]), list(state["rewards"])
