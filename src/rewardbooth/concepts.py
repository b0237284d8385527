"""Several subjects in one run (Custom Diffusion's multi-concept training, Kumari et al. 2023, §3.2).

The first concept is `data.instance_dir / instance_prompt / identifier / class_prompt`; `data.concepts` adds
more, each with its own photos, prompt and identifier. Training batches draw uniformly over every concept's
photos (so a concept with more photos is seen more often, as in diffusers' train_custom_diffusion.py), with
each photo's own prompt; prior preservation draws from every concept's class images likewise.

Rewards that compare with the subject (DINO, CLIP-I, face, the toy judge) are built once per concept, on that
concept's photos and identifier, and `PerConcept` scores each sample with the reward of its concept: the
first concept whose identifier the prompt names (the first concept when it names none).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from rewardbooth.config import ConceptConfig, DataConfig
from rewardbooth.data import names_identifier
from rewardbooth.errors import UserError
from rewardbooth.rewards import Reward, RewardContext, RewardOutput, RewardSetup, as_output


def concepts_of(data: DataConfig) -> list[ConceptConfig]:
    """Every concept of the run, the main one first."""
    main = ConceptConfig(instance_dir=data.instance_dir, instance_prompt=data.instance_prompt,
                         identifier=data.identifier, class_prompt=data.class_prompt, class_dir=data.class_dir)
    return [main, *data.concepts]


def check_concepts(data: DataConfig) -> None:
    """Each extra concept is complete, and identifiers and prompts tell the concepts apart."""
    needed = ["instance_dir", "instance_prompt", "identifier"] + (["class_prompt"] if data.prior_preservation else [])
    for index, concept in enumerate(data.concepts):
        missing = [name for name in needed if not getattr(concept, name)]
        if missing:
            raise UserError(f"data.concepts[{index}] has no {missing[0]}: give each concept {{{', '.join(needed)}}}")
    for name in ("identifier", "instance_prompt"):
        values = [getattr(concept, name) for concept in concepts_of(data)]
        repeated = next((value for value in values if values.count(value) > 1), None)
        if repeated is not None:
            raise UserError(f"two concepts share the {name} {repeated!r}: each concept needs its own "
                            f"(e.g. identifiers '<new1>' and '<new2>')")


def concept_data(data: DataConfig, concept: ConceptConfig) -> DataConfig:
    """The data config of one concept alone (its class-image cache is keyed by its own class prompt)."""
    return dataclasses.replace(data, instance_dir=concept.instance_dir, instance_prompt=concept.instance_prompt,
                               identifier=concept.identifier, class_prompt=concept.class_prompt,
                               class_dir=concept.class_dir, concepts=())


def concept_index(prompt: str, identifiers: list[str]) -> int:
    """The first concept whose identifier is a word of the prompt; 0 when none is."""
    return next((index for index, identifier in enumerate(identifiers) if names_identifier(prompt, identifier)), 0)


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
