"""Publishing a run's result: written whole into a staging folder, then moved into the run folder; never lost.

A failed write at the final save (a full disk, a quota, a file-size limit, a read-only remount) leaves no
half-written model and no `.result.partial` behind. The trained weights are still in memory then, so they
are written to a fallback folder on another file system (`$REWARDBOOTH_FALLBACK_DIR`, else the system temp
folder when it is on another file system), whose path the error line gives; if that fails too, the run's
checkpoints are what is kept, and the line says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from rewardbooth.core.errors import UserError
from rewardbooth.core.storage import is_disk_error, nearest_existing, publish, write_failure_reason
from rewardbooth.training.checkpoints import list_checkpoints
from rewardbooth.training.output_folder import write_marker

logger = logging.getLogger(__name__)

RESULT_STAGING = ".result.partial"  # the result is written here whole, then moved into the run folder
FALLBACK_VARIABLE = "REWARDBOOTH_FALLBACK_DIR"


def publish_result(output_dir: Path, write: Callable[[Path], None]) -> None:
    """Write the run's result atomically: `write(folder)` fills a staging folder, then its entries are moved
    into the run folder (rewardbooth.core.storage.publish), after the marker recorded their names. A failed
    write raises UserError saying where the weights went; no checkpoint is touched either way."""
    staging = output_dir / RESULT_STAGING
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        write(staging)
        write_marker(output_dir, result=[entry.name for entry in staging.iterdir()])
    except Exception as error:
        if not is_disk_error(error):
            shutil.rmtree(staging, ignore_errors=True)
            raise
        reason = write_failure_reason(error, output_dir, probe=staging if staging.is_dir() else None)
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"cannot write the trained model to {str(output_dir)!r}: {reason}; "
                        f"{rescue(output_dir, write)}") from None
    publish(staging, output_dir)


def rescue(output_dir: Path, write: Callable[[Path], None]) -> str:
    """Save the in-memory result to a fallback folder; the words saying what is kept and how to go on."""
    checkpoints = list_checkpoints(output_dir)
    fallback = save_fallback(output_dir, write)
    if fallback is not None:
        kept = (f"; every checkpoint is kept too (train.resume=latest continues from {checkpoints[-1].name} "
                f"once there is space)" if checkpoints else "")
        return f"the trained model was saved to {str(fallback)!r} instead: move it where you want it{kept}"
    if checkpoints:
        return (f"every checkpoint is kept: free some space, then run again with train.resume=latest (it "
                f"continues from {checkpoints[-1].name})")
    return (f"no fallback folder took it either (set {FALLBACK_VARIABLE} to a folder on another disk) and with no "
            f"checkpoint (train.checkpoint_every=0) the trained weights are lost: free some space, then run "
            f"again with train.overwrite=true")


def fallback_base(output_dir: Path) -> Path | None:
    """Where a rescued result goes: the user's choice, else the temp folder if it is on another file system
    (the same one would most likely fail the same way)."""
    chosen = os.environ.get(FALLBACK_VARIABLE)
    if chosen:
        return Path(chosen).expanduser()
    base = Path(tempfile.gettempdir())
    try:
        same = os.stat(base).st_dev == os.stat(nearest_existing(output_dir)).st_dev
    except OSError:
        return None
    return None if same else base


def save_fallback(output_dir: Path, write: Callable[[Path], None]) -> Path | None:
    """Write the result (and the run's config.yaml, which names its base model) to a new folder under the
    fallback base; None, with nothing left there, if that fails too."""
    base = fallback_base(output_dir)
    if base is None:
        return None
    folder = None
    try:
        base.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"rewardbooth-{output_dir.name}-", dir=base))
        write(folder)
        with contextlib.suppress(OSError):
            shutil.copy2(output_dir / "config.yaml", folder / "config.yaml")
    except Exception as error:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        if not is_disk_error(error):
            raise
        logger.warning("could not save the trained model to the fallback folder %s either: %s", base, error)
        return None
    logger.warning("saved the trained model to the fallback folder %s", folder)
    return folder
