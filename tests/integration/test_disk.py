"""A failed write, injected at the OS level where each writer writes (tests/faults.py: an LD_PRELOAD shim on
write/pwrite/writev, or the kernel's RLIMIT_FSIZE), costs one line and nothing already written: no
half-written model or checkpoint is left behind, every earlier checkpoint stays, the trained weights of a
finished run are kept somewhere, and the line says where and how to go on."""

import errno
import json

import pytest
from diffusers import StableDiffusionPipeline

from faults import REASONS, build_shim, error_line, run_faulty, run_file_size_limited
from helpers import run_cli, tiny_args

# The tiny model's checkpoint: its two model files (~4.0 MB: unet, critic) come first, then optimizer.bin
# (~8 MB, torch's zip writer). A budget between the two makes torch's writer, not safetensors', hit the fault.
INSIDE_OPTIMIZER_BIN = 6_000_000


@pytest.fixture(scope="module")
def fault_shim(tmp_path_factory):
    return build_shim(tmp_path_factory.mktemp("shim"))


def one_line(capsys) -> str:
    """The error line of an in-process run (progress bars of the steps before it share stderr)."""
    text = capsys.readouterr().err.strip()
    error = text[text.rindex("error: "):]
    assert "\n" not in error and "Traceback" not in text, text
    return error


def test_quota_at_the_final_save_keeps_the_weights_in_a_fallback_folder(fault_shim, subject_dir, tmp_path):
    out, fallback = tmp_path / "run", tmp_path / "fallback"
    args = tiny_args(subject_dir, out, "train.max_steps=1", "validation.every=0")
    result = run_faulty(fault_shim, args, [out / ".result.partial"], "EDQUOT",
                        env={"REWARDBOOTH_FALLBACK_DIR": str(fallback)})
    assert result.returncode == 2
    line = error_line(result)
    assert "cannot write the trained model" in line and REASONS["EDQUOT"] in line, line
    rescued = next(fallback.iterdir())
    assert f"saved to {str(rescued)!r} instead" in line
    # The run folder has no model and nothing half-written; the fallback folder is the whole result.
    assert not (out / "model_index.json").exists() and not (out / ".result.partial").exists()
    assert StableDiffusionPipeline.from_pretrained(rescued).unet is not None
    assert (rescued / "critic.safetensors").is_file() and (rescued / "config.yaml").is_file()


def test_full_disk_everywhere_at_the_final_save_keeps_the_checkpoints(fault_shim, subject_dir, tmp_path, caplog):
    out, fallback = tmp_path / "run", tmp_path / "fallback"
    args = tiny_args(subject_dir, out, "train.max_steps=2", "validation.every=0", "train.checkpoint_every=1")
    result = run_faulty(fault_shim, args, [out / ".result.partial", fallback], "ENOSPC",
                        env={"REWARDBOOTH_FALLBACK_DIR": str(fallback)})
    assert result.returncode == 2
    line = error_line(result)
    assert "cannot write the trained model" in line and REASONS["ENOSPC"] in line, line
    assert "every checkpoint is kept" in line and "train.resume=latest (it continues from step_000002)" in line
    assert not (out / ".result.partial").exists() and not (out / "model_index.json").exists()
    assert list(fallback.iterdir()) == []  # the failed fallback is cleaned up too
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000001", "step_000002"]
    # Once there is space, resuming at max_steps saves the finished run's model, and says so.
    assert run_cli([*args, "train.resume=latest"]) == 0
    assert "step_000002 is at train.max_steps=2" in caplog.text
    assert StableDiffusionPipeline.from_pretrained(out).unet is not None


def test_file_size_limit_at_the_final_save_is_one_line(subject_dir, tmp_path):
    """The kernel's own EFBIG (ulimit -f 2 MB): the UNet file of the result cannot be written anywhere."""
    out, fallback = tmp_path / "run", tmp_path / "fallback"
    result = run_file_size_limited(tiny_args(subject_dir, out, "train.max_steps=1", "validation.every=0"),
                                   limit=2_000_000, env={"REWARDBOOTH_FALLBACK_DIR": str(fallback)})
    assert result.returncode == 2
    line = error_line(result)
    assert "cannot write the trained model" in line and REASONS["EFBIG"] in line, line
    assert "trained weights are lost" in line and "train.overwrite=true" in line
    assert not (out / ".result.partial").exists() and list(fallback.iterdir()) == []


