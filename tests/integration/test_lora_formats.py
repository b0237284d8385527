"""The kohya-layout LoRA (the file ComfyUI loads) holds the very adapters of the diffusers file:
stock `load_lora_weights` converts it back and draws the same images (SD, SDXL, FLUX's double blocks), and
for SD3 and FLUX every key names a weight of the original checkpoint, in the row order that diffusers' own
single-file converters (original SAI / BFL checkpoint -> diffusers) read it, so none is left unmapped."""

import logging

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from diffusers.loaders.single_file_utils import (
    convert_flux_transformer_checkpoint_to_diffusers,
    convert_sd3_transformer_checkpoint_to_diffusers,
)
from safetensors.torch import load_file

from rewardbooth.core.config import ModelConfig, load_config
from rewardbooth.methods.lora import WEIGHT_NAME, LoRA
from rewardbooth.models import load_model
from rewardbooth.models.kohya import KOHYA_WEIGHT_NAME

PROMPT = "a photo of sks dog"
FLUX_DOUBLE_BLOCK = [f"transformer_blocks.0.{m}" for m in (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
    "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")]
FEED_FORWARD = ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]


def trained_lora(model, folder, *overrides):
    """A LoRA on the tiny model with random B (as if trained: B = 0 would hide a wrong map), saved to `folder`."""
    parts = load_model(ModelConfig(model))
    method = LoRA(parts, load_config("default", ["method.name=lora", "method.lora.alpha=8", *overrides]))
    generator = torch.Generator().manual_seed(0)
    for module in method.trainable.values():
        for name, parameter in module.named_parameters():
            if "lora_B" in name:
                parameter.data = 0.3 * torch.randn(parameter.shape, generator=generator)
    method.save(parts, folder)
    return parts


def adapted_modules(pipeline):
    return {f"{component}.{name}" for component, module in pipeline.components.items()
            if isinstance(module, torch.nn.Module)
            for name, layer in module.named_modules() if hasattr(layer, "lora_A") and "default_0" in layer.lora_A}


def draw(folder, lora_folder, weight_name):
    pipeline = DiffusionPipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    pipeline.load_lora_weights(str(lora_folder), weight_name=weight_name)
    image = pipeline(PROMPT, num_inference_steps=2, height=64, width=64,
                     generator=torch.Generator().manual_seed(0)).images[0]
    return np.asarray(image).astype(int), adapted_modules(pipeline)


# ComfyUI's names of CLIP's layers (comfy/lora.py `model_lora_keys_clip`: `lora_te_` or `lora_te1_`/`lora_te2_`
# + `text_model_encoder_layers_N_...`), whatever transformers calls the module.
CLIP_PREFIXES = {"tiny": ("lora_te_",), "tiny-sdxl": ("lora_te1_", "lora_te2_"), "tiny-flux": ()}


@pytest.mark.parametrize(("model", "overrides"), [
    ("tiny", ["method.train_text_encoder=true"]), ("tiny-sdxl", ["method.train_text_encoder=true"]),
    # diffusers' kohya FLUX converter splits single blocks at FLUX.1's own widths (3072), which the tiny model
    # does not have: its double block goes through the stock loader here, single blocks through the test below.
    ("tiny-flux", [f"method.lora.denoiser_modules=[{', '.join(FLUX_DOUBLE_BLOCK)}]"])])
def test_kohya_file_reloads_in_stock_diffusers_with_the_same_adapters_and_images(model, overrides, tmp_path):
    trained_lora(model, tmp_path / "lora", *overrides)
    base = load_model(ModelConfig(model))
    names = {key.split(".")[0] for key in load_file(tmp_path / "lora" / KOHYA_WEIGHT_NAME)}
    if model != "tiny-flux":  # ComfyUI's rule for UNets: `lora_unet_` + a diffusers UNet weight's path with `_`
        unet_names = {f"lora_unet_{key.removesuffix('.weight').replace('.', '_')}"
                      for key in base.denoiser.state_dict() if key.endswith(".weight")}
        assert {n for n in names if n.startswith("lora_unet_")} <= unet_names
    encoders = {prefix: {n for n in names if n.startswith(prefix)} for prefix in CLIP_PREFIXES[model]}
    assert all(layers and all(n.startswith(f"{p}text_model_encoder_layers_") for n in layers)
               for p, layers in encoders.items())
    assert all(n.startswith("lora_unet_") for n in names - set().union(*encoders.values()))
    base.pipeline().save_pretrained(tmp_path / "base")
    expected, expected_modules = draw(tmp_path / "base", tmp_path / "lora", WEIGHT_NAME)
    image, modules = draw(tmp_path / "base", tmp_path / "lora", KOHYA_WEIGHT_NAME)
    assert modules == expected_modules  # every adapter arrives where the diffusers file puts it, none dropped
    assert any(name.startswith("text_encoder") for name in modules) == (model != "tiny-flux")
    assert np.abs(image - expected).max() <= 1


