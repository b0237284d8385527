"""GPU tier: mixed precision on CUDA, real-scale timing, and our DINO/CLIP features against the reference
pipelines when real weights are present. Skipped on machines without CUDA."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
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
    assert run_cli(["bench", "step", "--model", "sd15-random", "--timed-steps", "3", "--warmup-steps", "1",
                    "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert report["resolution"] == 512 and report["mixed_precision"] == "fp16"
    assert report["memory_measure"] == "peak CUDA allocation per step"


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["dreambooth", "lora"])
def test_sdxl_fp16_dpg_on_cuda(method, subject_dir, tmp_path):
    """SDXL under fp16: the frozen parts in fp16 except the force_upcast VAE, losses finite."""
    out = tmp_path / "run"
    assert run_cli(tiny_args(subject_dir, out, "model.pretrained=tiny-sdxl", f"method.name={method}",
                             "train.mixed_precision=fp16", "train.max_steps=3", "method.train_text_encoder=true",
                             "validation.every=2")) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(row["loss"]) and np.isfinite(row["critic_loss"]) for row in rows)


def _real_weights(env: str, hub_id: str) -> str:
    """A local folder from $env, else the hub id if it is in the local cache; skips the test otherwise."""
    from huggingface_hub import try_to_load_from_cache

    if os.environ.get(env):
        return os.environ[env]
    if isinstance(try_to_load_from_cache(hub_id, "config.json"), str):
        return hub_id
    pytest.skip(f"no {hub_id} weights: set {env} to a local folder of them")


def _photos():
    from skimage import data

    return [Image.fromarray(photo) for photo in (data.astronaut(), data.chelsea(), data.coffee(), data.rocket())]


def _pil_to_tensor(image):
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).float() / 255


@pytest.mark.gpu
def test_dino_features_match_the_official_pipeline():
    """Ours (tensor preprocessing on the GPU) against DreamBench's: torchvision's Resize(256, bicubic) on a PIL
    image (which is PIL's own resize), CenterCrop(224), ImageNet normalisation, ViT CLS token on the CPU."""
    from transformers import ViTModel

    from rewardbooth.rewards.backbones import DinoFeatures
    from rewardbooth.rewards.preprocess import IMAGENET_MEAN, IMAGENET_STD

    model = _real_weights("REWARDBOOTH_DINO_MODEL", "facebook/dino-vits16")
    ours = DinoFeatures(model, torch.device("cuda"))
    reference = ViTModel.from_pretrained(model, add_pooling_layer=False).eval()
    for photo in _photos():
        scale = 256 / min(photo.size)
        resized = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.BICUBIC)
        left, top = (resized.width - 224) // 2, (resized.height - 224) // 2
        pixels = _pil_to_tensor(resized.crop((left, top, left + 224, top + 224)))
        pixels = (pixels - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
        with torch.no_grad():
            expected = F.normalize(reference(pixel_values=pixels[None]).last_hidden_state[:, 0], dim=-1)
        assert F.cosine_similarity(ours(_pil_to_tensor(photo)[None]).cpu(), expected).item() > 0.999


@pytest.mark.gpu
def test_clip_features_match_transformers_processor_and_model():
    from transformers import CLIPModel, CLIPProcessor

    from rewardbooth.rewards.backbones import ClipFeatures

    model = _real_weights("REWARDBOOTH_CLIP_MODEL", "openai/clip-vit-base-patch32")
    ours = ClipFeatures(model, torch.device("cuda"), with_text=True)
    processor, reference = CLIPProcessor.from_pretrained(model), CLIPModel.from_pretrained(model).eval()
    photos = _photos()
    with torch.no_grad():
        expected = F.normalize(reference.get_image_features(**processor(images=photos, return_tensors="pt")), dim=-1)
        text = F.normalize(reference.get_text_features(**processor(text=["a cat"], return_tensors="pt")), dim=-1)
    for photo, row in zip(photos, expected):
        assert F.cosine_similarity(ours.images(_pil_to_tensor(photo)[None]).cpu(), row[None]).item() > 0.999
    assert F.cosine_similarity(ours.text("a cat").cpu()[None], text).item() > 0.9999


@pytest.mark.gpu
def test_nf4_quantized_lora_on_cuda(subject_dir, tmp_path):
    """model.quantize=nf4 (bitsandbytes, CUDA only): tiny-flux's transformer loads as 4-bit layers, LoRA trains
    over it in bf16 with gradient checkpointing, and the saved LoRA applies to the unquantized stock pipeline."""
    pytest.importorskip("bitsandbytes", reason="model.quantize=nf4 needs bitsandbytes (the quantize extra)")
    import bitsandbytes as bnb
    from diffusers import FluxPipeline

    from rewardbooth.core.config import ModelConfig
    from rewardbooth.models import load_model

    folder = tmp_path / "tiny-flux"
    load_model(ModelConfig("tiny-flux")).pipeline().save_pretrained(folder)
    parts = load_model(ModelConfig(str(folder), quantize="nf4"), compute_dtype=torch.bfloat16)
    assert isinstance(parts.transformer.transformer_blocks[0].attn.to_q, bnb.nn.Linear4bit)
    out = tmp_path / "run"
    assert run_cli(tiny_args(subject_dir, out, f"model.pretrained={folder}", "model.quantize=nf4",
                             "method.name=lora", "train.mixed_precision=bf16", "train.gradient_checkpointing=true",
                             "train.max_steps=3", "validation.every=0", "train.lr=1e-3")) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(row["loss"]) for row in rows)
    saved = load_file(out / "pytorch_lora_weights.safetensors")
    assert any("lora_B" in key and value.abs().sum() > 0 for key, value in saved.items())
    stock = FluxPipeline.from_pretrained(folder).to("cuda")

    def draw():
        return np.asarray(stock("a photo of sks dog", num_inference_steps=2, height=64, width=64,
                                generator=torch.Generator("cuda").manual_seed(0)).images[0]).astype(int)

    base = draw()
    stock.load_lora_weights(str(out))
    assert np.abs(draw() - base).max() > 0
