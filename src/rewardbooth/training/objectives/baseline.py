"""`baseline`: DreamBooth's denoising loss alone (instance + prior preservation); needs no reward."""

from __future__ import annotations

from rewardbooth.core.config import Config
from rewardbooth.maths import dpg
from rewardbooth.models.families import Process
from rewardbooth.rewards import Reward
from rewardbooth.training.batches import Batch
from rewardbooth.training.objectives.base import Losses, Needs, Policy, denoise, loss_weights, objectives


@objectives.register("baseline")
class Baseline:
    """loss = w_inst * mse_inst + w_prior * mse_prior."""

    needs = Needs()

    def __init__(self, config: Config):
        self.config = config

    def losses(self, policy: Policy, batch: Batch, process: Process, config: Config,
               reward: Reward | None, score: bool = True, diagnose: bool = False) -> Losses:
        step, n = denoise(policy, batch, process), batch.num_instance
        return Losses(dpg.actor_loss(step.mse[:n], step.prior_mse, None, batch.timesteps[:n], **loss_weights(config)))
