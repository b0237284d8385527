"""Whose folder it is: the run marker, the one-run-per-folder lock, and what `train.overwrite` may remove.

A run folder is recognised by a marker file only RewardBooth writes (`.rewardbooth-run`, the first file a
run writes, holding the run id and the version). `train.overwrite=true` then removes only what a run writes
(`run_entries`) and keeps anything else a user put there. A folder without the marker but with a
`config.yaml` is a run made before the marker existed: it still resumes, and is overwritten only when it
holds nothing but what a run writes; any other folder is never touched.

One run per folder: the main process takes an OS lock (`flock` on `.rewardbooth-lock` in the folder; on
Windows `msvcrt.locking`) before anything is written and holds it until `train` returns; a second run on the
same folder is refused. A process killed with SIGKILL loses its lock with it (the kernel releases it), so a
stale lock file never blocks a resume. On a network file system the lock is only as good as the file
system's locking: NFS (v4, or v3 with the lock manager) carries `flock` across machines as a byte-range lock;
a mount with `nolock`, and some FUSE or SMB mounts, lock only on the one machine (a run started on another
machine is then not refused), and a file system that refuses locks gets a warning and no lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import yaml
from accelerate.utils import get_int_from_env

from rewardbooth import __version__
from rewardbooth.core.config import Config, flat_dict
from rewardbooth.core.config_parsing import lookup
from rewardbooth.core.errors import UserError
from rewardbooth.core.storage import check_writable
from rewardbooth.training.checkpoints import STATE_FILE, checkpoint_step, list_checkpoints, stray_entries

logger = logging.getLogger(__name__)

MARKER = ".rewardbooth-run"
LOCK = ".rewardbooth-lock"
# Every top-level entry a run writes (see rewardbooth.training.checkpoints for the layout), besides the
# result's own components, which model_index.json and the marker name.
RUN_FILES = {MARKER, LOCK, "config.yaml", "metrics.jsonl", "metrics.png", "critic.safetensors", "model_index.json",
             "samples", "checkpoints", "logs", "best", ".result.partial", "pytorch_lora_weights.safetensors",
             "pytorch_custom_diffusion_weights.safetensors",
             "pytorch_lora_weights_kohya.safetensors"}
_RANK_VARIABLES = ["RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMI_RANK"]
# Keys that may differ between a run and its resumption without changing what is trained (a run folder may
# be moved or copied, so its own path is one of them).
RESUMABLE_CHANGES = {"train.resume", "train.overwrite", "train.max_steps", "train.checkpoint_every",
                     "train.checkpoints_total_limit", "train.log_every", "train.report_to", "train.output_dir",
                     "train.max_skipped_steps"}  # when to give up on a diverged run, not what is trained


def is_main_launch_process() -> bool:
    """Whether this is the launch's process 0, read from the launcher's environment (torchrun, MPI), so that
    the lock is taken before accelerate (and the model) is set up."""
    return get_int_from_env(_RANK_VARIABLES, 0) == 0


def is_run(folder: Path) -> bool:
    """A RewardBooth run: it has the marker, or (made before the marker existed) a config.yaml that is a
    RewardBooth config (any other project's config.yaml does not make a folder ours)."""
    return (folder / MARKER).is_file() or _is_run_config(folder / "config.yaml")


def _is_run_config(path: Path) -> bool:
    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return isinstance(saved, dict) and {"model", "data", "train"} <= saved.keys()


def occupied(folder: Path) -> bool:
    """Whether the folder holds anything besides a lock file (a run killed early leaves only that)."""
    return folder.is_dir() and any(entry.name != LOCK for entry in folder.iterdir())


def result_entries(folder: Path) -> set[str]:
    """The names of the result's entries: those the marker recorded, the components model_index.json lists,
    and Custom Diffusion's token embeddings (`<token>.safetensors`)."""
    names = set(read_marker(folder).get("result", []))
    index = folder / "model_index.json"
    with contextlib.suppress(OSError, ValueError, AttributeError):
        names |= {key for key in json.loads(index.read_text()) if not key.startswith("_")}
    names |= {entry.name for entry in folder.glob("<*>.safetensors")}
    return names


def foreign_entries(folder: Path) -> list[str]:
    """What a run did not write: the entries `train.overwrite` leaves alone, sorted."""
    ours = RUN_FILES | result_entries(folder)
    return sorted(entry.name for entry in folder.iterdir() if entry.name not in ours)


def read_marker(folder: Path) -> dict:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def write_marker(folder: Path, result: list[str] | None = None) -> None:
    """Write (or update with the names of the published result) the marker; the run id stays."""
    marker = read_marker(folder) or {"run_id": uuid.uuid4().hex}
    marker.update(version=__version__, **({"result": sorted(result)} if result is not None else {}))
    (folder / MARKER).write_text(json.dumps(marker) + "\n")


def check_overwrite(folder: Path) -> None:
    """Raise UserError unless `train.overwrite` may clear this folder: a marked run (only its own entries go),
    or an unmarked one that holds nothing but what a run writes."""
    if (folder / MARKER).is_file():
        return
    foreign = foreign_entries(folder)
    if foreign:
        raise UserError(f"train.overwrite=true refused: {str(folder)!r} also holds {foreign[0]!r}"
                        f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}, which a RewardBooth run "
                        f"does not write, so nothing was deleted; move those files out or choose another "
                        f"train.output_dir")


