"""`grpo`: rollout policy gradients for any reward, with or without a gradient (DDPO, Black et al. 2023;
Flow-GRPO, Liu et al. 2025; GRPO's group advantages, Shao et al. 2024).

Per scoring micro-batch, for each instance prompt: a group of `objective.grpo.group_size` images sampled from
the current policy with the family's stochastic step (`process.stochastic_step`: DDIM with eta > 0 for the
DDPM families, Flow-GRPO's SDE step with noise level a = eta for the flow families), each step's
log-probability kept; the images scored by the reward; advantages standardised within the group; then `trained_steps` of each trajectory's steps, drawn at random, recomputed with
gradients and reinforced through PPO's clipped ratio, plus beta * KL to the base model (LoRA: the same
denoiser with its adapters switched off, no second copy). The DreamBooth terms (objective.instance_weight,
prior_weight) are added as for every objective; set them to 0 for pure RL. Rollouts are sampled without
classifier-free guidance.

  loss = w_inst * mse_inst + w_prior * mse_prior + mean_k [ max(-A rho_k, -A clip(rho_k)) + beta * KL_k ]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rewardbooth.core.config import Config, GRPOConfig
from rewardbooth.core.errors import UserError
from rewardbooth.maths import dpg, rollout
from rewardbooth.methods import methods
from rewardbooth.models.families import Process, RolloutProcess
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
from rewardbooth.training.objectives.prompt_only import row_scorer
from rewardbooth.training.objectives.sampling import adapters_off, rollout_generator


@dataclass
class Rollouts:
    """Trajectories of N = prompts x group_size images over S sampler steps (no graph)."""

    states: torch.Tensor  # (S, N, C, h, w): x_t before each step
    next_states: torch.Tensor  # (S, N, C, h, w): the sample each step drew
    log_probs: torch.Tensor  # (S, N): its log-probability when drawn
    times: torch.Tensor  # (S,) the step's time value
    next_times: torch.Tensor  # (S,) the time it steps to (< 0: the end of sampling)
    conditioning: dict[str, torch.Tensor]  # per image
    advantages: torch.Tensor  # (N,)
    micro: torch.Tensor | None = None  # the family's extra ids for the batch's image size (SDXL's)


@objectives.register("grpo")
class GroupRelativePolicyOptimization:
    """Groups sampled from the policy, group-normalised advantages, a clipped ratio, a KL anchor."""

    needs = Needs(reward=True)

    def __init__(self, config: Config):
        self.options: GRPOConfig = config.objective.grpo
        if self.options.kl_weight > 0 and not getattr(methods.get(config.method.name), "adapters_only", False):
            raise UserError(f"objective.grpo.kl_weight={self.options.kl_weight} anchors to the base model by "
                            f"switching adapters off, but method.name={config.method.name} trains the base "
                            f"weights: use method.name=lora, or objective.grpo.kl_weight=0")

    def losses(self, policy: Policy, batch: Batch, process: Process, config: Config,
               reward: Reward | None, score: bool = True, diagnose: bool = False) -> Losses:
        step, n = denoise(policy, batch, process), batch.num_instance
        terms = dpg.actor_loss(step.mse[:n], step.prior_mse, None, batch.timesteps[:n], **loss_weights(config))
        if not score:
            return Losses(terms)
        if not hasattr(process, "stochastic_step"):  # not a RolloutProcess
            raise UserError(f"objective.name=grpo samples with a stochastic step, which the {policy.family.name} "
                            f"family's process does not have (the SD, SDXL, SD3 and FLUX families do); use "
                            f"objective.name=dpg or direct there")
        generator = rollout_generator(batch)
        with torch.no_grad():
            rollouts, output = self.sample(policy, batch, process, reward, config, generator)
        policy_terms = self.reinforce(policy, process, rollouts, generator)
        terms["loss"] = terms["loss"] + policy_terms.pop("policy_loss")
        return Losses({**terms, **policy_terms, **reward_terms(output)})

    def sample(self, policy: Policy, batch: Batch, process: RolloutProcess, reward: Reward, config: Config,
               generator: torch.Generator) -> tuple[Rollouts, object]:
        """Draw the groups, score the final samples, and standardise their rewards within each group."""
        options, n = self.options, batch.num_instance
        index = torch.arange(n, device=batch.x0.device).repeat_interleave(options.group_size)
        conditioning = batch.conditioning.select(index)
        times = process.sampling_timesteps(options.num_steps, tuple(batch.x0.shape[-2:])).to(batch.x0.device)
        next_times = torch.cat([times[1:], torch.full_like(times[:1], -1)])
        x = torch.randn((len(index), *batch.x0.shape[1:]), generator=generator).to(batch.x0)
        states, next_states, log_probs = [], [], []
        for t, t_next in zip(times, next_times):
            t, t_next = t.expand(len(x)), t_next.expand(len(x))
            action, _ = policy.family.denoise(policy.denoiser, x, t, conditioning, policy.text_encoders,
                                              policy.size_ids(batch))
            states.append(x)
            x, log_prob = process.stochastic_step(x, action.float(), t, t_next, options.eta, generator)
            next_states.append(x)
            log_probs.append(log_prob)
        # Prompt-only rows (objective.scene_share) join the rollouts like any prompt; they carry no reference.
        scorer = row_scorer(batch.x0[index], [batch.prompts[i] for i in index.tolist()],
                            None if batch.scene is None else batch.scene[index],
                            image_decoder(policy.vae, policy.latent_space, config))
        output = scorer(reward, x.float())
        advantages = rollout.group_advantages(output.scores, options.group_size, options.advantage_clip)
        return Rollouts(torch.stack(states), torch.stack(next_states), torch.stack(log_probs), times, next_times,
                        conditioning, advantages.to(x.device), policy.size_ids(batch)), output

    def reinforce(self, policy: Policy, process: RolloutProcess, rollouts: Rollouts,
                  generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The clipped surrogate and the KL anchor at `trained_steps` random steps of every trajectory."""
        options = self.options
        count = rollouts.states.shape[1]
        chosen = torch.rand((count, len(rollouts.times)), generator=generator).argsort(dim=1)[:, :options.trained_steps]
        chosen, rows = chosen.to(rollouts.states.device), torch.arange(count, device=rollouts.states.device)
        surrogates, kls, ratios = [], [], []
        for column in chosen.T:
            x_t, x_next = rollouts.states[column, rows], rollouts.next_states[column, rows]
            t, t_next = rollouts.times[column], rollouts.next_times[column]
            action, _ = policy.family.denoise(policy.denoiser, x_t, t, rollouts.conditioning, policy.text_encoders,
                                              rollouts.micro)
            _, log_prob = process.stochastic_step(x_t, action.float(), t, t_next, options.eta, x_next=x_next)
            surrogate, ratio = rollout.clipped_surrogate(log_prob, rollouts.log_probs[column, rows],
                                                         rollouts.advantages, options.clip_range)
            surrogates.append(surrogate)
            ratios.append(ratio.detach())
            if options.kl_weight > 0:
                with torch.no_grad(), adapters_off(policy.denoiser):
                    base_action, _ = policy.family.denoise(policy.denoiser, x_t, t, rollouts.conditioning,
                                                           policy.text_encoders, rollouts.micro)
                    _, base_log_prob = process.stochastic_step(x_t, base_action.float(), t, t_next, options.eta,
                                                               x_next=x_next)
                kls.append(rollout.kl_estimate(log_prob, base_log_prob).mean())
        policy_term = torch.stack(surrogates).mean()
        terms = {"policy_term": policy_term.detach(), "grpo/ratio": torch.cat(ratios).mean(),
                 "grpo/advantage_abs": rollouts.advantages.abs().mean()}
        if kls:
            kl = torch.stack(kls).mean()
            policy_term = policy_term + options.kl_weight * kl
            terms["grpo/kl"] = kl.detach()
        return {"policy_loss": policy_term, **terms}
