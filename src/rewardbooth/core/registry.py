"""Name -> factory registries: the seams where base methods, rewards, critics and loaders plug in.

A registry entry can be named three ways: a registered name (``"conv"``), a dotted path to any
importable attribute (``"my_pkg.rewards:make_sharpness"``), or the factory object itself when
RewardBooth is driven from Python.

A dotted path is code: one the user typed (a config passed to `train`, a command-line option) is imported,
one read from a saved run's config.yaml (a run someone else may have made) only under `trusting_run`.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from rewardbooth.core.errors import UserError

# The config.yaml whose names are being resolved while its code is not trusted (None: the user's own names).
_untrusted_source: ContextVar[Path | None] = ContextVar("untrusted_source", default=None)


@contextlib.contextmanager
def names_from_saved_run(config_file: Path, trust_remote_code: bool = False) -> Iterator[None]:
    """Resolve names read from a saved run's `config_file`: registered names as usual, a dotted path only
    with `trust_remote_code` (the run may come from anyone; its `package.module:factory` is their code)."""
    token = _untrusted_source.set(None if trust_remote_code else Path(config_file))
    try:
        yield
    finally:
        _untrusted_source.reset(token)


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
    source = _untrusted_source.get()
    if source is not None:
        raise UserError(f"{kind} {path!r} is code named by {source}, which anyone may have written: it is not "
                        f"imported; if you trust whoever made that run, install its package and pass "
                        f"--trust-remote-code")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UserError(f"cannot import {kind} {path!r} ({error}); install the package that provides it "
                        f"(your own code: `pip install -e` its project), never a downloaded folder") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise UserError(f"{kind} {path!r}: module {module_name!r} has no callable {attribute!r}")
    return factory
