"""User rewards loaded by dotted path in the tests (`user_rewards:...`), as a user's own module would be."""

import torch

from rewardbooth.rewards import RewardOutput


class DarkImages:
    """Non-differentiable: how dark the decoded x0_hat is, with an option and a diagnostic."""

    differentiable = False

    def __init__(self, setup, target: float = 0.0):
        self.target = target

    @torch.no_grad()
    def __call__(self, x0_hat, context):
        brightness = context.decode(x0_hat).mean(dim=(1, 2, 3))
        return RewardOutput(-(brightness - self.target).abs(), {"brightness": brightness})


def make_small_latents(setup):
    """A plain function factory returning bare scores: differentiable, and unknown until built."""

    class SmallLatents:
        differentiable = True

        def __call__(self, x0_hat, context):
            return -x0_hat.float().square().mean(dim=(1, 2, 3))

    return SmallLatents()
