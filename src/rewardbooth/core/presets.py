"""A preset's reasons: why each value it sets is what it is, and where that comes from, for
``rewardbooth train PRESET --help-config``.

A preset (or any YAML config) may carry two notes beside its sections, which loading strips
(rewardbooth.core.config.read_source) and only the help reads:

    _why:                       # dotted key -> its reason and source; every key one the file sets
      train.lr: {why: "the usual LoRA rate for a 12 B transformer", source: "ai-toolkit's FLUX example"}
    _vram: {estimate_gb: 40, why: "bf16 base 24 GB + ...", source: "estimate"}

`source` names a paper, a training script's default, a model card, or says "estimate". `check_notes` refuses
a reason for a key the file does not set (a stale reason) and a reason without its source.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewardbooth.core.config import Config, read_raw
from rewardbooth.core.config_parsing import leaf_values, split_notes
from rewardbooth.core.errors import UserError


@dataclass(frozen=True)
class Reason:
    why: str
    source: str

    def __str__(self) -> str:
        return f"{self.why} [source: {self.source}]"


@dataclass(frozen=True)
class PresetNotes:
    """A config file's reasons (dotted key -> Reason) and its memory estimate (None: it states none)."""

    reasons: dict[str, Reason] = field(default_factory=dict)
    vram: dict[str, Any] | None = None

    def without(self, overrides: typing.Sequence[str]) -> PresetNotes:
        """These notes minus the reasons of keys that `section.key=value` overrides replace (not the preset's)."""
        replaced = {override.partition("=")[0].strip() for override in overrides}
        return PresetNotes({key: reason for key, reason in self.reasons.items()
                            if not any(key == r or key.startswith(f"{r}.") for r in replaced)}, self.vram)


def set_keys(tree: dict[str, Any], prefix: str = "") -> set[str]:
    """The dotted keys a config mapping sets (method.lora.rank, not method.lora)."""
    keys = set()
    for key, value in tree.items():
        nested = isinstance(value, dict) and (f"{prefix}{key}" not in _MAPPING_KEYS)
        keys |= set_keys(value, f"{prefix}{key}.") if nested else {f"{prefix}{key}"}
    return keys


def mapping_keys(schema: type = Config, prefix: str = "") -> set[str]:
    """The dotted keys whose value may itself be a mapping ({name: weight}, options), read from the config's
    field types: a reason names such a key, not its entries."""
    keys = set()
    for name, hint in typing.get_type_hints(schema).items():
        if dataclasses.is_dataclass(hint):
            keys |= mapping_keys(hint, f"{prefix}{name}.")
        elif any(typing.get_origin(arm) is dict or arm is dict for arm in (hint, *typing.get_args(hint))):
            keys.add(f"{prefix}{name}")
    return keys


_MAPPING_KEYS = mapping_keys()


def preset_notes(source: str | Path) -> PresetNotes:
    """The notes of a config file or shipped preset, checked (UserError naming the first bad one)."""
    sections, notes = split_notes(read_raw(source))
    why = notes.get("_why") or {}
    if not isinstance(why, dict):
        raise UserError(f"config {str(source)!r}: _why must map dotted keys to {{why: ..., source: ...}}")
    known, reasons = set_keys(sections), {}
    for key, entry in why.items():
        if key not in known:
            raise UserError(f"config {str(source)!r}: _why names {key!r}, which the file does not set; remove the "
                            f"reason or set the key")
        if not (isinstance(entry, dict) and set(entry) == {"why", "source"} and all(entry.values())):
            raise UserError(f"config {str(source)!r}: _why.{key} must be {{why: TEXT, source: TEXT}}")
        reasons[key] = Reason(str(entry["why"]), str(entry["source"]))
    vram = notes.get("_vram")
    if vram is not None and not (isinstance(vram, dict) and {"estimate_gb", "why", "source"} <= set(vram)):
        raise UserError(f"config {str(source)!r}: _vram must be {{estimate_gb: N, why: TEXT, source: TEXT}}")
    return PresetNotes(reasons, vram)


def describe(config: Config | None = None, notes: PresetNotes | None = None) -> str:
    """Every key with its value in `config` (a preset's, say; default: the defaults) and, for a key the notes
    give a reason for, that reason and its source, else the field's help: ``--help-config``."""
    config, notes, lines = config or Config(), notes or PresetNotes(), []
    helps = _helps(Config)
    if notes.vram is not None:
        lines.append(f"# memory: ~{notes.vram['estimate_gb']} GB of accelerator memory (an ESTIMATE, not measured): "
                     f"{notes.vram['why']} [source: {notes.vram['source']}]")
    for section in dataclasses.fields(config):
        values = leaf_values(getattr(config, section.name), f"{section.name}.")
        lines += [f"{section.name}:"] + [f"  {key} = {value!r}  # {_note(key, notes, helps)}"
                                         for key, value in values.items()]
    return "\n".join(lines)


def _note(key: str, notes: PresetNotes, helps: dict[str, str]) -> str:
    reason = notes.reasons.get(key)
    return f"preset: {reason}  (key: {helps[key]})" if reason else helps[key]


def _helps(cls: type, prefix: str = "") -> dict[str, str]:
    hints, helps = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            helps.update(_helps(hints[f.name], f"{prefix}{f.name}."))
        else:
            helps[f"{prefix}{f.name}"] = f.metadata.get("help", "")
    return helps
