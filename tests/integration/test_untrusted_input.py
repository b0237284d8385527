"""Input a stranger made (a downloaded run) and runs that went wrong: no code of theirs runs, no broken model is
published as a success, and logs stay JSON."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import run_cli, tiny_args

# A module shipped inside a downloaded run folder: importing it and calling its factory leaves a marker.
EVIL = """from pathlib import Path
Path(__file__).with_name("MARKER").write_text("ran")


def factory(*args, **kwargs):
    Path(__file__).with_name("MARKER").write_text("ran")
    raise RuntimeError("a stranger's code ran")
"""


def fails_cleanly(argv, capsys, *expected, after_progress=False):
    """Exit 2 with one error line (`after_progress`: the last line, below a training run's progress bar)."""
    assert run_cli(argv) == 2
    error = capsys.readouterr().err.strip()
    if after_progress:
        error = error.splitlines()[-1]
    assert error.startswith("error: ") and "\n" not in error, error
    for fragment in expected:
        assert fragment in error, error
    return error


@pytest.fixture
def downloaded_run(tmp_path, monkeypatch):
    """A run folder whose config.yaml names `evil:factory`, with evil.py beside it, importable the way the working
    folder is under `python -m rewardbooth` (it is the working folder, and on sys.path)."""
    run = tmp_path / "downloaded"
    run.mkdir()
    (run / "evil.py").write_text(EVIL)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"pretrained": "evil:factory"},
                                                     "method": {"name": "evil:factory"},
                                                     "data": {"identifier": "sks"}}))
    monkeypatch.chdir(run)
    monkeypatch.syspath_prepend(str(run))
    monkeypatch.delitem(sys.modules, "evil", raising=False)
    yield run
    sys.modules.pop("evil", None)


def test_generate_never_imports_code_named_by_a_saved_run(downloaded_run, tmp_path, capsys):
    fails_cleanly(["generate", str(downloaded_run), "--prompt", "a photo of sks dog", "--output",
                   str(tmp_path / "gen")], capsys, "evil:factory", "config.yaml", "--trust-remote-code")
    assert not (downloaded_run / "MARKER").exists()
    assert not (tmp_path / "gen").exists()


def test_trust_remote_code_is_the_explicit_opt_in(downloaded_run, tmp_path):
    with pytest.raises(RuntimeError, match="a stranger's code ran"):
        run_cli(["generate", str(downloaded_run), "--prompt", "a photo of sks dog", "--trust-remote-code",
                 "--output", str(tmp_path / "gen")])
    assert (downloaded_run / "MARKER").exists()


def test_the_working_folder_is_not_importable_under_python_m(downloaded_run, tmp_path):
    # Even trusted, `python -m rewardbooth` run inside the folder does not import the module lying there.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    result = subprocess.run([sys.executable, "-m", "rewardbooth", "generate", ".", "--prompt", "a sks dog",
                             "--trust-remote-code", "--output", str(tmp_path / "gen")], cwd=downloaded_run, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "cannot import" in result.stderr and "PYTHONPATH" not in result.stderr, result.stderr
    assert not (downloaded_run / "MARKER").exists()


@pytest.mark.parametrize("option", ["--num-inference-steps", "--num-images"])
def test_generate_refuses_non_positive_counts(option, tmp_path, capsys):
    fails_cleanly(["generate", "tiny", "--prompt", "a sks dog", option, "-1", "--output", str(tmp_path / "gen")],
                  capsys, option, "at least 1")
    assert not (tmp_path / "gen").exists()


@pytest.mark.parametrize("name", ["./my-modle", "runs/typo"])
def test_a_mistyped_local_path_is_not_sent_to_the_hub(name, subject_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    out = tmp_path / "out"
    error = fails_cleanly(tiny_args(subject_dir, out, f"model.pretrained={name}"), capsys, "does not exist")
    assert "hf download" not in error
    assert not out.exists()


@pytest.mark.parametrize("override", ["train.lr=.inf", "critic.lr=.nan", "train.adam_beta1=.nan",
                                      "objective.reward={look_forward: .nan}"])
def test_non_finite_numbers_are_refused(override, subject_dir, tmp_path, capsys):
    out = tmp_path / "out"
    fails_cleanly(tiny_args(subject_dir, out, override, "train.max_steps=1", "validation.every=0"), capsys, "finite")
    assert not out.exists()


def test_a_diverging_run_stops_and_publishes_nothing(subject_dir, tmp_path, capsys):
    # The released recipe at 100x its policy lr: the critic's SGD diverges at step 2 (loss ~1e12, then inf).
    out = tmp_path / "out"
    error = fails_cleanly(tiny_args(subject_dir, out, "train.max_steps=12", "validation.every=0", preset="paper"),
                          capsys, "consecutive", "critic.lr", "train.max_skipped_steps", after_progress=True)
    assert not (out / "model_index.json").exists() and not (out / "unet").exists(), error
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 7 and [row["skipped"] for row in rows[-5:]] == [1.0] * 5
    assert all(value is None or math.isfinite(value) for row in rows for value in row.values()
               if not isinstance(value, str))


def test_steps_skipped_in_a_row_stop_the_run_naming_the_critic(subject_dir, tmp_path, capsys):
    out = tmp_path / "out"
    fails_cleanly(tiny_args(subject_dir, out, "objective.reward=nan_reward:make_always_nan", "train.max_steps=6",
                            "train.max_skipped_steps=2", "validation.every=0", "train.checkpoint_every=1"),
                  capsys, "training stopped at step 1: 2 consecutive steps", "critic.lr", after_progress=True)
    assert not (out / "model_index.json").exists()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_000001"]  # kept; none of the broken state
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_non_finite_weights_are_never_published(subject_dir, tmp_path):
    import torch
    from accelerate.state import AcceleratorState, GradientState

    from rewardbooth.core.config import load_config
    from rewardbooth.training.loop import finish
    from rewardbooth.training.setup import build_run

    out = tmp_path / "run"
    config = load_config("default", [*tiny_args(subject_dir, out)[2:], "validation.every=0"])
    out.mkdir()
    (out / "metrics.jsonl").write_text("")
    try:
        run = build_run(config)
        with torch.no_grad():
            next(run.method.trainable["unet"].parameters()).view(-1)[0] = float("nan")
        error = finish(run, config, 1, False, out, None)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    assert error is not None and "inf/nan" in str(error) and "unet: " in str(error)
    assert [p.name for p in out.iterdir()] == ["metrics.jsonl"]  # no model_index.json, no weights
