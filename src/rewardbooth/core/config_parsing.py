"""The machinery under every config tree (the training config, a sweep file): fields with their help, reading
YAML/TOML, `a.b.c=value` overrides, and building frozen dataclasses with every value coerced to its field's type.

Errors are UserErrors naming the key (`train.max_steps`, `method.lora.rank`) and what it accepts.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

import yaml

from rewardbooth.core.errors import UserError


def config_field(default: Any, help: str) -> Any:
    """A dataclass field whose ``help`` is its documentation (``--help-config``)."""
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults so configs stay immutable")
    return field(default=default, metadata={"help": help})


def read_source(source: str | Path, presets: dict[str, Path] | None = None) -> dict[str, Any]:
    """The mapping in a YAML/TOML file, or in a preset's file (`presets`: name -> path)."""
    presets = presets or {}
    path = Path(source)
    if not path.exists() and str(source) in presets:
        path = presets[str(source)]
    if not path.is_file():
        choices = f" or a preset ({', '.join(presets)})" if presets else ""
        raise UserError(f"config {str(source)!r} not found: give a YAML/TOML file{choices}")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            tree = tomllib.loads(text)
        else:
            tree = yaml.safe_load(text) or {}
    except Exception as error:  # noqa: BLE001 - any parse error is the user's file
        raise UserError(f"config {str(path)!r} is not valid {path.suffix.lstrip('.') or 'YAML'}: {error}".replace("\n", " ")) from None
    if not isinstance(tree, dict):
        raise UserError(f"config {str(path)!r} must be a mapping of sections (model:, data:, train:, ...)")
    return tree


# Top-level keys of a config file that are notes about its values, not values (rewardbooth.core.presets).
NOTE_KEYS = ("_why", "_vram")


def split_notes(tree: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the config's sections, its notes: NOTE_KEYS -> their mappings)."""
    return ({key: value for key, value in tree.items() if key not in NOTE_KEYS},
            {key: value for key, value in tree.items() if key in NOTE_KEYS})


def parse_override(override: str) -> tuple[str, Any]:
    """'key=value' -> (key, the value as YAML reads it)."""
    key, sep, raw = override.partition("=")
    if not sep:
        raise UserError(f"override {override!r} has no '=': write it as section.key=value")
    value = yaml.safe_load(raw) if raw.strip() else ""
    return key.strip(), value


def text_override(cls: type, key: str, override: str, value: Any) -> Any:
    """A text field's override as written when YAML read it as a mapping or list: a path such as
    `runs/x: y` or `photos {2024}` names a folder, not a YAML mapping."""
    hint: Any = cls
    for part in key.split("."):
        hints = typing.get_type_hints(hint) if dataclasses.is_dataclass(hint) else {}
        if part not in hints:
            return value
        hint = hints[part]
    text_only = hint is str or set(typing.get_args(hint)) == {str, type(None)}
    return override.partition("=")[2].strip() if text_only and isinstance(value, (dict, list)) else value


def set_key(tree: dict[str, Any], key: str, value: Any, override: str) -> None:
    """tree[a][b][c] = value for key 'a.b.c', making the mappings on the way."""
    *path, name = key.split(".")
    node = tree
    for part in path:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"override {override!r}: {key.rsplit('.', 1)[0]} is not a section of keys")
    node[name] = value


