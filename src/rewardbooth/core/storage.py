"""Writing to disk without losing or half-writing anything: folders checked for writability before slow work,
disk errors turned into one line that names the way forward, and results published whole or not at all.

A full disk shows up differently per writer: Python's own files raise OSError(ENOSPC), safetensors reports
"No space left on device" in its message, and torch's zip writer only says that a write failed ("unexpected
pos", "file write failed"); for the last, the free space of the folder tells what happened.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from rewardbooth.core.errors import UserError

# The last bit of a nearly full disk: what is left after torch or safetensors gave up on a write.
_NEARLY_FULL_BYTES = 64 * 2**20
_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_TORCH_WRITE_FAILURES = ("file write failed", "unexpected pos", "PytorchStreamWriter failed")


def nearest_existing(path: Path) -> Path:
    """`path` itself, or the closest folder above it that exists (where it would be created)."""
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: Path, key: str) -> None:
    """Raise UserError unless `path` (a folder, existing or not) can be created and written."""
    existing = nearest_existing(path)
    if not existing.is_dir():
        raise UserError(f"{key}={str(path)!r} lies under {str(existing)!r}, which is a file: choose a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{key}={str(path)!r} is not writable ({str(existing)!r} is read-only for this user): "
                        f"choose a folder you can write to")


def is_disk_error(error: BaseException) -> bool:
    """Whether `error` is a failed write (as opposed to a bug), by any of the writers' ways of saying it."""
    if isinstance(error, OSError):
        return error.errno in (*_NO_SPACE, errno.EROFS, errno.EACCES, errno.EIO, errno.EFBIG)
    text = str(error)
    return "No space left on device" in text or "StorageFull" in text or any(
        marker in text for marker in _TORCH_WRITE_FAILURES)


def out_of_space(error: BaseException, folder: Path) -> bool:
    if isinstance(error, OSError) and error.errno in _NO_SPACE:
        return True
    if "No space left on device" in str(error) or "StorageFull" in str(error):
        return True
    try:
        return shutil.disk_usage(nearest_existing(folder)).free < _NEARLY_FULL_BYTES
    except OSError:
        return False


def describe_write_error(error: BaseException, what: str, folder: Path, advice: str) -> str:
    """One line: what could not be written where, why, and `advice` (what to do next)."""
    text = str(error).strip()
    if out_of_space(error, folder):
        reason = "no space left on device"
    else:
        reason = getattr(error, "strerror", None) or (text.splitlines()[0] if text else type(error).__name__)
    return f"cannot write {what} to {str(folder)!r}: {reason}; {advice}"


@contextlib.contextmanager
def disk_errors(what: str, folder: Path, advice: str, cleanup: Path | None = None) -> Iterator[None]:
    """Turn a failed write inside the block into one UserError line; `cleanup` (a partial folder) is removed
    first, so that a failed write leaves nothing half-written behind. Other errors pass through."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - only disk errors are translated, the rest re-raised
        if not is_disk_error(error):
            raise
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
        raise UserError(describe_write_error(error, what, folder, advice)) from None


def publish(staging: Path, folder: Path, marker: str = "model_index.json") -> None:
    """Move every entry of the finished `staging` folder into `folder`, replacing entries of the same name.

    Each move is a rename on the same file system, so nothing can run out of space here. `marker` (what
    stock loaders read first) is removed first and moved in last, so an interruption in between never leaves
    a folder that looks complete and is not."""
    entries = sorted(staging.iterdir(), key=lambda entry: entry.name == marker)
    if (staging / marker).exists():
        (folder / marker).unlink(missing_ok=True)
    for entry in entries:
        target = folder / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry, target)
    staging.rmdir()
