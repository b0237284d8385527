"""Several subjects in one run (Custom Diffusion's multi-concept training, Kumari et al. 2023, §3.2).

The first concept is `data.instance_dir / instance_prompt / identifier / class_prompt`; `data.concepts` adds
more, each with its own photos, prompt and identifier. Training batches draw uniformly over every concept's
photos (so a concept with more photos is seen more often, as in diffusers' train_custom_diffusion.py), with
each photo's own prompt; prior preservation draws from every concept's class images likewise.

Rewards that compare with the subject are built once per concept (rewardbooth.rewards.concepts); a sample
belongs to the first concept whose identifier its prompt names (`concept_index`).
"""

from __future__ import annotations

import dataclasses

from rewardbooth.core.config import ConceptConfig, DataConfig
from rewardbooth.core.errors import UserError
from rewardbooth.data.images import names_identifier


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
