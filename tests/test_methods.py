"""The base-method contract: every registered method trains end to end under every objective, and its saved
result reloads with stock diffusers calls and changes what the base model draws (CPU, no network)."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from helpers import run_cli, tiny_args
from rewardbooth.methods import methods


def load_dreambooth(base, output):
    return StableDiffusionPipeline.from_pretrained(output)


def load_lora(base, output):
    pipeline = StableDiffusionPipeline.from_pretrained(base)
    pipeline.load_lora_weights(output)
    return pipeline


# The stock diffusers calls a user makes to load each method's result; a new method must add its own.
STOCK_LOADERS = {"dreambooth": load_dreambooth, "lora": load_lora}
TRAIN = ["train.max_steps=3", "validation.every=0", "train.lr=1e-3"]


def draw(pipeline):
    pipeline.set_progress_bar_config(disable=True)
    return pipeline("a photo of sks dog", num_inference_steps=2, height=64, width=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]


def test_every_method_has_a_stock_loader():
    assert set(methods.names()) == set(STOCK_LOADERS)


@pytest.mark.parametrize("objective", ["baseline", "dpg"])
@pytest.mark.parametrize("method", sorted(STOCK_LOADERS))
def test_result_reloads_with_stock_diffusers_and_changes_the_images(method, objective, tiny_folder, subject_dir,
                                                                      tmp_path):
    out = tmp_path / "run"
    assert run_cli(tiny_args(subject_dir, out, f"model.pretrained={tiny_folder}", f"method.name={method}",
                             f"objective.name={objective}", *TRAIN)) == 0
    trained = draw(STOCK_LOADERS[method](tiny_folder, out))
    assert np.abs(trained - draw(StableDiffusionPipeline.from_pretrained(tiny_folder))).max() > 1e-3


def test_lora_saves_only_adapters_and_generate_finds_the_base_model(tiny_folder, subject_dir, tmp_path, capsys):
    out = tmp_path / "lora"
    assert run_cli(tiny_args(subject_dir, out, f"model.pretrained={tiny_folder}", "method.name=lora",
                             "method.train_text_encoder=true", "method.lora_rank=2", *TRAIN)) == 0
    saved = load_file(out / "pytorch_lora_weights.safetensors")
    assert saved and all(".lora" in key for key in saved)
    assert {key.split(".")[0] for key in saved} == {"unet", "text_encoder"}
    assert all(min(tensor.shape) <= 2 for tensor in saved.values())  # rank 2
    assert not (out / "unet").exists()  # adapters only, no copy of the base weights
    # `rewardbooth generate OUTPUT` reads the base model from config.yaml and applies the adapters.
    assert run_cli(["generate", str(out), "--prompt", "a photo of sks dog", "--num-images", "1", "--steps", "2",
                    "--output", str(tmp_path / "images")]) == 0
    stock = load_lora(tiny_folder, out)
    stock.set_progress_bar_config(disable=True)
    expected = stock("a photo of sks dog", num_inference_steps=2, height=64, width=64, guidance_scale=7.5,
                     generator=torch.Generator().manual_seed(0)).images[0]
    from PIL import Image

    written = np.asarray(Image.open(tmp_path / "images" / "a-photo-of-sks-dog_00000.png"))
    assert np.abs(written.astype(int) - np.asarray(expected).astype(int)).max() <= 1


def test_lora_leaves_the_base_weights_untouched(subject_dir, tmp_path):
    from rewardbooth.config import load_config
    from rewardbooth.setup import build_run

    config = load_config("default", tiny_args(subject_dir, tmp_path / "x", "method.name=lora")[2:])
    run = build_run(config)
    trainable = {name for name, p in run.parts.unet.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert {id(p) for p in run.policy_parameters} == {id(p) for p in run.parts.unet.parameters() if p.requires_grad}


def test_lora_resume_matches_an_uninterrupted_run(tiny_folder, subject_dir, tmp_path):
    common = [f"model.pretrained={tiny_folder}", "method.name=lora", "validation.every=0", "train.checkpoint_every=2",
              "train.lr=1e-3"]
    assert run_cli(tiny_args(subject_dir, tmp_path / "straight", *common, "train.max_steps=4")) == 0
    resumed = tmp_path / "resumed"
    assert run_cli(tiny_args(subject_dir, resumed, *common, "train.max_steps=2")) == 0
    assert run_cli(tiny_args(subject_dir, resumed, *common, "train.max_steps=4", "train.resume=latest")) == 0
    straight = load_file(tmp_path / "straight" / "pytorch_lora_weights.safetensors")
    again = load_file(resumed / "pytorch_lora_weights.safetensors")
    assert straight.keys() == again.keys() and all(torch.equal(straight[k], again[k]) for k in straight)


def test_bad_lora_rank_is_a_user_error(subject_dir, tmp_path, capsys):
    assert run_cli(tiny_args(subject_dir, tmp_path / "bad", "method.name=lora", "method.lora_rank=0")) == 2
    assert "method.lora_rank" in capsys.readouterr().err
