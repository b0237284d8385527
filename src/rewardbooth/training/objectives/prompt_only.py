"""The objective side of prompts without photos: how rewards see a batch that mixes reference rows (a noised
photo with the instance prompt) and prompt-only rows (a state the policy sampled for a scene prompt), and the
anchor to the base model on the prompt-only rows.

A prompt-only row's reward context carries no reference latent (`RewardContext.x0 is None`): a reward that
needs one fails on it (setup refuses such rewards first: rewardbooth.training.prompt_only). Reference rows are
scored as they always were, so a run with objective.scene_share=0 scores exactly as before.

The anchor (objective.anchor_weight = beta) against reward hacking: beta * mean_rows mean((a_theta - a_base)^2)
over the prompt-only rows, a_base the same denoiser with its LoRA adapters off at the same state, prompt and
time, without a graph. Its gradient 2 beta (a_theta - a_base) da/dtheta is zero at theta_base and points back
toward it elsewhere: the policy may follow the reward only as far as the prompts it was never shown a photo
for still look like the base model's. On reference rows the DreamBooth loss already ties it to the photos.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rewardbooth.core.config import Config
from rewardbooth.maths import dpg
from rewardbooth.rewards import Reward, RewardContext, RewardOutput, as_output
from rewardbooth.training.batches import Batch
from rewardbooth.training.objectives.base import Denoised, Policy
from rewardbooth.training.objectives.sampling import adapters_off


@dataclass
class RowScorer:
    """Scores the instance rows' x0_hat: each group of rows (None: all) with its own context."""

    groups: list[tuple[torch.Tensor | None, RewardContext]]
    scene: torch.Tensor | None  # (n,) bool: the prompt-only rows, for their logs

    def __call__(self, reward: Reward, x0_hat: torch.Tensor) -> RewardOutput:
        """Shape: x0_hat (n, C, h, w) -> scores (n,)"""
        (rows, context), *others = self.groups
        if rows is None:
            return as_output(reward(x0_hat, context))
        scores, diagnostics = x0_hat.new_zeros(len(x0_hat), dtype=torch.float32), {}
        for rows, context in self.groups:
            output = as_output(reward(x0_hat[rows], context))
            # index_put is out of place, so a differentiable reward keeps its graph (objective.name=direct).
            scores = scores.index_put((rows,), output.scores.float())
            for key, value in output.diagnostics.items():
                diagnostics[key] = diagnostics.get(key, torch.zeros_like(scores)).index_put(
                    (rows,), value.detach().float())
        return RewardOutput(scores, diagnostics)

    def scorer_of(self, reward: Reward) -> Callable[[torch.Tensor], torch.Tensor]:
        """latents -> scores, for critics that probe the reward themselves."""
        return lambda latents: self(reward, latents.float()).scores

    def scene_terms(self, output: RewardOutput) -> dict[str, torch.Tensor]:
        """The share of prompt-only rows, and the reward (and each diagnostic) on them alone, for the logs."""
        if self.scene is None:
            return {}
        terms = {"scene/share": self.scene.float().mean()}
        if self.scene.any():
            terms["scene/reward"] = output.scores.detach()[self.scene].float().mean()
            terms.update({f"scene/reward/{key}": value[self.scene].mean() for key, value in output.diagnostics.items()})
        return terms


def row_scorer(x0: torch.Tensor, prompts: list[str], scene: torch.Tensor | None,
               decode: Callable[[torch.Tensor], torch.Tensor]) -> RowScorer:
    """Reference rows with their reference latents; prompt-only rows (`scene`) with none (x0=None).

    Shape: x0 (n, C, h, w), scene (n,) bool or None
    """
    if scene is None:
        return RowScorer([(None, RewardContext(x0=x0.float(), prompts=prompts, decode=decode))], None)
    groups = []
    for rows, reference in ((~scene).nonzero().flatten(), True), (scene.nonzero().flatten(), False):
        if len(rows):
            groups.append((rows, RewardContext(x0=x0[rows].float() if reference else None,
                                               prompts=[prompts[row] for row in rows.tolist()], decode=decode)))
    return RowScorer(groups, scene)


def anchor_terms(policy: Policy, step: Denoised, batch: Batch, config: Config) -> dict[str, torch.Tensor]:
    """beta * mean((a_theta - a_base)^2) over the micro-batch's prompt-only rows ({} when beta is 0).

    Shape: step.action (B, C, h, w) -> scalars
    """
    weight = config.objective.anchor_weight
    if weight == 0 or batch.scene is None:
        return {}
    rows = batch.scene.nonzero().flatten()
    if len(rows) == 0:
        zero = step.action.sum() * 0  # keeps the loss's graph and device
        return {"anchor": zero.detach(), "anchor_term": zero}
    with torch.no_grad(), adapters_off(policy.denoiser):
        base, _ = policy.family.denoise(policy.denoiser, step.x_t[rows], step.timesteps[rows],
                                        batch.conditioning.select(rows), policy.text_encoders,
                                        policy.size_ids(batch))
    distance = dpg.per_sample_mse(step.action[rows], base).mean()
    return {"anchor": distance.detach(), "anchor_term": weight * distance}


def with_anchor(terms: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The actor's terms with the anchor's penalty added to the loss."""
    if anchor:
        terms["loss"] = terms["loss"] + anchor.pop("anchor_term")
        terms.update(anchor)
    return terms
