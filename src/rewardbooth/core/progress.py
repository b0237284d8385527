"""Progress that reads well both on a terminal and in a log file.

On a terminal: a tqdm bar. Anywhere else (a log file, CI, `nohup`): tqdm would write hundreds of
carriage-return updates, so instead one line per tenth of the work and one at the end, each with the
elapsed time and the latest postfix (the training losses), on stderr.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

LOG_LINES = 10  # lines per job off a terminal (plus the last one)


class LogProgress:
    """The part of tqdm's interface the commands use (iterate, update, set_postfix, close), as log lines."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 initial: int = 0, disable: bool = False):
        self.iterable, self.desc, self.n, self.disable = iterable, desc, initial, disable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.postfix, self.started, self.closed = "", time.perf_counter(), False
        self._printed_at = initial

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        every = max(1, (self.total or LOG_LINES * 10) // LOG_LINES)
        if self.n // every > self._printed_at // every and self.n != self.total:
            self._print()

    def set_postfix(self, values: dict[str, Any] | None = None, refresh: bool = True) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in (values or {}).items())

    def close(self) -> None:
        if not self.closed and self.n != self._printed_at:
            self._print()
        self.closed = True

    def _print(self) -> None:
        self._printed_at = self.n
        if self.disable:
            return
        done = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {done} ({time.perf_counter() - self.started:.0f} s{extra})", file=sys.stderr, flush=True)


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", initial: int = 0,
             disable: bool = False, **tqdm_options: Any):
    """A tqdm bar on a terminal, LogProgress lines elsewhere; same arguments as tqdm's."""
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, initial=initial, disable=disable, **tqdm_options)
    return LogProgress(iterable, total=total, desc=desc, initial=initial, disable=disable)


def write_line(line: str) -> None:
    """A line above a running bar (tqdm.write) on a terminal; a plain stderr line elsewhere."""
    if sys.stderr.isatty():
        tqdm.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)


def quiet_libraries() -> None:
    """Keep the terminal for our progress bars: no per-call pipeline bars or library chatter."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Set before diffusers imports torchao (when installed, for model.quantize): on a CPU machine torchao warns
    # "Failed to load" for each CUDA kernel library it skips, and torch's pytree about its Enum registrations.
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import diffusers
    import transformers
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.WARNING)
