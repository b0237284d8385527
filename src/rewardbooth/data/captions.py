"""Per-image captions: `photo.txt` beside `photo.jpg`, as kohya sd-scripts (`--caption_extension .txt`) and
SimpleTuner (`caption_strategy: textfile`) read them, and what a caption must say about the subject.

A caption is the file's text with its whitespace collapsed to single spaces (a multi-line file is one caption);
an empty file counts as no caption. A photo without one trains with its concept's prompt, as it always did.

DreamBooth binds the subject to its identifier, so every instance caption must name it (`data.caption_identifier`):
- `insert` (default): a caption that does not is completed: the identifier goes before the first occurrence of
  the class noun (the word after the identifier in data.instance_prompt: 'a dog on a sofa' ->
  'a sks dog on a sofa'), else the identifier and the class noun are prepended as kohya's trigger phrase
  ('sofa, window light' -> 'sks dog, sofa, window light');
- `require`: a caption without it is refused, naming the file.
Class-image captions (a user's own class photos) must not name it: they teach the class, not the subject.
"""

from __future__ import annotations

import re
from pathlib import Path

from rewardbooth.core.errors import UserError
from rewardbooth.data.images import names_identifier

CAPTION_SUFFIX = ".txt"


def read_caption(image_path: Path) -> str | None:
    """The caption beside an image (`photo.txt` for `photo.jpg`), whitespace collapsed; None without one.

    Raises:
        UserError: the caption file cannot be read as UTF-8 text.
    """
    path = Path(image_path).with_suffix(CAPTION_SUFFIX)
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a BOM written by Windows editors is not a word
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"caption file '{path}' cannot be read as UTF-8 text ({type(err).__name__}); "
                        f"save it as UTF-8 or remove it") from None
    caption = " ".join(text.split())
    return caption or None


def class_noun(instance_prompt: str, identifier: str) -> str | None:
    """The word right after the identifier in the instance prompt ('a photo of sks dog' -> 'dog'), if any."""
    match = re.search(rf"(?<!\w){re.escape(identifier)}\s+(\w[\w-]*)", instance_prompt)
    return match.group(1) if match else None


def with_identifier(caption: str, instance_prompt: str, identifier: str, mode: str, path: Path) -> str:
    """The caption a photo trains with: as written when it names the identifier, else completed (`insert`) or
    refused (`require`)."""
    if names_identifier(caption, identifier):
        return caption
    if mode == "require":
        raise UserError(f"caption '{path.with_suffix(CAPTION_SUFFIX)}' does not name the identifier '{identifier}'; add it (e.g. "
                        f"'{_example(instance_prompt, identifier)}') or set data.caption_identifier=insert")
    noun = class_noun(instance_prompt, identifier)
    if noun is not None:
        found = re.search(rf"(?<!\w){re.escape(noun)}(?!\w)", caption, flags=re.IGNORECASE)
        if found:
            return f"{caption[:found.start()]}{identifier} {caption[found.start():]}"
    phrase = identifier if noun is None else f"{identifier} {noun}"
    return f"{phrase}, {caption}"


def instance_captions(paths: list[Path], instance_prompt: str, identifier: str, mode: str) -> list[str]:
    """Each photo's training prompt: its caption (identifier handled by `mode`) or the instance prompt."""
    prompts = []
    for path in paths:
        caption = read_caption(path)
        prompts.append(instance_prompt if caption is None
                       else with_identifier(caption, instance_prompt, identifier, mode, path))
    return prompts


def class_captions(paths: list[Path], class_prompt: str, identifier: str) -> list[str]:
    """Each class image's prompt: its caption, which must not name the subject, or the class prompt."""
    prompts = []
    for path in paths:
        caption = read_caption(path)
        if caption is not None and names_identifier(caption, identifier):
            raise UserError(f"class-image caption '{path.with_suffix(CAPTION_SUFFIX)}' names the identifier "
                            f"'{identifier}', which defeats prior preservation; describe the class only")
        prompts.append(class_prompt if caption is None else caption)
    return prompts


def _example(instance_prompt: str, identifier: str) -> str:
    noun = class_noun(instance_prompt, identifier)
    return f"{identifier} {noun}, on a sofa" if noun else f"{identifier}, on a sofa"