def test_quota_inside_torchs_checkpoint_writer_names_the_quota(fault_shim, subject_dir, tmp_path):
    """torch's zip writer says only "unexpected pos N vs M": the line must name the disk problem instead."""
    out = tmp_path / "run"
    args = tiny_args(subject_dir, out, "train.max_steps=3", "validation.every=0", "train.checkpoint_every=1")
    result = run_faulty(fault_shim, args, [out / "checkpoints" / "step_000002.partial"], "EDQUOT",
                        after_bytes=INSIDE_OPTIMIZER_BIN)
    assert result.returncode == 2
    line = error_line(result)
    assert "cannot write checkpoint step_000002" in line and REASONS["EDQUOT"] in line, line
    assert "unexpected pos" not in line and "continue from step_000001 with train.resume=latest" in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000001"]
    assert run_cli([*args, "train.resume=latest"]) == 0 and (out / "model_index.json").is_file()


def test_file_too_large_at_generate_is_one_line(fault_shim, tmp_path):
    out = tmp_path / "images"
    result = run_faulty(fault_shim, ["generate", "tiny", "--prompt", "a photo of sks dog", "--num-images", "1",
                                     "--num-inference-steps", "1", "--resolution", "64", "--output", str(out)],
                        [out], "EFBIG")
    assert result.returncode == 2
    assert REASONS["EFBIG"] in error_line(result)


def test_read_only_report_folder_at_evaluate_is_one_line(fault_shim, subject_dir, tmp_path):
    generated, out = tmp_path / "generated", tmp_path / "report"
    assert run_cli(["generate", "tiny", "--prompt", "a photo of sks dog", "--num-images", "1",
                    "--num-inference-steps", "1", "--resolution", "64", "--output", str(generated)]) == 0
    result = run_faulty(fault_shim, ["evaluate", str(generated), "--subject", str(subject_dir), "--output", str(out),
                                     "--metrics", "toy_fidelity"], [out], "EROFS")
    assert result.returncode == 2
    assert REASONS["EROFS"] in error_line(result)


def test_a_result_is_replaced_whole(subject_dir, tmp_path):
    out = tmp_path / "run"
    args = tiny_args(subject_dir, out, "train.max_steps=1", "validation.every=0", "train.checkpoint_every=1")
    assert run_cli(args) == 0
    (out / "unet" / "stale.txt").write_text("from the first save")
    assert run_cli([*args, "train.resume=latest", "train.max_steps=2"]) == 0
    assert not (out / "unet" / "stale.txt").exists() and not (out / ".result.partial").exists()
    assert json.loads((out / "model_index.json").read_text())["unet"]


def test_full_disk_anywhere_else_is_one_line(subject_dir, tmp_path, monkeypatch, capsys):
    import rewardbooth.training.loop

    def no_space(config, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(rewardbooth.training.loop, "save_config", no_space)
    assert run_cli(tiny_args(subject_dir, tmp_path / "run", "train.max_steps=1")) == 2
    assert "config.yaml: no space left on device" in one_line(capsys)


@pytest.mark.parametrize("message, reason", [
    ("Error while serializing: I/O error: Disk quota exceeded (os error 122)", REASONS["EDQUOT"]),
    ("Error while serializing: I/O error: File too large (os error 27)", REASONS["EFBIG"]),
    ("[enforce fail at inline_container.cc:672] . unexpected pos 6240832 vs 6240724", "a write failed"),
])
def test_every_writer_s_way_of_saying_it_is_a_disk_error(message, reason, tmp_path):
    from rewardbooth.core.storage import is_disk_error, write_failure_reason

    error = RuntimeError(message)
    assert is_disk_error(error)
    assert write_failure_reason(error, tmp_path, probe=tmp_path).startswith(reason)
    assert not is_disk_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
