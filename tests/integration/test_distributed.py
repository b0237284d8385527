"""Two CPU processes under accelerate match one process with the same global batch.

accelerate's launcher starts several CPU processes only through MPI (`--cpu --num_processes 2` runs one
process); `--multi_gpu` (torchrun underneath) on a machine without CUDA gives two gloo processes, which the
trainer detects and runs on CPU.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import run_cli, tiny_args, weights
from rewardbooth.core.config import ModelConfig
from rewardbooth.models import load_model

# A zero-start critic: with critic.residual_prior the first critic loss is rounding noise (~1e-11 one way,
# ~1e-17 the other), whose gradient AdamW scales up into different critic updates, so the two runs part at
# step 2 for reasons that have nothing to do with how the processes share the batch.
RUN = ["train.max_steps=3", "validation.every=0", "method.train_text_encoder=true",
       "data.prior_preservation=true", "critic.residual_prior=false"]


@pytest.mark.slow
def test_two_cpu_processes_match_one(subject_dir, tmp_path):
    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    assert launcher, "accelerate's launcher is installed with the package"
    single = tmp_path / "single"
    assert run_cli(tiny_args(subject_dir, single, *RUN, "train.batch_size=2")) == 0

    double = tmp_path / "double"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "rewardbooth", *tiny_args(subject_dir, double, *RUN, "train.batch_size=1")]
    log = tmp_path / "launch.log"
    with log.open("w") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            returncode = process.wait(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            returncode = "timeout"
    assert returncode == 0, f"{returncode}: {log.read_text()[-4000:]}"
    # Same samples, noise and timesteps, hence the same losses; the weights differ only by the all-reduce's
    # summation order, which Adam amplifies for near-zero gradients: compare the updates, not the weights.
    for single_row, double_row in zip(read_metrics(single), read_metrics(double)):
        for key in ("loss", "critic_loss", "reward", "grad_norm"):
            assert double_row[key] == pytest.approx(single_row[key], rel=1e-5), key
    base = load_model(ModelConfig("tiny"))
    for component in ("unet", "text_encoder"):
        initial = getattr(base, component).state_dict()
        a, b = weights(single, component), weights(double, component)
        update_a = torch.cat([(a[k] - initial[k]).flatten() for k in a])
        update_b = torch.cat([(b[k] - initial[k]).flatten() for k in a])
        assert (update_a - update_b).norm() < 0.02 * update_a.norm(), component
    a, b = load_file(single / "critic.safetensors"), load_file(double / "critic.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)


def read_metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
