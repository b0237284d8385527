"""Rewards of a run with several subjects (Custom Diffusion's multi-concept training, Kumari et al. 2023, §3.2).

Rewards that compare with the subject (DINO, CLIP-I, face, the toy judge) are built once per concept, on that
concept's photos and identifier, and `PerConcept` scores each sample with the reward of its concept: the
first concept whose identifier the prompt names (the first concept when it names none); `PerConceptImages` does
the same for image scorers (a validation reward).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rewardbooth.data.concepts import concept_index
from rewardbooth.rewards.base import (
    ImageScorer,
    Reward,
    RewardContext,
    RewardOutput,
    RewardSetup,
    as_output,
    kind_of,
)


class _Routed:
    """Routing shared by both kinds: samples grouped by the concept their prompt names."""

    def __init__(self, identifiers: list[str], rewards: list[Any]):
        self.identifiers, self.rewards = identifiers, rewards
        self.differentiable = all(reward.differentiable for reward in rewards)

    def _route(self, prompts: list[str], device: torch.device,
               score_fn: Callable[[Any, torch.Tensor, list[int]], RewardOutput | torch.Tensor]) -> RewardOutput:
        """`score_fn(reward, selected, rows)` scores the rows (a list, and as an index tensor) of one concept."""
        owners = torch.tensor([concept_index(prompt, self.identifiers) for prompt in prompts])
        scores, diagnostics = torch.zeros(len(prompts), device=device), {}
        for index, reward in enumerate(self.rewards):
            rows = (owners == index).nonzero().flatten().tolist()
            if not rows:
                continue
            selected = torch.tensor(rows, device=device)
            output = as_output(score_fn(reward, selected, rows))
            # index_put is out of place, so a differentiable reward keeps its graph (objective.name=direct).
            scores = scores.index_put((selected,), output.scores.float())
            for key, value in output.diagnostics.items():
                diagnostics[key] = diagnostics.get(key, torch.zeros_like(scores)).index_put(
                    (selected,), value.detach().float())
        return RewardOutput(scores, diagnostics)


class PerConcept(_Routed):
    """Each sample scored by the reward built for its own concept (that concept's photos and identifier)."""

    kind = "latent"

    def __call__(self, x0_hat: torch.Tensor, context: RewardContext) -> RewardOutput:
        def score(reward: Reward, selected: torch.Tensor, rows: list[int]) -> RewardOutput | torch.Tensor:
            x0 = None if context.x0 is None else context.x0[selected]
            part = RewardContext(x0=x0, prompts=[context.prompts[row] for row in rows],
                                 decode=context.decode)
            return reward(x0_hat[selected], part)

        return self._route(context.prompts, x0_hat.device, score)


class PerConceptImages(_Routed):
    """Each image scored by the image scorer built for its own concept."""

    kind = "image"

    def score_images(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        def score(scorer: ImageScorer, selected: torch.Tensor, rows: list[int]) -> RewardOutput | torch.Tensor:
            return scorer.score_images(images[selected], [prompts[row] for row in rows])

        return self._route(prompts, images.device, score)


def build_concept_reward(build: Callable[[RewardSetup], Any], setups: list[RewardSetup]) -> Any:
    """One reward (or image scorer) for one concept; `PerConcept` (`PerConceptImages`) over one per concept
    otherwise."""
    if len(setups) == 1:
        return build(setups[0])
    built = [build(setup) for setup in setups]
    routed = PerConceptImages if kind_of(built[0]) == "image" else PerConcept
    return routed([setup.identifier for setup in setups], built)
