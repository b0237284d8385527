"""Rewards and an objective for the objective contract (loaded by dotted path, `objective_probes:...`).

The probe rewards keep a record of every call in the module-level `CALLS` (rewards are built once per concept,
inside setup), so a test can see whether an objective called its reward and whether gradients flowed from it.
"""

import torch

from rewardbooth.maths.dpg import per_sample_mse
from rewardbooth.training.objectives import Needs, objectives

CALLS: list[dict] = []  # one entry per call: did x0_hat carry a graph, and the gradient that reached it


def _record(x0_hat: torch.Tensor) -> dict:
    call = {"requires_grad": x0_hat.requires_grad, "grad": None}
    if x0_hat.requires_grad:
        def keep(grad: torch.Tensor) -> None:
            call["grad"] = grad.detach().clone()

        x0_hat.register_hook(keep)
    CALLS.append(call)
    return call


class Probe:
    """A differentiable latent reward (the look-forward reward) that records its calls."""

    differentiable = True

    def __init__(self, setup):
        pass

    def __call__(self, x0_hat, context):
        _record(x0_hat)
        return -per_sample_mse(x0_hat, context.x0)


class BlackProbe(Probe):
    """The same scores declared non-differentiable, with no twin."""

    differentiable = False


class ScaledBaseline:
    """A user objective given as `objective.name=objective_probes:ScaledBaseline`: twice the baseline loss."""

    needs = Needs()

    def __init__(self, config):
        self.inner = objectives.get("baseline")(config)

    def losses(self, policy, batch, process, config, reward, score=True, diagnose=False):
        losses = self.inner.losses(policy, batch, process, config, reward, score, diagnose)
        losses.terms["loss"] = 2 * losses.terms["loss"]
        return losses


class Constant:
    """The same score for every sample: every group advantage is 0, so only an objective's other terms act."""

    differentiable = False

    def __init__(self, setup):
        pass

    def __call__(self, x0_hat, context):
        return torch.zeros(len(x0_hat))
