"""Resumable checkpoints inside the run folder: written whole or not at all, loaded without running code.

Layout of a run folder (rewardbooth.training.output_folder decides who may use it, and what
`train.overwrite` removes: only these entries)::

    .rewardbooth-run                                the marker: a RewardBooth run (run id, version, result entries)
    .rewardbooth-lock                               the lock of the run using the folder (while it runs)
    model_index.json unet/ vae/ text_encoder/ ...   the result, a stock diffusers pipeline (written last); LoRA
                                                    and Custom Diffusion write their weight files instead
    critic.safetensors                              the trained critic (DPG only)
    config.yaml                                     the resolved config of the run
    metrics.jsonl, metrics.png                      one JSON line per logged step, and their plot
    samples/step_000000.png ...                     validation grids
    best/                                           the best validation step's model (validation.reward)
    logs/                                           the trackers' logs (tensorboard)
    checkpoints/step_000200/ ...                    accelerate states (models, optimizer, RNG), the LR schedule
                                                    and critic optimizer (lr_schedule.pt, critic_optimizer.pt)
                                                    and the loop's own state (train_state.json)
    checkpoints/step_000300.partial/, .result.partial/   a checkpoint and the result while they are written

Nothing in a checkpoint can run code when it is resumed: accelerate loads its files with
``torch.load(weights_only=True)``, and so do we for ours (accelerate's `register_for_checkpointing` would
save them as pickles that it loads with ``weights_only=False``, executing whatever a crafted file holds).
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from rewardbooth.core.errors import UserError
from rewardbooth.core.storage import describe_write_error, is_disk_error

CHECKPOINT_PREFIX = "step_"
STATE_FILE = "train_state.json"
_CHECKPOINT_NAME = re.compile(rf"{CHECKPOINT_PREFIX}(\d+)")


def list_checkpoints(output_dir: Path) -> list[Path]:
    """The finished checkpoints, oldest first: `step_NNNNNN` folders that hold train_state.json. Anything else
    under checkpoints/ (a `.partial` a kill left, a user's "step_000002 (copy)") is not one."""
    folder = output_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(match[1]), path) for path in folder.iterdir()
             if (match := _CHECKPOINT_NAME.fullmatch(path.name)) and (path / STATE_FILE).is_file()]
    return [path for _, path in sorted(found)]


def stray_entries(output_dir: Path) -> list[str]:
    """What lies under checkpoints/ and is not a finished checkpoint (resume ignores it, with a warning)."""
    folder = output_dir / "checkpoints"
    finished = {path.name for path in list_checkpoints(output_dir)}
    return sorted(path.name for path in folder.iterdir() if path.name not in finished) if folder.is_dir() else []


def checkpoint_step(checkpoint: Path) -> int:
    """The step a checkpoint continues from, from its train_state.json."""
    try:
        return int(json.loads((checkpoint / STATE_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"cannot resume from {str(checkpoint)!r}: its {STATE_FILE} is damaged ({error}); resume "
                        f"from an earlier checkpoint (train.resume=PATH) or start again") from None


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, keep: int,
                    stateful: dict[str, Any] | None = None, state: dict | None = None) -> Path:
    """Write the full training state atomically: a checkpoint folder either exists whole or not at all.

    `stateful` objects (name -> an object with state_dict/load_state_dict of tensors and plain values, e.g. an
    LR scheduler) are saved as `<name>.pt`; `state` is the loop's own JSON-serialisable state (e.g. the
    critic's fit window), saved next to the step.
    """
    final = output_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:06d}"
    partial = final.with_name(final.name + ".partial")
    previous = list_checkpoints(output_dir)
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    failure = _disk_failure(accelerator.save_state, str(partial))
    if not _any_process(accelerator, failure is not None) and accelerator.is_main_process:
        failure = _disk_failure(_finish_checkpoint, partial, final, stateful or {}, {**(state or {}), "step": step})
    if _any_process(accelerator, failure is not None):
        advice = (f"free some space, then continue from {previous[-1].name} with train.resume=latest" if previous
                  else "free some space (or set train.checkpoint_every=0), then run again with train.overwrite=true")
        message = (describe_write_error(failure, f"checkpoint {final.name}", output_dir, advice,
                                        probe=partial if partial.is_dir() else None) if failure
                   else f"another process could not write checkpoint {final.name} (see its error); {advice}")
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)  # the earlier checkpoints stay whole
        raise UserError(message)
    if accelerator.is_main_process:
        for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old)  # only once the new checkpoint is whole
    accelerator.wait_for_everyone()
    return final


def _finish_checkpoint(partial: Path, final: Path, stateful: dict[str, Any], state: dict) -> None:
    for name, obj in stateful.items():
        torch.save(obj.state_dict(), partial / f"{name}.pt")
    (partial / STATE_FILE).write_text(json.dumps(state))
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)


def _disk_failure(write, *args) -> BaseException | None:
    """Run a write; the disk error it raised (a full disk, a read-only folder), or None. Bugs propagate."""
    try:
        write(*args)
    except Exception as error:  # noqa: BLE001 - anything but a disk error is re-raised
        if not is_disk_error(error):
            raise
        return error
    return None


def _any_process(accelerator: Accelerator, flag: bool) -> bool:
    """Whether any process raised `flag`: all of them then stop together, none waits for the others forever."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.gather(torch.tensor([float(flag)], device=accelerator.device)).max() > 0)


def load_checkpoint(accelerator: Accelerator, checkpoint: Path,
                    stateful: dict[str, Any] | None = None) -> tuple[int, dict]:
    """Restore the state saved by save_checkpoint; returns the step to continue from and the loop's state.

    Raises UserError, before anything is restored, for a file that is missing or is not plain tensors and
    values (a pickle that would run code is refused, not executed).
    """
    saved = {}
    for name in stateful or {}:
        path = checkpoint / f"{name}.pt"
        if not path.is_file():
            raise UserError(f"checkpoint {str(checkpoint)!r} has no {path.name} (written by an older version?); "
                            f"start the run again with train.overwrite=true")
        with _refusing_pickles(checkpoint, path.name):
            saved[name] = torch.load(path, map_location="cpu", weights_only=True)
    # accelerate's own files (optimizer.bin, scheduler.bin, pytorch_model.bin when there is no safetensors file)
    # are loaded with weights_only=True too: a crafted one is refused the same way.
    with _refusing_pickles(checkpoint, "a file accelerate saved (optimizer.bin, scheduler.bin, model weights)"):
        accelerator.load_state(str(checkpoint))
    for name, obj in (stateful or {}).items():
        obj.load_state_dict(saved[name])
    state = json.loads((checkpoint / STATE_FILE).read_text())
    return state.pop("step"), state


@contextlib.contextmanager
def _refusing_pickles(checkpoint: Path, what: str) -> Iterator[None]:
    """A file that is not plain tensors (a pickle that would run code) or is damaged: one UserError line."""
    try:
        yield
    except pickle.UnpicklingError as error:
        raise UserError(f"refusing to resume from {str(checkpoint)!r}: {what} is not a plain tensor file and "
                        f"loading it could run code ({_first_line(error)}); resume from a checkpoint you "
                        f"trust") from None
    except (EOFError, OSError, RuntimeError) as error:
        if isinstance(error, RuntimeError) and "PytorchStreamReader" not in str(error):
            raise  # a bug, not a damaged file
        raise UserError(f"cannot resume from {str(checkpoint)!r}: {what} is damaged ({_first_line(error)}); resume "
                        f"from an earlier checkpoint (train.resume=PATH) or start again") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
