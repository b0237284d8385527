"""A full disk (simulated where the write happens) costs one line and nothing already written: no half-written
model or checkpoint is left behind, every earlier checkpoint stays, and the line says how to go on."""

import errno
import json
import shutil

import pytest
import torch
from diffusers import StableDiffusionPipeline

from helpers import run_cli, tiny_args


def one_line(capsys) -> str:
    """The error line (progress bars of the steps before it share stderr)."""
    text = capsys.readouterr().err.strip()
    error = text[text.rindex("error: "):]
    assert "\n" not in error and "Traceback" not in text, text
    return error


def fill_disk_during_save(monkeypatch):
    """The method's save writes part of the pipeline, then the disk is full."""
    from rewardbooth.methods import dreambooth

    def save(self, parts, output_dir):
        (output_dir / "unet").mkdir(parents=True)
        (output_dir / "unet" / "half.safetensors").write_bytes(b"\0" * 64)
        raise OSError(errno.ENOSPC, "No space left on device", str(output_dir / "unet"))

    monkeypatch.setattr(dreambooth.DreamBooth, "save", save)


@pytest.mark.parametrize("checkpoint_every, advice", [(1, "train.resume=latest (it continues from step_000002)"),
                                                      (0, "trained weights are lost")])
def test_full_disk_at_the_final_save(checkpoint_every, advice, subject_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = tiny_args(subject_dir, out, "train.max_steps=2", "validation.every=0",
                     f"train.checkpoint_every={checkpoint_every}")
    with monkeypatch.context() as patch:
        fill_disk_during_save(patch)
        assert run_cli(args) == 2
    error = one_line(capsys)
    assert "cannot write the trained model" in error and "no space left on device" in error and advice in error
    # Nothing half-written that a loader would take for a model; the run's checkpoints are all there.
    assert not (out / "model_index.json").exists() and not (out / "unet").exists()
    assert not (out / ".result.partial").exists() and (out / "config.yaml").is_file()
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir()) if checkpoint_every else []
    assert checkpoints == (["step_000001", "step_000002"] if checkpoint_every else [])
    again = [*args, "train.resume=latest"] if checkpoint_every else [*args, "train.overwrite=true"]
    assert run_cli(again) == 0
    assert StableDiffusionPipeline.from_pretrained(out).unet is not None


def test_a_result_is_replaced_whole(subject_dir, tmp_path):
    out = tmp_path / "run"
    args = tiny_args(subject_dir, out, "train.max_steps=1", "validation.every=0", "train.checkpoint_every=1")
    assert run_cli(args) == 0
    (out / "unet" / "stale.txt").write_text("from the first save")
    assert run_cli([*args, "train.resume=latest", "train.max_steps=2"]) == 0
    assert not (out / "unet" / "stale.txt").exists() and not (out / ".result.partial").exists()
    assert json.loads((out / "model_index.json").read_text())["unet"]


def test_full_disk_at_a_checkpoint_keeps_the_earlier_one(subject_dir, tmp_path, monkeypatch, capsys):
    from rewardbooth.core import storage

    out = tmp_path / "run"
    args = tiny_args(subject_dir, out, "train.max_steps=3", "validation.every=0", "train.checkpoint_every=1")
    real_save = torch.save

    def failing_save(obj, path, *rest, **kwargs):
        if "step_000002" in str(path) and str(path).endswith("lr_schedule.pt"):
            # What torch's zip writer raises when the disk fills under it: no errno, no mention of space.
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real_save(obj, path, *rest, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", failing_save)
        patch.setattr(storage.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0))
        assert run_cli(args) == 2
    error = one_line(capsys)
    assert "cannot write checkpoint step_000002" in error and "no space left on device" in error
    assert "continue from step_000001 with train.resume=latest" in error
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000001"]
    assert run_cli([*args, "train.resume=latest"]) == 0 and (out / "model_index.json").is_file()


def test_full_disk_anywhere_else_is_one_line(subject_dir, tmp_path, monkeypatch, capsys):
    import rewardbooth.training.loop

    def no_space(config, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(rewardbooth.training.loop, "save_config", no_space)
    assert run_cli(tiny_args(subject_dir, tmp_path / "run", "train.max_steps=1")) == 2
    assert "config.yaml: no space left on device" in one_line(capsys)
