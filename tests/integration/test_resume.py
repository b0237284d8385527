"""A run killed with SIGKILL and resumed ends bitwise where an uninterrupted run ends (CPU)."""

import signal
import time

import pytest
from safetensors.torch import load_file

from helpers import assert_same_weights, run_cli, run_subprocess, tiny_args, weights

RUN = ["train.max_steps=30", "train.checkpoint_every=5", "validation.every=0", "method.train_text_encoder=true",
       "train.lr_scheduler=cosine", "train.lr_warmup_steps=3", "data.prior_preservation=true"]


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(subject_dir, tmp_path):
    reference = tmp_path / "uninterrupted"
    assert run_cli(tiny_args(subject_dir, reference, *RUN)) == 0

    interrupted = tmp_path / "interrupted"
    process = run_subprocess(tiny_args(subject_dir, interrupted, *RUN))
    checkpoint = interrupted / "checkpoints" / "step_000010"
    deadline = time.time() + 120
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stdout.read()
    assert not (interrupted / "model_index.json").exists(), "the run finished before it could be killed"

    assert run_cli(tiny_args(subject_dir, interrupted, *RUN, "train.resume=latest")) == 0
    for component in ("unet", "text_encoder"):
        assert_same_weights(weights(reference, component), weights(interrupted, component))
    assert_same_weights(load_file(reference / "critic.safetensors"), load_file(interrupted / "critic.safetensors"))
    assert (reference / "metrics.jsonl").read_text() == (interrupted / "metrics.jsonl").read_text()


def test_resume_refuses_a_changed_run(subject_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = tiny_args(subject_dir, out, "train.max_steps=2", "train.checkpoint_every=1", "validation.every=0")
    assert run_cli(args) == 0
    assert run_cli([*args, "train.resume=latest", "objective.gamma=0.5"]) == 2
    assert "objective.gamma was 1.0" in capsys.readouterr().err


def test_resume_with_a_longer_schedule_continues(subject_dir, tmp_path):
    out = tmp_path / "run"
    args = tiny_args(subject_dir, out, "train.checkpoint_every=2", "validation.every=0")
    assert run_cli([*args, "train.max_steps=2"]) == 0
    assert run_cli([*args, "train.max_steps=4", "train.resume=latest"]) == 0
    assert (out / "checkpoints" / "step_000004").is_dir()


class _RunsCode:
    """A pickle that runs code when loaded: what a crafted checkpoint file would hold."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["lr_schedule.pt", "critic_optimizer.pt"])
def test_resume_refuses_a_checkpoint_file_that_would_run_code(name, subject_dir, tmp_path, capsys):
    import pickle

    out = tmp_path / "run"
    args = tiny_args(subject_dir, out, "train.max_steps=2", "train.checkpoint_every=1", "validation.every=0")
    assert run_cli([*args, "train.max_steps=1"]) == 0
    checkpoint = out / "checkpoints" / "step_000001"
    assert sorted(p.name for p in checkpoint.glob("*.pkl")) == ["random_states_0.pkl"]  # accelerate's, weights_only
    marker = tmp_path / "code-ran"
    (checkpoint / name).write_bytes(pickle.dumps(_RunsCode(marker)))
    assert run_cli([*args, "train.resume=latest"]) == 2
    assert f"{name} is not a plain tensor file" in capsys.readouterr().err
    assert not marker.exists()


def test_a_moved_run_folder_resumes(subject_dir, tmp_path):
    import shutil

    first, moved = tmp_path / "first", tmp_path / "elsewhere" / "run"
    assert run_cli(tiny_args(subject_dir, first, "train.max_steps=1", "train.checkpoint_every=1",
                             "validation.every=0")) == 0
    moved.parent.mkdir()
    shutil.move(first, moved)
    assert run_cli(tiny_args(subject_dir, moved, "train.max_steps=2", "train.checkpoint_every=1", "validation.every=0",
                             "train.resume=latest")) == 0
    assert (moved / "checkpoints" / "step_000002").is_dir()


def test_readme_says_which_configs_run_code():
    from pathlib import Path

    text = " ".join((Path(__file__).parents[2] / "README.md").read_text().split())
    assert "names `package.module:factory`, for a reward, critic or model, imports and runs that code by design" in text
