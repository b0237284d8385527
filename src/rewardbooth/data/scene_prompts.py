"""Prompts without photos: recontextualisation prompts for training ("a sks dog sleeping on a sofa").

DreamBooth's loss needs a photo of each scene it trains; a reward does not. These prompts give the reward new
scenes to score the subject in (identity against the references, agreement with the prompt), while the
evaluation prompts stay held out: the shipped lists share no prompt and no context phrase with DreamBench's two
lists (`rewardbooth.data.dreambench`, checked by tests/unit/test_scene_prompts.py), and the toy world's list
(`rewardbooth.toyworld.subjects.scene_templates`) names only scenes and positions its held-out evaluation
prompts never name.

`data.scene_prompts` picks the list: `objects` or `live` (DreamBench's two class families), `toy`, or a text
file with one prompt per line. A template's `{subject}` is the subject as the instance prompt names it, from
the identifier on ("a photo of sks dog" -> "sks dog"), so every scene prompt carries its concept's identifier
(per-concept rewards route by it); a file's line without `{subject}` must name a concept's identifier itself.
"""

from __future__ import annotations

from pathlib import Path

from rewardbooth.core.errors import UserError
from rewardbooth.data.dreambench import context_phrases, read_prompt_file
from rewardbooth.data.images import names_identifier

SUBJECT = "{subject}"

# Scenes and settings DreamBench never asks for (its lists: rewardbooth.data.dreambench); no property changes
# (colour, material, shape), which would reward the subject for not looking like itself.
_OBJECT_CONTEXTS = [
    "on a kitchen table", "on a bookshelf in a library", "on a park bench", "in a desert at sunset",
    "on a wooden desk next to a laptop", "in a shop window", "on a stone wall by the sea", "in a field of lavender",
    "on a picnic blanket", "next to a fireplace", "on a train seat", "on a marble countertop",
    "in a living room with plants", "on a windowsill in the rain", "on a rock in a river", "under a street lamp at night",
]
_LIVE_CONTEXTS = [
    "sleeping on a sofa", "running through a park", "sitting in a car", "lying on a porch",
    "in a garden full of tulips", "next to a fireplace", "wearing a green bow tie", "wearing a knitted sweater",
    "on a sailing boat", "in a field of lavender", "at a picnic", "looking out of a window",
    "on a hiking trail", "in an autumn park", "on a kitchen floor", "under a street lamp at night",
]
SHIPPED = {"objects": _OBJECT_CONTEXTS, "live": _LIVE_CONTEXTS}


def shipped_templates(family: str) -> list[str]:
    """The shipped list of a class family, as templates: 'a {subject} on a kitchen table'."""
    return [f"a {SUBJECT} {context}" for context in SHIPPED[family]]


def subject_phrase(instance_prompt: str, identifier: str) -> str:
    """The subject as the instance prompt names it, from the identifier on: 'a photo of sks dog' -> 'sks dog'."""
    words = instance_prompt.split()
    if identifier not in words:
        raise UserError(f"instance prompt {instance_prompt!r} does not name the identifier {identifier!r} as a "
                        f"word, so scene prompts cannot name the subject: write it like 'a photo of {identifier} dog'")
    return " ".join(words[words.index(identifier):])


def scene_prompts_per_concept(templates: list[str], concepts: list[tuple[str, str]],
                              held_out: set[str] | None = None) -> dict[str, list[str]]:
    """{instance prompt: its scene prompts}. `concepts` are (instance prompt, identifier) pairs; a template with
    `{subject}` is written for every concept, one without it belongs to the concept whose identifier it names.
    A prompt whose context is `held_out` (default: DreamBench's) is refused."""
    lists: dict[str, list[str]] = {prompt: [] for prompt, _ in concepts}
    for template in templates:
        if SUBJECT in template:
            for prompt, identifier in concepts:
                lists[prompt].append(template.replace(SUBJECT, subject_phrase(prompt, identifier)))
            continue
        owner = next((prompt for prompt, identifier in concepts if names_identifier(template, identifier)), None)
        if owner is None:
            raise UserError(f"scene prompt {template!r} names no concept's identifier: write {SUBJECT} where the "
                            f"subject goes (e.g. 'a {SUBJECT} on a kitchen table')")
        lists[owner].append(template)
    for prompt, identifier in concepts:
        check_held_out(lists[prompt], subject_phrase(prompt, identifier),
                       context_phrases() if held_out is None else held_out)
        if not lists[prompt]:
            raise UserError(f"data.scene_prompts gives no prompt for the concept {prompt!r}: add lines naming "
                            f"its identifier, or use {SUBJECT}")
    return lists


def check_held_out(prompts: list[str], subject: str, contexts: set[str]) -> None:
    """Refuse a scene prompt that is an evaluation prompt: its context phrase is one of `contexts`."""
    for prompt in prompts:
        rest = prompt.split(subject, 1)[-1].strip()
        if rest in contexts:
            raise UserError(f"scene prompt {prompt!r} is a DreamBench evaluation prompt ({rest!r}): training on it "
                            f"would leak the evaluation; remove it from data.scene_prompts")


def held_out_contexts(source: str) -> set[str]:
    """What a scene prompt's context must not be: DreamBench's, except for the toy world, whose evaluation is held
    out by attribute instead (rewardbooth.toyworld.subjects.held_out_prompt_set)."""
    return set() if source == "toy" else context_phrases()


def scene_templates(source: str, toy_templates: list[str]) -> list[str]:
    """`data.scene_prompts` as templates: a shipped family, 'toy' (`toy_templates`, the toy world's), or a file."""
    if source in SHIPPED:
        return shipped_templates(source)
    if source == "toy":
        return list(toy_templates)
    path = Path(source)
    if not path.is_file():
        raise UserError(f"data.scene_prompts={source!r} is neither {', '.join([*SHIPPED, 'toy'])} nor a file: pass "
                        f"one of those or a text file with one prompt per line")
    return read_prompt_file(path)
