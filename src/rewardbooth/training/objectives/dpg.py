"""`dpg`: the deterministic policy gradient. The policy climbs a learnt critic Q(s, a) through dQ/da; the
critic regresses the (detached) reward of the action taken, so a reward without a gradient still supervises.

  actor  loss: w_inst * mse_inst + w_prior * mse_prior - lambda * gamma^t * Q(s, a)   (Q's weights frozen)
  critic loss: (Q(s, a.detach()) - r)^2                                                (policy untouched)
"""

from __future__ import annotations

import torch
from torch import nn

from rewardbooth.core.config import Config
from rewardbooth.maths import dpg
from rewardbooth.models.families import Process
from rewardbooth.rewards import Reward
from rewardbooth.training.batches import Batch
from rewardbooth.training.critic import critic_fit
from rewardbooth.training.critic_diagnostics import alignment_terms
from rewardbooth.training.objectives.base import (
    Losses,
    Needs,
    Policy,
    denoise,
    frozen,
    loss_weights,
    objectives,
    reward_terms,
)
from rewardbooth.training.objectives.direct import batch_scorer
from rewardbooth.training.objectives.prompt_only import RowScorer, anchor_terms, with_anchor


@objectives.register("dpg")
class DeterministicPolicyGradient:
    """With `score` false (steps between objective.reward_every) the reward and the critic update are skipped;
    the policy still climbs the critic. With `diagnose`, a scoring step also measures how well dQ/da matches
    the gradient of `policy.diagnostic_reward` (the reward itself, or a black box's differentiable twin)."""

    needs = Needs(reward=True, critic=True)

    def __init__(self, config: Config):
        self.config = config

    def losses(self, policy: Policy, batch: Batch, process: Process, config: Config,
               reward: Reward | None, score: bool = True, diagnose: bool = False) -> Losses:
        step, n = denoise(policy, batch, process, config.objective.scene_steps), batch.num_instance
        x_t, action, x0, timesteps = step.x_t[:n], step.action[:n], batch.x0[:n], step.timesteps[:n]
        x0_hat = process.look_forward(x_t, action, timesteps)
        scorer = batch_scorer(policy, batch, config)
        # Actor: climb Q through dQ/da with the critic's weights frozen (deterministic policy gradient).
        features = dpg.critic_features(config.critic.input, x_t, action, x0_hat, x0)
        critic_text = step.text[:n].detach()
        with frozen(policy.critic_module) as critic:
            q_policy = critic(features, timesteps, critic_text)
        terms = dpg.actor_loss(step.mse[:n], step.prior_mse, q_policy, timesteps, **loss_weights(config))
        terms = with_anchor(terms, anchor_terms(policy, step, batch, config))
        if not score:
            return Losses(terms)
        # Score x0_hat (a regression target, never differentiated: no graph through the VAE or a backbone) and
        # regress Q(s, a_taken) on it, with the action detached so theta is untouched.
        with torch.no_grad():
            output = scorer(reward, x0_hat.detach().float())
        fit = critic_fit(policy.critic_module, features.detach(), timesteps, critic_text, output.scores,
                         scorer.scorer_of(reward))
        q_fit = policy.critic(fit.inputs, fit.timesteps, fit.text)
        terms["critic_loss"] = dpg.critic_loss(q_fit, fit.rewards)
        q_taken = q_fit[:n]
        terms["q"] = q_taken.detach().mean()
        terms.update(fit.logs)
        if diagnose and policy.diagnostic_reward is not None:
            terms.update(critic_alignment(policy.critic_module, policy.diagnostic_reward, config, process, x_t,
                                          action, x0, timesteps, critic_text, scorer))
        return Losses({**terms, **reward_terms(output), **scorer.scene_terms(output)},
                      fit=(q_taken.detach().float(), output.scores.detach().float()))


def critic_alignment(critic: nn.Module, reward_fn: Reward, config: Config, process: Process,
                     x_t: torch.Tensor, action: torch.Tensor, x0: torch.Tensor, timesteps: torch.Tensor,
                     text: torch.Tensor, scorer: RowScorer) -> dict[str, torch.Tensor]:
    """cos(dQ/da, dr/da) and the norm ratio at the actions taken, through the same look-forward step.

    Shape: x_t, action, x0 (B, C, h, w), timesteps (B,), text (B, L, D) -> scalars.
    """
    x_t = x_t.detach()

    def look_forward(a: torch.Tensor) -> torch.Tensor:
        return process.look_forward(x_t, a, timesteps)

    def q_of(a: torch.Tensor) -> torch.Tensor:
        return critic(dpg.critic_features(config.critic.input, x_t, a, look_forward(a), x0), timesteps, text)

    def reward_of(a: torch.Tensor) -> torch.Tensor:
        return scorer(reward_fn, look_forward(a).float()).scores

    weights = dpg.discount(timesteps, config.objective.gamma).to(action.device)
    return alignment_terms(q_of, reward_of, action, weights)
