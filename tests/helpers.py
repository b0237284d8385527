"""Shared pieces of the integration tests: tiny-run arguments and weight comparison."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

TINY_RUN = [
    "model.pretrained=tiny", "data.resolution=64", "data.num_class_images=2", "data.class_generation_steps=2",
    "validation.num_inference_steps=2", "validation.num_images=1", "train.report_to=none",
    "train.checkpoint_every=0", "train.lr=1e-4",
]


def tiny_args(subject_dir: Path, output_dir: Path, *overrides: str, preset: str = "default") -> list[str]:
    return ["train", preset, *TINY_RUN, f"data.instance_dir={subject_dir}", f"train.output_dir={output_dir}",
            *overrides]


def run_cli(argv: list[str]) -> int:
    from accelerate.state import AcceleratorState, GradientState

    from rewardbooth.cli import main

    try:
        return main(argv)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def run_subprocess(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "rewardbooth", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def weights(folder: Path, component: str = "unet") -> dict[str, torch.Tensor]:
    return load_file(str(next((folder / component).glob("*.safetensors"))))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], exact: bool = True) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if exact:
            assert torch.equal(a[name], b[name]), f"{name} differs"
        else:
            torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5, msg=f"{name} differs")
