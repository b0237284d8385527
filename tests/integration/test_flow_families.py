"""The flow-matching families end to end on their tiny built-ins: training through the CLI with each method
and objective, results that stock diffusers loads and that reproduce `generate`'s images, the family's
sampling defaults, and refusals that are one line and write nothing."""

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from PIL import Image
from safetensors.torch import load_file

from helpers import run_cli, tiny_args
from rewardbooth.core.config import ModelConfig
from rewardbooth.inference.generate import generate
from rewardbooth.models import load_model

TRAIN = ["train.max_steps=2", "validation.every=0", "train.lr=1e-3", "data.num_class_images=2"]
PROMPT = "a photo of sks dog"


@pytest.fixture(scope="module")
def tiny_sd3_folder(tmp_path_factory):
    """tiny-sd3 saved as a stock StableDiffusion3Pipeline folder (the path users pass)."""
    folder = tmp_path_factory.mktemp("tiny-sd3")
    load_model(ModelConfig("tiny-sd3")).pipeline().save_pretrained(folder)
    return folder


def train(subject_dir, out, model, *overrides):
    assert run_cli(tiny_args(subject_dir, out, f"model.pretrained={model}", *TRAIN, *overrides)) == 0
    return out


def stock_image(pipeline, steps=2):
    return np.asarray(pipeline(PROMPT, num_inference_steps=steps, height=64, width=64,
                               generator=torch.Generator().manual_seed(0)).images[0]).astype(int)


def test_sd3_lora_dpg_loads_in_the_stock_pipeline_and_reproduces_generate(tiny_sd3_folder, subject_dir, tmp_path):
    out = train(subject_dir, tmp_path / "lora", tiny_sd3_folder, "method.name=lora", "objective.name=dpg")
    saved = load_file(out / "pytorch_lora_weights.safetensors")
    layers = {key.split(".lora_")[0].rsplit(".", 1)[-1] for key in saved}
    assert {"to_q", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"} <= layers  # both streams
    assert any("lora_B" in key and value.abs().sum() > 0 for key, value in saved.items())  # it trained
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("critic_loss" in row and np.isfinite(row["loss"]) for row in rows)

    ours = generate(str(out), [PROMPT], tmp_path / "images", num_images=1, num_inference_steps=2, resolution=64)
    record = json.loads((tmp_path / "images" / "generation.json").read_text())
    assert record["guidance_scale"] == 7.0  # SD3's own default, not SD's 7.5
    stock = StableDiffusion3Pipeline.from_pretrained(tiny_sd3_folder)
    base = stock_image(stock)
    stock.load_lora_weights(str(out))
    expected = stock_image(stock)
    assert np.abs(np.asarray(Image.open(ours[0])).astype(int) - expected).max() <= 1
    assert np.abs(base - expected).max() > 0  # the adapters change the images


def test_sd3_dreambooth_trains_the_transformer_only_and_saves_a_stock_folder(tiny_sd3_folder, subject_dir, tmp_path):
    out = train(subject_dir, tmp_path / "db", tiny_sd3_folder, "method.name=dreambooth", "objective.name=baseline")
    trained, base = StableDiffusion3Pipeline.from_pretrained(out), StableDiffusion3Pipeline.from_pretrained(tiny_sd3_folder)
    moved = [k for k, v in trained.transformer.state_dict().items() if not torch.equal(v, base.transformer.state_dict()[k])]
    assert moved
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "vae"):  # T5 never trains
        for key, value in getattr(trained, name).state_dict().items():
            assert torch.equal(value, getattr(base, name).state_dict()[key]), f"{name}.{key}"


def test_sd3_direct_objective_runs(subject_dir, tmp_path):
    out = train(subject_dir, tmp_path / "direct", "tiny-sd3", "method.name=lora", "objective.name=direct",
                "data.prior_preservation=false")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("reward" in row and np.isfinite(row["loss"]) for row in rows)


@pytest.mark.parametrize("overrides, message", [
    (["method.name=custom_diffusion", "data.identifier=<new1>", "data.instance_prompt=a photo of <new1> dog"],
     "use method.name=lora or method.name=dreambooth"),
    (["method.name=dreambooth", "method.train_text_encoder=true"], "set method.train_text_encoder=false"),
    (["data.resolution=60"], "data.resolution=60 is not a multiple of 8"),
], ids=["custom-diffusion", "text-encoder", "resolution"])
def test_sd3_refusals_are_one_line_and_write_nothing(overrides, message, subject_dir, tmp_path, capsys):
    assert run_cli(tiny_args(subject_dir, tmp_path / "run", "model.pretrained=tiny-sd3", *TRAIN, *overrides)) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert not (tmp_path / "run").exists()
