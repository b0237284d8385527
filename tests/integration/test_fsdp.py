"""The FSDP example config (examples/accelerate/fsdp-flux.yaml) on tiny-flux with two CPU processes (gloo).

accelerate 1.16 runs FSDP only on accelerator devices: on CPU processes it keeps DDP (`AcceleratorState`
selects FSDP for MULTI_GPU, MULTI_XPU, ... but not MULTI_CPU). tests/fsdp_on_cpu.py runs the lines that branch
skips for MULTI_CPU, so the sharding itself (torch fully_shard), the sharded checkpoints and the full-state
gather are the engines' own code; the first test checks that without it the config is ignored, with a warning.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from safetensors.torch import load_file

from helpers import run_cli, tiny_args, weights
from rewardbooth.core.config import ModelConfig
from rewardbooth.models import load_model

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "accelerate" / "fsdp-flux.yaml"
SHIM = ROOT / "tests" / "fsdp_on_cpu.py"
# A zero-start critic, as in test_distributed.py: the residual prior's rounding-noise first loss makes the
# critic updates part for reasons unrelated to how the processes share the batch.
RUN = ["model.pretrained=tiny-flux", "method.name=dreambooth", "objective.name=dpg", "validation.every=0",
       "train.max_steps=4", "train.checkpoint_every=2", "train.checkpoints_total_limit=2",
       "critic.residual_prior=false"]


def launch(program: list[str], args: list[str], log: Path) -> subprocess.CompletedProcess:
    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [launcher, "launch", "--config_file", str(CONFIG), "--num_processes", "2",
               "--main_process_port", str(port), *program, *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    log.write_text(done.stdout + done.stderr)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done


def read_metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_on_cpu_accelerate_ignores_the_fsdp_config_and_says_so(subject_dir, tmp_path):
    args = tiny_args(subject_dir, tmp_path / "run", *RUN, "train.max_steps=1", "train.checkpoint_every=0")
    done = launch(["-m", "rewardbooth"], args, tmp_path / "launch.log")
    assert "the FSDP launch config is ignored by accelerate on cpu processes" in done.stderr
    assert (tmp_path / "run" / "transformer").is_dir()


@pytest.mark.slow
def test_fsdp_example_config_trains_saves_and_resumes_like_one_process(subject_dir, tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert run_cli(tiny_args(subject_dir, single, *RUN, "train.batch_size=2")) == 0
    launch([str(SHIM)], tiny_args(subject_dir, sharded, *RUN, "train.batch_size=1"), tmp_path / "launch.log")
    assert (sharded / "checkpoints" / "step_000002" / "pytorch_model_fsdp_0").is_dir()  # sharded, not gathered
    assert (sharded / "checkpoints" / "step_000002" / "critic.pt").is_file()  # the unsharded critic's own file

    # Two processes with batch 1 each take the steps one process takes with batch 2 (test_distributed.py).
    for one, two in zip(read_metrics(single), read_metrics(sharded), strict=True):
        for key in ("loss", "critic_loss", "reward", "grad_norm"):
            assert two[key] == pytest.approx(one[key], rel=1e-4), key
    initial = load_model(ModelConfig("tiny-flux")).transformer.state_dict()
    a, b = weights(single, "transformer"), weights(sharded, "transformer")
    assert a.keys() == b.keys() == initial.keys()
    update_a = torch.cat([(a[k] - initial[k]).flatten() for k in a])
    update_b = torch.cat([(b[k] - initial[k]).flatten() for k in a])
    assert update_a.norm() > 0 and (update_a - update_b).norm() < 0.02 * update_a.norm()
    critic_a, critic_b = load_file(single / "critic.safetensors"), load_file(sharded / "critic.safetensors")
    for name in critic_a:  # averaged by hand across the processes, as DDP averages a prepared critic
        torch.testing.assert_close(critic_a[name], critic_b[name], atol=1e-5, rtol=1e-4)

    # The gathered result is a stock pipeline folder: its transformer class is diffusers' own, weights whole.
    pipeline = FluxPipeline.from_pretrained(sharded)
    assert type(pipeline.transformer) is FluxTransformer2DModel
    for key, value in pipeline.transformer.state_dict().items():
        assert torch.equal(value, b[key]), key

    # Resume from the sharded checkpoint at step 2: the same steps 3 and 4, bit for bit.
    resumed = tmp_path / "resumed"
    shutil.copytree(sharded, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_000004")
    launch([str(SHIM)], tiny_args(subject_dir, resumed, *RUN, "train.batch_size=1", "train.resume=latest"),
           tmp_path / "resume.log")
    assert (resumed / "metrics.jsonl").read_text() == (sharded / "metrics.jsonl").read_text()
    for name in ("transformer/diffusion_pytorch_model.safetensors", "critic.safetensors"):
        expected, got = load_file(sharded / name), load_file(resumed / name)
        assert all(torch.equal(expected[k], got[k]) for k in expected), name


def test_a_sharded_run_refuses_what_it_cannot_do_before_writing_anything(subject_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("rewardbooth.training.setup.is_sharded", lambda accelerator: True)
    assert run_cli(tiny_args(subject_dir, tmp_path / "run", *RUN, "method.name=lora")) == 2
    error = capsys.readouterr().err.strip()
    assert "not method.name=lora" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "run").exists()
