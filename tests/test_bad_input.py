"""Bad input: a one-line error naming the problem and the fix, exit status 2, and nothing written."""

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
    fails_cleanly(tiny_args(subject_dir, out, f"model.pretrained={tmp_path / 'no-model'}"), capsys,
                  "cannot load model")
    assert not out.exists()


def test_prompt_without_identifier(subject_dir, tmp_path, capsys):
    out = tmp_path / "out"
    fails_cleanly(tiny_args(subject_dir, out, "data.instance_prompt=a photo of a dog"), capsys,
                  "does not contain the identifier 'sks'")
    assert not out.exists()


@pytest.mark.parametrize("override,expected", [
    ("train.max_step=5", "unknown config key 'train.max_step'"),
    ("objective.name=ppo", "allowed values are 'baseline', 'dpg'"),
    ("train.mixed_precision=fp8", "allowed values are 'no', 'fp16', 'bf16'"),
    ("critic.name=transformer", "unknown critic 'transformer': choose one of conv, pooled"),
    ("objective.reward=dino9", "unknown reward 'dino9'"),
    ("method.name=hypernet", "unknown base method 'hypernet'"),
    ("train.batch_size=0", "train.batch_size"),
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
    fails_cleanly(tiny_args(subject_dir, out), capsys, "is not empty", "train.resume=latest", "train.overwrite=true")
    fails_cleanly(tiny_args(subject_dir, out, "train.overwrite=true"), capsys, "does not look like a RewardBooth run")
    fails_cleanly(tiny_args(subject_dir, out, "train.resume=latest"), capsys, "holds no checkpoint")
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    assert (out / "precious.txt").read_text() == "keep me"


def test_overwrite_replaces_a_previous_run(subject_dir, tmp_path):
    out = tmp_path / "out"
    args = tiny_args(subject_dir, out, "train.max_steps=1", "validation.every=0")
    assert run_cli(args) == 0
    (out / "stale.txt").write_text("from the old run")
    assert run_cli([*args, "train.overwrite=true"]) == 0
    assert not (out / "stale.txt").exists() and (out / "model_index.json").exists()


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