class Original(dict):
    """An original SAI / BFL checkpoint holding only the weights put in it: any other weight a converter reads
    is zero (FILL rows, or FLUX.1's fused widths where the converter splits at them), and every read is recorded."""

    FILL = 12  # the converters chunk what they read in 2 or 3

    def __init__(self, items=(), sizes=None):
        super().__init__(items)
        self.read, self.sizes = set(), sizes or {}

    def fill(self, key):
        return torch.zeros(next((rows for part, rows in self.sizes.items() if part in key), self.FILL))

    def pop(self, key, *default):
        self.read.add(key)
        return super().pop(key) if key in self else self.fill(key)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key) if key in self else self.fill(key)


# FLUX.1's converter splits a single block's linear1 at its own widths: q, k, v (3072 rows each), then the MLP.
FLUX_LINEAR1 = (3072, 3072, 3072, 12288)
ORIGINALS = {  # built-in -> (converter, the original's block lists, sizes the converter assumes)
    "tiny-sd3": (convert_sd3_transformer_checkpoint_to_diffusers, {"joint_blocks": "num_layers"}, {}),
    "tiny-flux": (convert_flux_transformer_checkpoint_to_diffusers,
                  {"double_blocks": "num_layers", "single_blocks": "num_single_layers"},
                  {"linear1": sum(FLUX_LINEAR1)})}


def original_weights(model, config):
    """The original checkpoint's weight names (without `.weight`), as the converter reads them."""
    converter, blocks, sizes = ORIGINALS[model]
    seeds = {f"{name}.{i}.seed": torch.zeros(1) for name, count in blocks.items() for i in range(config[count])}
    checkpoint = Original(seeds, sizes)
    converter(checkpoint)
    return {key.removesuffix(".weight") for key in checkpoint.read if key.endswith(".weight")}, seeds


def spread_fused(delta, config):
    """FLUX's tiny linear1 rows (q, k, v of the model's width, then its MLP) placed at FLUX.1's split points."""
    width = config["num_attention_heads"] * config["attention_head_dim"]
    heights = (width, width, width, delta.shape[0] - 3 * width)
    spread = delta.new_zeros(sum(FLUX_LINEAR1), delta.shape[1])
    for start, part in zip(np.cumsum((0, *FLUX_LINEAR1[:-1])), delta.split(heights), strict=True):
        spread[start:start + part.shape[0]] = part
    return spread


@pytest.mark.parametrize(("model", "extra"), [("tiny-sd3", FEED_FORWARD),
                                              ("tiny-flux", [*FEED_FORWARD, "proj_mlp", "single_transformer_blocks.0.proj_out"])])
def test_kohya_keys_are_the_original_checkpoints_weights_in_its_row_order(model, extra, tmp_path):
    parts = load_model(ModelConfig(model))
    targets = [*parts.family.lora_targets["denoiser"], *extra]
    trained_lora(model, tmp_path, f"method.lora.denoiser_modules=[{', '.join(targets)}]")
    config = parts.denoiser.config
    names, seeds = original_weights(model, config)
    by_kohya_name = {f"lora_unet_{name.replace('.', '_')}": name for name in names}  # ComfyUI's own matching
    kohya = load_file(tmp_path / KOHYA_WEIGHT_NAME)
    modules = {key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0] for key in kohya}
    assert modules <= by_kohya_name.keys(), sorted(modules - by_kohya_name.keys())  # no unmapped key
    assert len(kohya) == 3 * len(modules)  # down, up and alpha of each, nothing else
    deltas = {}
    for module in modules:
        down, up = kohya[f"{module}.lora_down.weight"], kohya[f"{module}.lora_up.weight"]
        delta = kohya[f"{module}.alpha"] / down.shape[0] * up @ down  # what ComfyUI adds to the weight
        name = by_kohya_name[module]
        deltas[f"{name}.weight"] = spread_fused(delta, config) if name.endswith("linear1") else delta
    converted = (ORIGINALS[model][0])(Original({**seeds, **deltas}, ORIGINALS[model][2]))

    peft = load_file(tmp_path / WEIGHT_NAME)
    expected = {key.removeprefix("transformer.").replace(".lora_A.weight", ".weight"):
                8 / peft[key].shape[0] * peft[key.replace("lora_A", "lora_B")] @ peft[key]
                for key in peft if "lora_A" in key}
    assert expected and all(any(name.endswith(f"{t}.weight") for name in expected) for t in targets)
    for name, weight in converted.items():
        if name in expected:
            rows = expected[name].shape[0]
            torch.testing.assert_close(weight[:rows], expected[name], atol=1e-6, rtol=1e-5, msg=name)
            assert not weight[rows:].any(), name
        else:
            assert not weight.any(), f"{name} received an adapter it does not have"


def test_an_adapter_without_a_kohya_name_leaves_only_that_file_out(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        trained_lora("tiny-flux", tmp_path, "method.lora.denoiser_modules=[attn.to_q, norm1.linear]")
    assert (tmp_path / WEIGHT_NAME).is_file() and not (tmp_path / KOHYA_WEIGHT_NAME).exists()
    assert f"no {KOHYA_WEIGHT_NAME} written" in caplog.text and "norm1.linear" in caplog.text


def test_a_family_without_a_kohya_layout_writes_the_diffusers_file_only(tmp_path):
    trained_lora("tiny-zimage", tmp_path)
    assert [entry.name for entry in tmp_path.iterdir()] == [WEIGHT_NAME]
