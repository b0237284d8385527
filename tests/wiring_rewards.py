"""Rewards for the wiring tests (loaded by dotted path, `wiring_rewards:...`)."""

import torch

from rewardbooth.maths.dpg import per_sample_mse


class Spy:
    """The look-forward reward, keeping every x0_hat it is shown."""

    differentiable = True

    def __init__(self, setup):
        self.seen = []

    def __call__(self, x0_hat, context):
        self.seen.append(x0_hat.detach().clone())
        return -per_sample_mse(x0_hat, context.x0)


def brightness(images: torch.Tensor) -> torch.Tensor:
    """Shape: (B, 3, H, W) -> (B,)"""
    return images.mean(dim=(1, 2, 3))


class Bright:
    """A differentiable image reward: the mean brightness of the decoded x0_hat."""

    differentiable = True

    def __init__(self, setup):
        pass

    def __call__(self, x0_hat, context):
        return brightness(context.decode(x0_hat))


class Contexts:
    """The brightness of decode(x0_hat), keeping every context it is given (which rows carry a reference)."""

    differentiable = True

    def __init__(self, setup):
        self.seen = []

    def __call__(self, x0_hat, context):
        self.seen.append(context)
        return brightness(context.decode(x0_hat))


class Scaled:
    """The brightness of decode(x0_hat) times an option, `gain` (which options reach which reward)."""

    differentiable = True

    def __init__(self, setup, gain: float = 1.0):
        self.gain = gain

    def __call__(self, x0_hat, context):
        return self.gain * brightness(context.decode(x0_hat))


class OtherScaled(Scaled):
    """A second option-taking reward, for the prompt-only rows."""