def clear_run(folder: Path) -> None:
    """Remove what a run wrote (never the lock this process holds, never a user's entries)."""
    foreign = set(foreign_entries(folder))
    for entry in sorted(folder.iterdir()):
        if entry.name in foreign or entry.name == LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    if foreign:
        logger.warning("train.overwrite: kept %d entries a run does not write in %s (%s)", len(foreign), folder,
                       ", ".join(sorted(foreign)[:5]))


class FolderLock:
    """An exclusive, non-blocking OS lock on `<folder>/.rewardbooth-lock`, held while the object is open."""

    def __init__(self, folder: Path):
        self.folder, self.path, self.fd = folder, folder / LOCK, None
        self.created_folder = False

    def acquire(self) -> None:
        self.created_folder = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # the lock file may be removed by the run releasing it between open and lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd, self.path):
                os.close(fd)
                self.release()
                raise UserError(f"another RewardBooth run is using {str(self.folder)!r} (it holds {LOCK}); wait for "
                                f"it to finish, or choose another train.output_dir")
            if _same_file(fd, self.path):
                self.fd = fd
                return
            os.close(fd)
        raise UserError(f"could not lock {str(self.path)!r}: another run keeps replacing it; try again")

    def release(self) -> None:
        """Unlock; remove the lock file, and the folder if this lock made it and nothing else was written."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()  # while still locked: a run that opened it now sees another file and retries
            os.close(self.fd)
            self.fd = None
        if self.created_folder:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only if empty: a refused or failed start leaves nothing behind


def _try_lock(fd: int, path: Path) -> bool:
    """True if locked; False if another process holds it. A file system that cannot lock gets a warning."""
    try:
        if os.name == "nt":
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, errno.EDEADLK):
            return False
        logger.warning("cannot lock %s (%s): this file system does not support locks, so a second run on this "
                       "folder would not be refused", path, error.strerror)
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


@contextlib.contextmanager
def output_lock(output_dir: Path) -> Iterator[None]:
    """Hold the folder's lock (main process only) for the block; refuse at once if another run holds it."""
    if not is_main_launch_process():
        yield
        return
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"output path {str(output_dir)!r} is a file; set train.output_dir to a folder")
    check_writable(output_dir, "train.output_dir")
    lock = FolderLock(output_dir)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def check_output_dir(config: Config) -> Path | None:
    """Decide, before anything is written, whether the run may use its output folder.

    Returns the checkpoint to resume from, or None for a fresh start. Raises UserError otherwise.
    """
    output_dir = Path(config.train.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"output path {str(output_dir)!r} is a file; set train.output_dir to a folder")
    check_writable(output_dir, "train.output_dir")
    in_use = occupied(output_dir)
    if in_use and not is_run(output_dir):
        # Neither resume nor overwrite applies to a folder that is not a run: say so, rather than advise them.
        raise UserError(f"output folder {str(output_dir)!r} is not empty and does not look like a RewardBooth run (no "
                        f"{MARKER} or RewardBooth config.yaml), so it is left alone; choose an empty or new train.output_dir")
    if config.train.resume:
        checkpoint = _find_resume_checkpoint(config, output_dir, in_use)
        if checkpoint is not None:
            _check_same_run(config, output_dir)
            _check_within_max_steps(config, checkpoint)
        return checkpoint
    if in_use and not config.train.overwrite:
        raise UserError(f"output folder {str(output_dir)!r} is not empty; pass train.resume=latest to continue "
                        f"it, train.overwrite=true to replace it, or choose another train.output_dir")
    if in_use:
        check_overwrite(output_dir)
    return None


