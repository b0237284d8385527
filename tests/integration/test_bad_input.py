"""Bad input: a one-line error naming the problem and the fix, exit status 2, and nothing written."""

from pathlib import Path

import pytest

from helpers import run_cli, tiny_args


def fails_cleanly(argv, capsys, *expected):
    assert run_cli(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error, error
    for fragment in expected:
        assert fragment in error, error
    return error


def test_missing_subject_folder(tmp_path, capsys):
    out = tmp_path / "out"
    fails_cleanly(tiny_args(tmp_path / "nope", out), capsys, "nope", "data.instance_dir")
    assert not out.exists()


def test_empty_subject_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    fails_cleanly(tiny_args(tmp_path / "empty", out), capsys, "empty")
    assert not out.exists()


def test_subject_folder_without_readable_image(tmp_path, capsys):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("hello")
    out = tmp_path / "out"
    fails_cleanly(tiny_args(folder, out), capsys, "no readable image")
    assert not out.exists()


def test_unreadable_model(subject_dir, tmp_path, capsys):
    out = tmp_path / "out"
    (tmp_path / "junk-model").mkdir()
    (tmp_path / "junk-model" / "model_index.json").write_text("{not json")
    fails_cleanly(tiny_args(subject_dir, out, f"model.pretrained={tmp_path / 'junk-model'}"), capsys,
                  "cannot load model")
    assert not out.exists()


def test_missing_model_folder_is_not_sent_to_the_hub(subject_dir, tmp_path, capsys):
    out = tmp_path / "out"
    error = fails_cleanly(tiny_args(subject_dir, out, f"model.pretrained={tmp_path / 'no-model'}"), capsys,
                          "no-model' does not exist", "pass an existing diffusers folder")
    assert "huggingface.co" not in error
    assert not out.exists()


def test_offline_hub_id_not_on_this_machine(subject_dir, tmp_path, capsys):
    out = tmp_path / "out"
    error = fails_cleanly(tiny_args(subject_dir, out, "model.pretrained=someone/not-downloaded"), capsys,
                          "HF_HUB_OFFLINE=1", "hf download someone/not-downloaded")
    assert "model_index.json" not in error  # the file is not the problem; nothing is downloaded (one line: no warning)
    assert not out.exists()


def test_class_prompt_naming_the_subject_is_refused(subject_dir, tmp_path, capsys):
    out, classes = tmp_path / "out", tmp_path / "classes"
    fails_cleanly(tiny_args(subject_dir, out, "data.prior_preservation=true", f"data.class_dir={classes}",
                            "data.class_prompt=a photo of sks dog"), capsys,
                  "contains the identifier 'sks'", "defeats prior preservation")
    assert not out.exists() and not classes.exists()


def test_read_only_output_folder_fails_before_any_work(subject_dir, tmp_path, capsys, monkeypatch):
    import os

    from rewardbooth.core import storage

    locked, classes = tmp_path / "locked", tmp_path / "classes"
    locked.mkdir()
    real_access = os.access
    # Root writes through permission bits, so the read-only folder is simulated where it is asked about.
    monkeypatch.setattr(storage.os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    fails_cleanly(tiny_args(subject_dir, locked / "run", "data.prior_preservation=true", f"data.class_dir={classes}"),
                  capsys, "train.output_dir=", "is not writable", "read-only")
    assert not classes.exists() and not any(locked.iterdir())


def test_prompt_without_identifier(subject_dir, tmp_path, capsys):
    out = tmp_path / "out"
    fails_cleanly(tiny_args(subject_dir, out, "data.instance_prompt=a photo of a dog"), capsys,
                  "does not contain the identifier 'sks'")
    assert not out.exists()


@pytest.mark.parametrize("override,expected", [
    ("train.max_step=5", "unknown config key 'train.max_step'"),
    ("objective.name=ppo", "unknown objective 'ppo': choose one of baseline, direct, dpg"),
    ("train.mixed_precision=fp8", "allowed values are 'no', 'fp16', 'bf16'"),
    ("critic.name=transformer", "unknown critic 'transformer': choose one of conv, feature, pooled"),
    ("objective.reward=dino9", "unknown reward 'dino9'"),
    ("validation.reward=dino9", "unknown reward 'dino9'"),
    ("method.name=hypernet", "unknown base method 'hypernet'"),
    ("train.batch_size=0", "train.batch_size"),
    ("method.lora_rank=2", "method.lora_rank was renamed method.lora.rank (0.1.0)"),
])
def test_bad_config_values(override, expected, subject_dir, tmp_path, capsys):
    out = tmp_path / "out"
    fails_cleanly(tiny_args(subject_dir, out, override), capsys, expected)
    assert not out.exists()


def test_resolution_not_a_multiple_of_the_model_factor(subject_dir, tmp_path, capsys):
    out = tmp_path / "out"
    fails_cleanly(tiny_args(subject_dir, out, "data.resolution=60"), capsys, "data.resolution=60",
                  "multiple of 8", "use 56 or 64")
    assert not out.exists()


def test_non_empty_output_folder_is_left_alone(subject_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    # Not a run: neither resume nor overwrite would be accepted, so neither is advised.
    for extra in ((), ("train.overwrite=true",), ("train.resume=latest",)):
        error = fails_cleanly(tiny_args(subject_dir, out, *extra), capsys, "is not empty",
                              "does not look like a RewardBooth run", "choose an empty or new train.output_dir")
        assert "train.overwrite=true" not in error and "train.resume" not in error
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    assert (out / "precious.txt").read_text() == "keep me"


def test_non_empty_run_folder_names_resume_and_overwrite(subject_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = tiny_args(subject_dir, out, "train.max_steps=1", "validation.every=0")
    assert run_cli(args) == 0
    capsys.readouterr()
    fails_cleanly(args, capsys, "is not empty", "train.resume=latest", "train.overwrite=true")
    fails_cleanly([*args, "train.resume=latest"], capsys, "holds no checkpoint", "train.overwrite=true")


def test_resuming_with_another_nested_setting_names_it(subject_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = tiny_args(subject_dir, out, "train.max_steps=2", "train.checkpoint_every=1", "validation.every=0",
                     "method.name=lora")
    assert run_cli(args) == 0
    capsys.readouterr()
    fails_cleanly([*args, "train.resume=latest", "method.lora.rank=8"], capsys,
                  "cannot resume: method.lora.rank was 4 in this run and is 8 now")


def test_overwrite_replaces_a_previous_run(subject_dir, tmp_path):
    out = tmp_path / "out"
    args = tiny_args(subject_dir, out, "train.max_steps=1", "validation.every=0")
    assert run_cli(args) == 0
    (out / "unet" / "stale.txt").write_text("from the old run")
    (out / "notes.txt").write_text("a user's, not the run's")  # overwrite removes only what a run wrote
    assert run_cli([*args, "train.overwrite=true"]) == 0
    assert not (out / "unet" / "stale.txt").exists() and (out / "model_index.json").exists()
    assert (out / "notes.txt").is_file()


def test_missing_config_file(tmp_path, capsys):
    fails_cleanly(["train", str(tmp_path / "nope.yaml")], capsys, "not found", "default", "paper")


def test_corrupt_image_among_good_ones_is_skipped_with_a_warning(subject_dir, tmp_path, caplog):
    import shutil

    folder = tmp_path / "mixed"
    shutil.copytree(subject_dir, folder)
    (folder / "zz_corrupt.png").write_bytes(b"\x89PNG garbage")
    out = tmp_path / "out"
    assert run_cli(tiny_args(folder, out, "train.max_steps=1", "validation.every=0")) == 0
    assert "zz_corrupt.png" in caplog.text


def test_8bit_adam_without_bitsandbytes(subject_dir, tmp_path, capsys):
    try:
        import bitsandbytes  # noqa: F401
        pytest.skip("bitsandbytes is installed")
    except ImportError:
        pass
    out = tmp_path / "out"
    fails_cleanly(tiny_args(subject_dir, out, "train.use_8bit_adam=true"), capsys, "bitsandbytes",
                  "train.use_8bit_adam=false")
    assert not out.exists()


def test_a_users_own_class_photos_are_used(subject_dir, tmp_path):
    import shutil

    classes = tmp_path / "classes"
    classes.mkdir()
    for index, photo in enumerate(sorted(subject_dir.iterdir())[:2]):
        shutil.copy(photo, classes / f"my dog {index}.jpg")
    out = tmp_path / "out"
    assert run_cli(tiny_args(subject_dir, out, "train.max_steps=1", "validation.every=0",
                             "data.prior_preservation=true", f"data.class_dir={classes}")) == 0
    assert sorted(p.name for p in classes.iterdir()) == ["my dog 0.jpg", "my dog 1.jpg"]  # none generated


def test_a_corrupt_class_image_is_skipped_with_a_warning(subject_dir, tmp_path, caplog):
    classes = tmp_path / "classes"
    classes.mkdir()
    (classes / "class_00000.png").write_bytes(b"\x89PNG garbage")
    out = tmp_path / "out"
    assert run_cli(tiny_args(subject_dir, out, "train.max_steps=1", "validation.every=0",
                             "data.prior_preservation=true", f"data.class_dir={classes}")) == 0
    assert "class_00000.png" in caplog.text and "cannot decode" in caplog.text
    assert (classes / "class_00000.png").read_bytes() == b"\x89PNG garbage"  # the user's file is left alone
    assert len(list(classes.glob("class_*.png"))) == 3


def test_a_mistyped_lr_scheduler_fails_before_any_work(subject_dir, tmp_path, capsys):
    out, classes = tmp_path / "out", tmp_path / "classes"
    fails_cleanly(tiny_args(subject_dir, out, "train.lr_scheduler=cosinee", "data.prior_preservation=true",
                            f"data.class_dir={classes}"), capsys, "train.lr_scheduler", "allowed values are", "'cosine'")
    assert not out.exists() and not classes.exists()  # refused while reading the config: no class image drawn
