"""LoRA over a quantized frozen base (`model.quantize`, QLoRA) on tiny-flux, on the CPU: torchao's int8 and fp8
weight-only storage runs here (bitsandbytes' nf4 needs CUDA: tests/gpu covers it). The denoiser is quantized
as diffusers loads it, the run trains, and the LoRA it saves is the file an unquantized run saves: stock
FluxPipeline of the unquantized base loads it and draws other images with it."""

import json

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from safetensors.torch import load_file

from helpers import run_cli, tiny_args
from rewardbooth.core.config import ModelConfig
from rewardbooth.models import load_model

pytest.importorskip("torchao", reason="model.quantize=int8/fp8 needs torchao (the quantize and test extras)")

TRAIN = ["model.pretrained={}", "method.name=lora", "objective.name=dpg", "train.max_steps=2", "validation.every=0",
         "train.lr=1e-3", "data.num_class_images=2"]
PROMPT = "a photo of sks dog"


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    """tiny-flux saved as a stock pipeline folder, unquantized (the path users pass)."""
    folder = tmp_path_factory.mktemp("tiny-flux")
    load_model(ModelConfig("tiny-flux")).pipeline().save_pretrained(folder)
    return folder


def train(subject_dir, out, model, *overrides) -> dict[str, torch.Tensor]:
    args = tiny_args(subject_dir, out, *[o.format(model) for o in TRAIN], *overrides)
    assert run_cli(args) == 0
    return load_file(out / "pytorch_lora_weights.safetensors")


def image(pipeline) -> np.ndarray:
    return np.asarray(pipeline(PROMPT, num_inference_steps=2, height=64, width=64,
                               generator=torch.Generator().manual_seed(0)).images[0]).astype(int)


@pytest.mark.parametrize("quantize", ["int8", "fp8"])
def test_a_folder_loads_with_its_denoiser_quantized(quantize, flux_folder):
    """model.quantize reaches from_pretrained's quantization_config: every linear layer of the transformer holds
    torchao's quantized weights, nothing else is quantized, and its other layers are in the compute dtype."""
    parts = load_model(ModelConfig(str(flux_folder), quantize=quantize), compute_dtype=torch.float32)
    linear = parts.transformer.transformer_blocks[0].attn.to_q
    assert getattr(parts.transformer, "is_quantized", False)
    assert type(linear.weight).__module__.startswith("torchao"), type(linear.weight)
    assert parts.transformer.norm_out.linear.weight.dtype == torch.float32
    for module in (parts.vae, *parts.text_encoders):
        assert not getattr(module, "is_quantized", False)
        assert all(type(p.data) is torch.Tensor and p.dtype == torch.float32 for p in module.parameters())


def test_a_built_in_is_quantized_in_memory():
    parts = load_model(ModelConfig("tiny-flux", quantize="int8"))
    assert type(parts.transformer.transformer_blocks[0].attn.to_q.weight).__module__.startswith("torchao")
    assert not parts.transformer.training


def test_quantized_lora_trains_and_applies_to_the_unquantized_base(flux_folder, subject_dir, tmp_path):
    """With what a big model needs beside it: gradient checkpointing of the transformer and the text encoders'
    weights dropped once setup has encoded the prompts; validation samples from the quantized model."""
    saved = train(subject_dir, tmp_path / "int8", flux_folder, "model.quantize=int8",
                  "train.gradient_checkpointing=true", "train.offload_text_encoders=free", "validation.every=2")
    assert (tmp_path / "int8" / "samples" / "step_000002.png").is_file()
    rows = [json.loads(line) for line in (tmp_path / "int8" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(row["loss"]) and np.isfinite(row["critic_loss"]) for row in rows)
    assert any("lora_B" in key and value.abs().sum() > 0 for key, value in saved.items())  # B starts at 0
    # The same file as an unquantized run's: names, shapes, fp32, and the kohya copy beside it.
    plain = train(subject_dir, tmp_path / "plain", flux_folder)
    assert {k: (v.shape, v.dtype) for k, v in saved.items()} == {k: (v.shape, v.dtype) for k, v in plain.items()}
    assert (tmp_path / "int8" / "pytorch_lora_weights_kohya.safetensors").is_file()

    stock = FluxPipeline.from_pretrained(flux_folder)
    stock.set_progress_bar_config(disable=True)
    base = image(stock)
    stock.load_lora_weights(str(tmp_path / "int8"))
    loaded = {name for name, _ in stock.transformer.named_parameters() if "lora_B" in name}
    assert len(loaded) == sum("lora_B" in key for key in saved)  # every adapter found its layer
    assert np.abs(image(stock) - base).max() > 0


@pytest.mark.parametrize("overrides, message", [
    (["method.name=dreambooth"], "model.quantize=int8 freezes the denoiser in 8 bits, but method.name=dreambooth "
                                 "trains its weights; use method.name=lora"),
    (["method.name=custom_diffusion", "data.identifier=<new1>", "data.instance_prompt=a photo of <new1> dog"],
     "but method.name=custom_diffusion trains its weights; use method.name=lora"),
], ids=["dreambooth", "custom-diffusion"])
def test_a_method_training_the_base_is_refused(overrides, message, subject_dir, tmp_path, capsys):
    args = tiny_args(subject_dir, tmp_path / "run", "model.pretrained=tiny-flux", "model.quantize=int8",
                     "train.max_steps=2", "validation.every=0", *overrides)  # unrefused, a short run fails fast
    assert run_cli(args) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_nf4_without_cuda_is_refused(subject_dir, tmp_path, capsys):
    args = tiny_args(subject_dir, tmp_path / "run", "model.pretrained=tiny-flux", "method.name=lora",
                     "model.quantize=nf4")
    assert run_cli(args) == 2
    error = capsys.readouterr().err.strip()
    assert "model.quantize=nf4 (bitsandbytes 4-bit) needs a CUDA GPU" in error and "model.quantize=int8" in error
    assert len(error.splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_checkpoint_holds_the_adapters_and_resumes_the_same_run(flux_folder, subject_dir, tmp_path):
    """accelerate's checkpoint of the quantized transformer: its adapters only (safetensors cannot write
    torchao's weights, and resuming reloads them from the model); steps 1-2 + resume + step 3 = steps 1-3."""
    steps = ["model.quantize=int8", "train.checkpoint_every=2"]
    whole = train(subject_dir, tmp_path / "whole", flux_folder, *steps, "train.max_steps=3")
    train(subject_dir, tmp_path / "cut", flux_folder, *steps, "train.max_steps=2")
    checkpoint = tmp_path / "cut" / "checkpoints" / "step_000002"
    stored = load_file(checkpoint / "model.safetensors")  # the first prepared model: the transformer
    assert stored and all(".lora_A." in key or ".lora_B." in key for key in stored)
    resumed = train(subject_dir, tmp_path / "cut", flux_folder, *steps, "train.max_steps=3", "train.resume=latest")
    assert whole.keys() == resumed.keys()
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0, msg=key)
