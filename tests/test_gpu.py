"""GPU tier: mixed precision on CUDA and real-scale timing. Skipped on machines without CUDA."""

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import run_cli, tiny_args


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_dpg_on_cuda(precision, subject_dir, tmp_path):
    out = tmp_path / "run"
    assert run_cli(tiny_args(subject_dir, out, f"train.mixed_precision={precision}", "train.max_steps=3",
                             "method.train_text_encoder=true", "validation.every=2")) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(row["loss"] == row["loss"] and row["critic_loss"] == row["critic_loss"] for row in rows)
    assert all(v.dtype == torch.float32 for v in load_file(out / "critic.safetensors").values())


@pytest.mark.gpu
def test_sd15_scale_bench_on_cuda(tmp_path):
    output = tmp_path / "bench.json"
    assert run_cli(["bench", "--model", "sd15-random", "--steps", "3", "--warmup", "1", "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert report["resolution"] == 512 and report["mixed_precision"] == "fp16"
    assert report["memory_measure"] == "peak CUDA allocation per step"
