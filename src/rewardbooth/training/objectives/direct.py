"""`direct`: backpropagate a differentiable reward itself in place of a critic (ReFL / DRaFT style), the
control for DPG: its gradient flows through x0_hat (and the VAE decoder, for an image reward) into the policy.
Prompt-only rows (objective.scene_share) act at states the policy sampled and add the anchor to the base model
(objective.anchor_weight): rewardbooth.training.objectives.prompt_only.
"""

from __future__ import annotations

from rewardbooth.core.config import Config
from rewardbooth.maths import dpg
from rewardbooth.models.families import Process
from rewardbooth.rewards import Reward
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
from rewardbooth.training.objectives.prompt_only import RowScorer, anchor_terms, row_scorer, with_anchor


def batch_scorer(policy: Policy, batch: Batch, config: Config) -> RowScorer:
    """What a reward sees of the instance samples besides x0_hat: x0 (none on prompt-only rows), the prompts,
    the decoder."""
    n = batch.num_instance
    return row_scorer(batch.x0[:n], batch.prompts[:n], batch.scene,
                      image_decoder(policy.vae, policy.latent_space, config))


@objectives.register("direct")
class Direct:
    """loss = w_inst * mse_inst + w_prior * mse_prior - lambda * gamma^t * r(x0_hat), r differentiated."""

    needs = Needs(reward=True, reward_gradient=True)

    def __init__(self, config: Config):
        self.config = config

    def losses(self, policy: Policy, batch: Batch, process: Process, config: Config,
               reward: Reward | None, score: bool = True, diagnose: bool = False) -> Losses:
        step, n = denoise(policy, batch, process, config.objective.scene_steps), batch.num_instance
        timesteps = step.timesteps[:n]
        x0_hat = process.look_forward(step.x_t[:n], step.action[:n], timesteps)
        scorer = batch_scorer(policy, batch, config)
        output = scorer(reward, x0_hat.float())
        terms = dpg.actor_loss(step.mse[:n], step.prior_mse, output.scores, timesteps, **loss_weights(config))
        return Losses({**with_anchor(terms, anchor_terms(policy, step, batch, config)), **reward_terms(output),
                       **scorer.scene_terms(output)})
