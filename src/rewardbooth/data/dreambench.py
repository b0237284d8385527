"""DreamBench (Ruiz et al. 2023, google/dreambooth `dataset/prompts_and_classes.txt`): the 30 subjects with
their class nouns and the two 25-prompt lists, objects and live subjects (cats and dogs). The lists share
their first 10 recontextualisation and last 5 property prompts; the middle 10 differ (scenes for objects,
accessories and outfits for live subjects). Every prompt reads "a {identifier} {class noun} ...".
"""

from __future__ import annotations

from pathlib import Path

from rewardbooth.core.errors import UserError

SUBJECT_CLASSES = {
    "backpack": "backpack", "backpack_dog": "backpack", "bear_plushie": "stuffed animal", "berry_bowl": "bowl",
    "can": "can", "candle": "candle", "cat": "cat", "cat2": "cat", "clock": "clock",
    "colorful_sneaker": "sneaker", "dog": "dog", "dog2": "dog", "dog3": "dog", "dog5": "dog", "dog6": "dog",
    "dog7": "dog", "dog8": "dog", "duck_toy": "toy", "fancy_boot": "boot", "grey_sloth_plushie": "stuffed animal",
    "monster_toy": "toy", "pink_sunglasses": "glasses", "poop_emoji": "toy", "rc_car": "toy",
    "red_cartoon": "cartoon", "robot_toy": "toy", "shiny_sneaker": "sneaker", "teapot": "teapot", "vase": "vase",
    "wolf_plushie": "stuffed animal",
}
LIVE_CLASSES = frozenset({"cat", "dog"})

_SHARED_FIRST = ["in the jungle", "in the snow", "on the beach", "on a cobblestone street", "on top of pink fabric",
                 "on top of a wooden floor", "with a city in the background", "with a mountain in the background",
                 "with a blue house in the background", "on top of a purple rug in a forest"]
_OBJECT_MIDDLE = ["with a wheat field in the background", "with a tree and autumn leaves in the background",
                  "with the Eiffel Tower in the background", "floating on top of water",
                  "floating in an ocean of milk", "on top of green grass with sunflowers around it",
                  "on top of a mirror", "on top of the sidewalk in a crowded street", "on top of a dirt road",
                  "on top of a white rug"]
_LIVE_MIDDLE = ["wearing a red hat", "wearing a santa hat", "wearing a rainbow scarf",
                "wearing a black top hat and a monocle", "in a chef outfit", "in a firefighter outfit",
                "in a police outfit", "wearing pink glasses", "wearing a yellow shirt", "in a purple wizard outfit"]
_PROPERTIES = ["red", "purple", "shiny", "wet", "cube shaped"]


def is_live(subject: str) -> bool:
    return subject_class(subject) in LIVE_CLASSES


def subject_class(subject: str) -> str:
    if subject not in SUBJECT_CLASSES:
        raise UserError(f"unknown DreamBench subject {subject!r}: choose one of {', '.join(SUBJECT_CLASSES)}")
    return SUBJECT_CLASSES[subject]


def prompt_templates(live: bool) -> list[str]:
    """The 25 prompts with `{0}` for the identifier and `{1}` for the class noun, in the published order."""
    middle = _LIVE_MIDDLE if live else _OBJECT_MIDDLE
    return ([f"a {{0}} {{1}} {context}" for context in _SHARED_FIRST + middle]
            + [f"a {adjective} {{0}} {{1}}" for adjective in _PROPERTIES])


def context_phrases() -> set[str]:
    """Every recontextualisation phrase of the two lists ('in the jungle', 'wearing a red hat', ...)."""
    return set(_SHARED_FIRST + _OBJECT_MIDDLE + _LIVE_MIDDLE)


def prompts_for(subject: str, identifier: str = "sks") -> list[str]:
    """DreamBench's 25 prompts for one of its 30 subjects, e.g. 'a sks dog in the jungle'."""
    return [template.format(identifier, subject_class(subject)) for template in prompt_templates(is_live(subject))]


def read_prompt_file(path: Path) -> list[str]:
    """A user's prompt set: one prompt per line; blank lines and lines starting with '#' are skipped."""
    if not path.is_file():
        raise UserError(f"prompt file {str(path)!r} does not exist: pass a text file with one prompt per line")
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not prompts:
        raise UserError(f"prompt file {str(path)!r} has no prompts: write one prompt per line")
    return prompts
