"""Name -> factory registries: the seams where base methods, rewards, critics and loaders plug in.

A registry entry can be named three ways: a registered name (``"conv"``), a dotted path to any
importable attribute (``"my_pkg.rewards:make_sharpness"``), or the factory object itself when
RewardBooth is driven from Python.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from rewardbooth.core.errors import UserError


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._factories: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def add(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._factories[name] = factory
            return factory

        return add

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: str) -> bool:
        return name in self._factories

    def get(self, name_or_factory: str | Callable[..., Any]) -> Callable[..., Any]:
        if callable(name_or_factory):
            return name_or_factory
        name = name_or_factory
        if name in self._factories:
            return self._factories[name]
        if ":" in name:
            return _import_attribute(name, self.kind)
        raise UserError(
            f"unknown {self.kind} {name!r}: choose one of {', '.join(self.names())} "
            f"or give your own as 'package.module:factory'"
        )


def _import_attribute(path: str, kind: str) -> Callable[..., Any]:
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UserError(f"cannot import {kind} {path!r} ({error}); check the module is on PYTHONPATH") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise UserError(f"{kind} {path!r}: module {module_name!r} has no callable {attribute!r}")
    return factory
