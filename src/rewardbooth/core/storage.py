"""Writing to disk without losing or half-writing anything: folders checked for writability before slow work,
disk errors turned into one line that names the way forward, and results published whole or not at all.

A failed write shows up differently per writer: Python's own files raise OSError with its errno, safetensors'
Rust writer puts the OS error in its message ("Disk quota exceeded (os error 122)"), and torch's zip writer
only says that a write failed ("unexpected pos 6240832 vs 6240724", "file write failed"). For the last, a
small probe write next to the failed file asks the OS what is wrong (a quota, a file-size limit and a full
disk fail it the same way), and the process's file-size limit and the free space are the fallbacks.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import resource
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rewardbooth.core.errors import UserError

# The last bit of a nearly full disk: what is left after torch or safetensors gave up on a write; also the
# most a probe writes to find out why a write failed.
_NEARLY_FULL_BYTES = 64 * 2**20
_PROBE_CHUNK = 2**20
EDQUOT = getattr(errno, "EDQUOT", errno.ENOSPC)
# The errors of a write that failed for the disk's sake (full, over quota, a file too large, read-only, gone).
WRITE_ERRNOS = (errno.ENOSPC, EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EIO)
_TORCH_WRITE_FAILURES = ("file write failed", "unexpected pos", "PytorchStreamWriter failed")
_OS_ERROR = re.compile(r"os error (\d+)")  # how Rust's io::Error (safetensors) names the errno


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


def error_number(error: BaseException) -> int | None:
    """The OS error number of a failed write: an OSError's own, or the one Rust's message names."""
    if isinstance(error, OSError) and error.errno:
        return error.errno
    match = _OS_ERROR.search(str(error))
    if match:
        return int(match[1])
    text = str(error)
    return errno.ENOSPC if "No space left on device" in text or "StorageFull" in text else None


def is_disk_error(error: BaseException) -> bool:
    """Whether `error` is a failed write (as opposed to a bug), by any of the writers' ways of saying it."""
    number = error_number(error)
    if number is not None:
        return number in WRITE_ERRNOS
    return any(marker in str(error) for marker in _TORCH_WRITE_FAILURES)


def probe_write(folder: Path) -> int | None:
    """Write up to 64 MiB to a scratch file in `folder` (then remove it): the errno it fails with, or None."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-") as scratch:
            chunk = b"\0" * _PROBE_CHUNK
            for _ in range(_NEARLY_FULL_BYTES // _PROBE_CHUNK):
                scratch.write(chunk)
                scratch.flush()
    except OSError as error:
        return error.errno
    return None


def write_failure_reason(error: BaseException, folder: Path, probe: Path | None = None) -> str:
    """Why a write failed, in the OS's words ("disk quota exceeded", "file too large", ...).

    `probe` is a folder on the same file system where a probe write may ask the OS, when the writer did not
    say (torch's zip writer)."""
    number = error_number(error)
    if number is None and probe is not None and probe.is_dir():
        number = probe_write(probe)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if number is None and limit != resource.RLIM_INFINITY:
        return f"file too large (this process may write files of at most {limit} bytes: see ulimit -f)"
    if number is None and _nearly_full(folder):
        number = errno.ENOSPC
    if number is not None:
        return os.strerror(number).lower()
    text = str(error).strip()
    return f"a write failed ({text.splitlines()[0] if text else type(error).__name__})"


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(nearest_existing(folder)).free < _NEARLY_FULL_BYTES
    except OSError:
        return False


def describe_write_error(error: BaseException, what: str, folder: Path, advice: str,
                         probe: Path | None = None) -> str:
    """One line: what could not be written where, why, and `advice` (what is kept, what to do next)."""
    return f"cannot write {what} to {str(folder)!r}: {write_failure_reason(error, folder, probe)}; {advice}"


@contextlib.contextmanager
def disk_errors(what: str, folder: Path, advice: str, cleanup: Path | None = None) -> Iterator[None]:
    """Turn a failed write inside the block into one UserError line; `cleanup` (a partial folder) is removed
    first, so that a failed write leaves nothing half-written behind. Other errors pass through."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - only disk errors are translated, the rest re-raised
        if not is_disk_error(error):
            raise
        message = describe_write_error(error, what, folder, advice, probe=cleanup)
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
        raise UserError(message) from None


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
