"""Whose folder it is: `train.overwrite` removes only what a run wrote, one run per folder (a second one is
refused while the first finishes intact), and resume survives odd folders and refuses crafted files."""

import json
import os
import pickle
import shutil
import signal
import time

import pytest
from diffusers import StableDiffusionPipeline

from helpers import run_cli, run_subprocess, tiny_args

RUN = ["train.max_steps=2", "train.checkpoint_every=1", "validation.every=0"]


@pytest.fixture(scope="module")
def finished_run(subject_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert run_cli(tiny_args(subject_dir, out, *RUN)) == 0
    return out


def copy_of(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def listing(folder):
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def error_line(capsys) -> str:
    text = capsys.readouterr().err.strip()
    line = text[text.rindex("error: "):]
    assert "\n" not in line and "Traceback" not in text, text
    return line


def test_overwrite_refuses_a_folder_with_a_config_and_a_users_photos(finished_run, subject_dir, tmp_path, capsys):
    out = tmp_path / "photos"
    out.mkdir()
    shutil.copy(finished_run / "config.yaml", out / "config.yaml")
    (out / "holiday.jpg").write_bytes(b"\xff\xd8 a user's photo")
    (out / "notes").mkdir()
    (out / "notes" / "todo.txt").write_text("keep me")
    before = listing(out)
    assert run_cli(tiny_args(subject_dir, out, *RUN, "train.overwrite=true")) == 2
    line = error_line(capsys)
    assert "train.overwrite=true refused" in line and "'holiday.jpg' and 1 more" in line and "nothing was deleted" in line
    assert listing(out) == before and (out / "notes" / "todo.txt").read_text() == "keep me"


def test_another_project_s_config_yaml_does_not_make_a_folder_a_run(subject_dir, tmp_path, capsys):
    out = tmp_path / "project"
    out.mkdir()
    (out / "config.yaml").write_text("name: my project\nepochs: 3\n")
    (out / "model_index.json").write_text('{"unet": ["diffusers", "UNet2DConditionModel"]}')
    (out / "unet").mkdir()
    before = listing(out)
    for extra in ("train.overwrite=true", "train.resume=latest"):
        assert run_cli(tiny_args(subject_dir, out, *RUN, extra)) == 2
        assert "does not look like a RewardBooth run" in error_line(capsys)
    assert listing(out) == before


def test_overwrite_removes_only_what_a_run_wrote(finished_run, subject_dir, tmp_path):
    out = copy_of(finished_run, tmp_path)
    (out / "notes.txt").write_text("a user's notes")
    (out / "photos").mkdir()
    (out / "photos" / "dog.jpg").write_bytes(b"\xff\xd8")
    assert run_cli(tiny_args(subject_dir, out, "train.max_steps=1", "train.checkpoint_every=1", "validation.every=0",
                             "train.overwrite=true")) == 0
    assert (out / "notes.txt").read_text() == "a user's notes" and (out / "photos" / "dog.jpg").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000001"]  # the old run is gone
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    marker = json.loads((out / ".rewardbooth-run").read_text())
    assert {"unet", "model_index.json", "critic.safetensors"} <= set(marker["result"])
    assert not (out / ".rewardbooth-lock").exists()


def as_from_before_the_marker(out):
    """A run made before the marker existed: no marker, and no model card either (both came later)."""
    for name in (".rewardbooth-run", "README.md", "MODEL_CARD.md"):
        (out / name).unlink(missing_ok=True)


def test_a_run_from_before_the_marker_resumes_and_is_overwritten_when_it_holds_only_its_own(finished_run,
                                                                                           subject_dir, tmp_path):
    out = copy_of(finished_run, tmp_path)
    as_from_before_the_marker(out)
    assert run_cli(tiny_args(subject_dir, out, "train.max_steps=3", "train.checkpoint_every=1",
                             "validation.every=0", "train.resume=latest")) == 0
    assert (out / ".rewardbooth-run").is_file() and (out / "checkpoints" / "step_000003").is_dir()
    as_from_before_the_marker(out)
    assert run_cli(tiny_args(subject_dir, out, "train.max_steps=1", "validation.every=0",
                             "train.overwrite=true")) == 0
    assert not (out / "checkpoints").exists() and (out / "model_index.json").is_file()


def test_a_second_run_on_the_folder_is_refused_and_the_first_finishes_intact(subject_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = tiny_args(subject_dir, out, "train.max_steps=4", "train.checkpoint_every=2", "validation.every=0")
    first = run_subprocess(args)
    try:
        while not (out / "config.yaml").exists() and first.poll() is None:
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)  # the first run holds the folder while the others try
        before = listing(out)
        for second in ([*args, "train.overwrite=true"], [*args, "train.resume=latest"], args):
            assert run_cli(second) == 2
            assert f"another RewardBooth run is using {str(out)!r}" in error_line(capsys)
        assert listing(out) == before  # the refused runs wrote nothing, removed nothing
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0, first.stdout.read()[-3000:]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000002", "step_000004"]
    assert StableDiffusionPipeline.from_pretrained(out).unet is not None
    assert run_cli([*args, "train.max_steps=5", "train.resume=latest"]) == 0  # released: the next run may go on


def test_a_lock_left_by_a_killed_run_does_not_block(finished_run, subject_dir, tmp_path):
    out = copy_of(finished_run, tmp_path)
    (out / ".rewardbooth-lock").write_text("")  # what SIGKILL leaves: the file, not the lock
    assert run_cli(tiny_args(subject_dir, out, "train.max_steps=3", "train.checkpoint_every=1",
                             "validation.every=0", "train.resume=latest")) == 0


def test_resume_ignores_what_is_not_a_finished_checkpoint(finished_run, subject_dir, tmp_path, caplog):
    out = copy_of(finished_run, tmp_path)
    checkpoints = out / "checkpoints"
    shutil.copytree(checkpoints / "step_000001", checkpoints / "step_000003.partial")  # a kill mid-save
    shutil.copytree(checkpoints / "step_000002", checkpoints / "step_000002 (copy)")  # a user's copy
    assert run_cli(tiny_args(subject_dir, out, "train.max_steps=3", "train.checkpoint_every=1",
                             "validation.every=0", "train.resume=latest")) == 0
    assert "ignores 2 entries" in caplog.text and "step_000002 (copy)" in caplog.text
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3] and (checkpoints / "step_000003").is_dir()  # continued from step_000002
    assert (checkpoints / "step_000002 (copy)").is_dir()  # a user's folder is never removed


def test_resume_past_max_steps_is_refused(finished_run, subject_dir, tmp_path, capsys):
    out = copy_of(finished_run, tmp_path)
    before = listing(out)
    assert run_cli(tiny_args(subject_dir, out, "train.max_steps=1", "train.checkpoint_every=1",
                             "validation.every=0", "train.resume=latest")) == 2
    assert "step_000002 is past train.max_steps=1" in error_line(capsys)
    assert listing(out) == before


class _RunsCode:
    """A pickle that runs code when loaded: what a crafted checkpoint file would hold."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name, replaces", [("optimizer.bin", "optimizer.bin"),
                                            ("pytorch_model.bin", "model.safetensors")])
def test_resume_refuses_a_crafted_accelerate_file(name, replaces, finished_run, subject_dir, tmp_path, capsys):
    out = copy_of(finished_run, tmp_path)
    checkpoint = out / "checkpoints" / "step_000002"
    os.remove(checkpoint / replaces)
    marker = tmp_path / "code-ran"
    (checkpoint / name).write_bytes(pickle.dumps(_RunsCode(marker)))
    assert run_cli(tiny_args(subject_dir, out, "train.max_steps=3", "train.checkpoint_every=1",
                             "validation.every=0", "train.resume=latest")) == 2
    line = error_line(capsys)
    assert "refusing to resume" in line and "is not a plain tensor file" in line, line
    assert not marker.exists()