def build_dataclass(cls: type, tree: Any, prefix: str = "", renamed: dict[str, str] | None = None) -> Any:
    """A frozen dataclass from a mapping, every value coerced to its field's type (UserError naming the key).

    `renamed` maps old full keys to new ones: an old key fails with one line naming its new name."""
    if not isinstance(tree, dict):
        raise UserError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {tree!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(tree) - set(fields))
    for name in unknown:
        if f"{prefix}{name}" in (renamed or {}):
            raise UserError(f"{prefix}{name} was renamed {renamed[prefix + name]} (0.1.0)")
    if unknown:
        raise UserError(f"unknown config key '{prefix}{unknown[0]}': known keys are {', '.join(prefix + k for k in fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in tree.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = build_dataclass(hint, value, prefix=f"{prefix}{name}.", renamed=renamed)
        else:
            values[name] = _coerce(value, hint, f"{prefix}{name}")
    return cls(**values)


def leaf_values(instance: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf key of a dataclass tree with its value, e.g. {'method.lora.rank': 4, ...}; a field holding a
    mapping (objective.reward_options) or a tuple is one leaf."""
    values = {}
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            values.update(leaf_values(value, f"{prefix}{f.name}."))
        else:
            values[f"{prefix}{f.name}"] = value
    return values


def lookup(tree: dict[str, Any], key: str, default: Any = None) -> Any:
    """tree[a][b][c] for key 'a.b.c', or `default` where the path is missing."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _coerce(value: Any, hint: Any, key: str) -> Any:
    if hint is Any:  # passed through as YAML gave it (e.g. a sweep's override values)
        return value
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, prefix=f"{key}.")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, key)
    if origin is dict:
        return _coerce_mapping(value, args[1], key)
    if origin is Literal:
        if isinstance(value, bool) and all(isinstance(a, str) for a in args):
            value = "yes" if value else "no"  # YAML 1.1 reads a bare no/yes as a boolean
        if value not in args:
            raise UserError(f"bad value {value!r} for {key}: allowed values are {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise UserError(f"bad value {value!r} for {key}: expected a list")
        return tuple(_coerce(item, args[0], key) for item in items)
    if hint in _SCALARS:
        return _coerce_scalar(value, hint, key)
    raise TypeError(f"config field {key} has an unsupported type {hint}")


def _coerce_union(value: Any, args: tuple, key: str) -> Any:
    if value is None and type(None) in args:
        return None
    inner = [a for a in args if a is not type(None)]
    mappings = [a for a in inner if typing.get_origin(a) is dict]
    if isinstance(value, dict) and mappings:
        return _coerce(value, mappings[0], key)
    sequences = [a for a in inner if typing.get_origin(a) is tuple]
    if isinstance(value, (list, tuple, str)) and sequences:  # `bool | tuple[str, ...]`: a list, or one item
        return _coerce(value, sequences[0], key)
    return _coerce(value, next((a for a in inner if a not in mappings), inner[0]), key)


def _coerce_mapping(value: Any, value_hint: Any, key: str) -> dict[str, Any]:
    """{name: value}; a `dict` value hint means keyword arguments, passed through as they are."""
    if not isinstance(value, dict):
        raise UserError(f"bad value {value!r} for {key}: expected a mapping, e.g. {{name: value}}")
    if value_hint is dict:
        bad = [k for k, v in value.items() if not isinstance(v, dict)]
        if bad:
            raise UserError(f"bad value for {key}.{bad[0]}: expected a mapping of keyword arguments")
        return {str(k): dict(v) for k, v in value.items()}
    return {str(k): _coerce(v, value_hint, f"{key}.{k}") for k, v in value.items()}


def _to_float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return float(value)  # YAML 1.1 reads "1e-6" as a string
    except (TypeError, ValueError):
        return None


# type -> (accepts value?, convert, what to say when it does not)
_SCALARS: dict[type, tuple[typing.Callable[[Any], bool], typing.Callable[[Any], Any], str]] = {
    bool: (lambda v: isinstance(v, bool), bool, "allowed values are true, false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), int, "expected an integer"),
    float: (lambda v: not isinstance(v, bool) and _to_float(v) is not None, _to_float, "expected a number"),
    str: (lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool), str, "expected a string"),
}


def _coerce_scalar(value: Any, hint: type, key: str) -> Any:
    accepts, convert, expected = _SCALARS[hint]
    if not accepts(value):
        raise UserError(f"bad value {value!r} for {key}: {expected}")
    return convert(value)


def non_finite(value: Any) -> float | None:
    """The first inf or nan anywhere in a config value (numbers inside {name: weight} maps and options too)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else value
    inner = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return next((bad for bad in map(non_finite, inner) if bad is not None), None)
