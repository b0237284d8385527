"""`direct`: backpropagate a differentiable reward itself in place of a critic (ReFL / DRaFT style), the
control for DPG: its gradient flows through x0_hat (and the VAE decoder, for an image reward) into the policy.
"""

from __future__ import annotations

from rewardbooth.core.config import Config
from rewardbooth.maths import dpg
from rewardbooth.models.families import Process
from rewardbooth.rewards import Reward, RewardContext, as_output
from rewardbooth.training.batches import Batch, image_decoder
from rewardbooth.training.objectives.base import (
    Losses,
    Needs,
    Policy,
    denoise,
    loss_weights,
    objectives,
    reward_terms,
)


def reward_context(policy: Policy, batch: Batch, config: Config) -> RewardContext:
    """What a reward sees of the instance samples besides x0_hat: x0, the prompts, the decoder."""
    n = batch.num_instance
    return RewardContext(x0=batch.x0[:n].float(), prompts=batch.prompts[:n],
                         decode=image_decoder(policy.vae, policy.latent_space, config))


@objectives.register("direct")
class Direct:
    """loss = w_inst * mse_inst + w_prior * mse_prior - lambda * gamma^t * r(x0_hat), r differentiated."""

    needs = Needs(reward=True, reward_gradient=True)

    def __init__(self, config: Config):
        self.config = config

    def losses(self, policy: Policy, batch: Batch, process: Process, config: Config,
               reward: Reward | None, score: bool = True, diagnose: bool = False) -> Losses:
        step, n = denoise(policy, batch, process), batch.num_instance
        timesteps = batch.timesteps[:n]
        x0_hat = process.look_forward(step.x_t[:n], step.action[:n], timesteps)
        output = as_output(reward(x0_hat.float(), reward_context(policy, batch, config)))
        return Losses({**dpg.actor_loss(step.mse[:n], step.prior_mse, output.scores, timesteps, **loss_weights(config)),
                       **reward_terms(output)})
