"""toy-flow's pretraining script at tiny sizes: a few steps save a stock StableDiffusion3Pipeline folder that
the repo loads as the SD3 family, and `--init` continues it (step, EMA and optimizer state)."""

import json

import torch
from diffusers import StableDiffusion3Pipeline

from rewardbooth.core.config import ModelConfig
from rewardbooth.experiments.toyworld import pretrain_flow
from rewardbooth.models import load_model

TINY = ["--num-images", "64", "--batch-size", "4", "--layers", "1", "--heads", "2", "--head-dim", "8",
        "--text-width", "16"]


def test_pretraining_saves_a_stock_sd3_folder_and_continues_from_it(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    pretrain_flow.main(["--output", str(first), "--steps", "3", "--save-every", "100", "--shift", "0.5", *TINY])
    assert json.loads((first / "pretrain_state.json").read_text()) == {"transformer_step": 2}
    assert (first / "samples.png").is_file() and (first / "resume.pt").is_file()
    stock = StableDiffusion3Pipeline.from_pretrained(first)
    assert stock.scheduler.config.shift == 0.5  # an ablation's shift (the default is unit-tested)
    assert stock.vae.config.shift_factor is not None and stock.transformer.config.joint_attention_dim == 32
    parts = load_model(ModelConfig(str(first)))
    assert parts.family.name == "stable-diffusion-3"
    with torch.no_grad():
        image = parts.pipeline()("a red ball", num_inference_steps=2, height=32, width=32, output_type="pt").images
    assert image.shape == (1, 3, 32, 32)

    pretrain_flow.main(["--output", str(second), "--init", str(first), "--steps", "5", "--save-every", "100", *TINY])
    assert json.loads((second / "pretrain_state.json").read_text()) == {"transformer_step": 4}
    resumed = torch.load(second / "resume.pt")
    assert resumed["step"] == 4 and resumed["schedule"]["last_epoch"] == 5  # the schedule went on from step 3
    assert json.loads((second / "scheduler" / "scheduler_config.json").read_text())["shift"] == 0.5  # kept
    assert all(state["step"] == 5 for state in resumed["optimizer"]["state"].values())


def test_a_folder_without_its_resume_state_restarts_warm_at_its_step(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    pretrain_flow.main(["--output", str(first), "--steps", "3", "--save-every", "100", *TINY])
    (first / "resume.pt").unlink()  # as shipped: weights and step only
    pretrain_flow.main(["--output", str(second), "--init", str(first), "--steps", "6", "--save-every", "100", *TINY])
    resumed = torch.load(second / "resume.pt")
    assert resumed["step"] == 5 and resumed["restart"] == 3 and resumed["schedule"]["last_epoch"] == 6
    assert all(state["step"] == 3 for state in resumed["optimizer"]["state"].values())  # a fresh optimizer