def _find_resume_checkpoint(config: Config, output_dir: Path, in_use: bool) -> Path | None:
    if config.train.resume != "latest":
        checkpoint = Path(config.train.resume)
        if not (checkpoint / STATE_FILE).is_file():
            raise UserError(f"train.resume={config.train.resume!r} is not a checkpoint folder (no {STATE_FILE}); "
                            f"use 'latest' or a folder under {output_dir / 'checkpoints'}")
        return checkpoint
    stray = stray_entries(output_dir)
    if stray and is_main_launch_process():
        logger.warning("train.resume=latest ignores %d entries under %s that are not finished checkpoints: %s",
                       len(stray), output_dir / "checkpoints", ", ".join(stray[:5]))
    checkpoints = list_checkpoints(output_dir)
    if checkpoints:
        return checkpoints[-1]
    if in_use:
        raise UserError(f"train.resume=latest but {str(output_dir)!r} holds no checkpoint; pass "
                        f"train.overwrite=true (without resume) to start it again")
    return None  # nothing to resume yet: a fresh start, so preemptible jobs can always pass resume=latest


def _check_same_run(config: Config, output_dir: Path) -> None:
    saved_file = output_dir / "config.yaml"
    if not saved_file.is_file():
        return
    saved = yaml.safe_load(saved_file.read_text())
    for name, value in flat_dict(config).items():
        if name.startswith("validation.") or name in RESUMABLE_CHANGES:
            continue
        old = lookup(saved, name)
        if old != value:
            raise UserError(f"cannot resume: {name} was {old!r} in this run and is {value!r} now; "
                            f"resume with the same setting or start a new train.output_dir")


def _check_within_max_steps(config: Config, checkpoint: Path) -> None:
    """A checkpoint past train.max_steps is refused (publishing it would pass off a longer run as the one
    asked for); one at max_steps is a finished run whose result is saved again (after a failed final save)."""
    step, max_steps = checkpoint_step(checkpoint), config.train.max_steps
    if step > max_steps:
        raise UserError(f"cannot resume: {checkpoint.name} is past train.max_steps={max_steps}; raise "
                        f"train.max_steps to continue it, or pass train.resume=PATH to a checkpoint at or before "
                        f"step {max_steps}")
    if step == max_steps and is_main_launch_process():
        logger.warning("%s is at train.max_steps=%d: nothing is left to train, its model is saved as the result",
                       checkpoint.name, max_steps)


def prepare_output_dir(config: Config, resuming: bool) -> Path:
    """Make the folder a run folder (main process, under the lock): clear what an overwritten run wrote,
    then write the marker, before anything else."""
    output_dir = Path(config.train.output_dir)
    if config.train.overwrite and not resuming and output_dir.is_dir():
        check_overwrite(output_dir)
        clear_run(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_marker(output_dir)
    return output_dir
