"""The output folder: refusing to clobber it, resumable checkpoints inside it, and the resume rules.

Layout of a run folder::

    model_index.json unet/ vae/ text_encoder/ ...   the result, a stock diffusers pipeline (written last)
    critic.safetensors                              the trained critic (DPG only)
    config.yaml                                     the resolved config of the run
    metrics.jsonl                                   one JSON line per logged step
    samples/step_000000.png ...                     validation grids
    checkpoints/step_000200/ ...                    accelerate states (models, optimizer, RNG), the LR schedule
                                                    and critic optimizer (lr_schedule.pt, critic_optimizer.pt)
                                                    and the loop's own state (train_state.json)

Nothing in a checkpoint can run code when it is resumed: accelerate loads its files with
``torch.load(weights_only=True)``, and so do we for ours (accelerate's `register_for_checkpointing` would
save them as pickles that it loads with ``weights_only=False``, executing whatever a crafted file holds).
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator

from rewardbooth.core.config import Config, flat_dict
from rewardbooth.core.config_parsing import lookup
from rewardbooth.core.errors import UserError
from rewardbooth.core.storage import check_writable, describe_write_error, disk_errors, is_disk_error, publish

CHECKPOINT_PREFIX = "step_"
RESULT_STAGING = ".result.partial"  # the result is written here whole, then moved into the run folder
STATE_FILE = "train_state.json"
# Keys that may differ between a run and its resumption without changing what is trained (a run folder may
# be moved or copied, so its own path is one of them).
RESUMABLE_CHANGES = {"train.resume", "train.overwrite", "train.max_steps", "train.checkpoint_every",
                     "train.checkpoints_total_limit", "train.log_every", "train.report_to", "train.output_dir"}


def list_checkpoints(output_dir: Path) -> list[Path]:
    folder = output_dir / "checkpoints"
    found = [p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if (p / STATE_FILE).is_file()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)))


def check_output_dir(config: Config) -> Path | None:
    """Decide, before anything is written, whether the run may use its output folder.

    Returns the checkpoint to resume from, or None for a fresh start. Raises UserError otherwise.
    """
    output_dir = Path(config.train.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"output path {str(output_dir)!r} is a file; set train.output_dir to a folder")
    check_writable(output_dir, "train.output_dir")
    occupied = output_dir.is_dir() and any(output_dir.iterdir())
    if occupied and not (output_dir / "config.yaml").is_file():
        # Neither resume nor overwrite applies to a folder that is not a run: say so, rather than advise them.
        raise UserError(f"output folder {str(output_dir)!r} is not empty and does not look like a RewardBooth run "
                        f"(no config.yaml), so it is left alone; choose an empty or new train.output_dir")
    if config.train.resume:
        checkpoint = _find_resume_checkpoint(config, output_dir, occupied)
        if checkpoint is not None:
            _check_same_run(config, output_dir)
        return checkpoint
    if occupied and not config.train.overwrite:
        raise UserError(f"output folder {str(output_dir)!r} is not empty; pass train.resume=latest to continue "
                        f"it, train.overwrite=true to replace it, or choose another train.output_dir")
    return None


def _find_resume_checkpoint(config: Config, output_dir: Path, occupied: bool) -> Path | None:
    if config.train.resume != "latest":
        checkpoint = Path(config.train.resume)
        if not (checkpoint / STATE_FILE).is_file():
            raise UserError(f"train.resume={config.train.resume!r} is not a checkpoint folder (no {STATE_FILE}); "
                            f"use 'latest' or a folder under {output_dir / 'checkpoints'}")
        return checkpoint
    checkpoints = list_checkpoints(output_dir)
    if checkpoints:
        return checkpoints[-1]
    if occupied:
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


def prepare_output_dir(config: Config, resuming: bool) -> Path:
    output_dir = Path(config.train.output_dir)
    if config.train.overwrite and not resuming and output_dir.is_dir():
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


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
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)  # the earlier checkpoints stay whole
        advice = (f"free some space, then continue from {previous[-1].name} with train.resume=latest" if previous
                  else "free some space (or set train.checkpoint_every=0), then run again with train.overwrite=true")
        raise UserError(describe_write_error(failure, f"checkpoint {final.name}", output_dir, advice) if failure
                        else f"another process could not write checkpoint {final.name} (see its error); {advice}")
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
        try:
            saved[name] = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f"refusing to resume from {str(checkpoint)!r}: {path.name} is not a plain tensor file "
                            f"and loading it could run code ({first_line}); resume from a checkpoint you trust") from None
        except (RuntimeError, EOFError, OSError) as error:
            raise UserError(f"cannot resume from {str(checkpoint)!r}: {path.name} is damaged ({error}); resume from "
                            f"an earlier checkpoint (train.resume=PATH) or start again").replace("\n", " ") from None
    accelerator.load_state(str(checkpoint))
    for name, obj in (stateful or {}).items():
        obj.load_state_dict(saved[name])
    state = json.loads((checkpoint / STATE_FILE).read_text())
    return state.pop("step"), state


def publish_result(output_dir: Path, write: Callable[[Path], None]) -> None:
    """Write the run's result atomically: `write(folder)` fills a staging folder, then its entries are moved
    into the run folder (rewardbooth.core.storage.publish). A failed write (a full disk) leaves no half-written
    model behind and one line that says what is kept; no checkpoint is touched either way."""
    staging = output_dir / RESULT_STAGING
    shutil.rmtree(staging, ignore_errors=True)
    checkpoints = list_checkpoints(output_dir)
    advice = (f"every checkpoint is kept: free some space, then run again with train.resume=latest (it continues "
              f"from {checkpoints[-1].name})" if checkpoints else "with no checkpoint (train.checkpoint_every=0) the "
              "trained weights are lost: free some space, then run again with train.overwrite=true")
    with disk_errors("the trained model", output_dir, advice, cleanup=staging):
        staging.mkdir()
        write(staging)
    publish(staging, output_dir)
