"""Rewards of a run with several subjects (Custom Diffusion's multi-concept training, Kumari et al. 2023, §3.2).

Rewards that compare with the subject (DINO, CLIP-I, face, the toy judge) are built once per concept, on that
concept's photos and identifier, and `PerConcept` scores each sample with the reward of its concept: the
first concept whose identifier the prompt names (the first concept when it names none).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rewardbooth.data.concepts import concept_index
from rewardbooth.rewards.base import Reward, RewardContext, RewardOutput, RewardSetup, as_output


class PerConcept:
    """Each sample scored by the reward built for its own concept (that concept's photos and identifier)."""

    def __init__(self, identifiers: list[str], rewards: list[Reward]):
        self.identifiers, self.rewards = identifiers, rewards
        self.differentiable = all(reward.differentiable for reward in rewards)

    def __call__(self, x0_hat: torch.Tensor, context: RewardContext) -> RewardOutput:
        owners = torch.tensor([concept_index(prompt, self.identifiers) for prompt in context.prompts])
        scores, diagnostics = torch.zeros(len(x0_hat), device=x0_hat.device), {}
        for index, reward in enumerate(self.rewards):
            rows = (owners == index).nonzero().flatten().tolist()
            if not rows:
                continue
            selected = torch.tensor(rows, device=x0_hat.device)
            part = RewardContext(x0=context.x0[selected], prompts=[context.prompts[row] for row in rows],
                                 decode=context.decode)
            output = as_output(reward(x0_hat[selected], part))
            # index_put is out of place, so a differentiable reward keeps its graph (objective.name=direct).
            scores = scores.index_put((selected,), output.scores.float())
            for key, value in output.diagnostics.items():
                diagnostics[key] = diagnostics.get(key, torch.zeros_like(scores)).index_put(
                    (selected,), value.detach().float())
        return RewardOutput(scores, diagnostics)


def build_concept_reward(build: Callable[[RewardSetup], Reward], setups: list[RewardSetup]) -> Reward:
    """One reward for one concept; `PerConcept` over one per concept otherwise."""
    if len(setups) == 1:
        return build(setups[0])
    return PerConcept([setup.identifier for setup in setups], [build(setup) for setup in setups])
