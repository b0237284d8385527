"""Shared pieces of the integration tests: tiny-run arguments and weight comparison."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import load_file

TINY_RUN = [
    "model.pretrained=tiny", "data.resolution=64", "data.num_class_images=2", "data.class_num_inference_steps=2",
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


def save_tiny_vit(folder):
    """A tiny DINO-shaped ViT (32 px, so DINO's pipeline resizes to 37 and crops 32) saved like a hub model."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def save_tiny_clip(folder, with_tokenizer=True):
    """A tiny CLIPModel (32 px, projection 16) plus the tiny model's character-level CLIP tokenizer."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    from rewardbooth.models.tokenizers import make_character_tokenizer

    tokenizer = make_character_tokenizer()
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    text = CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **sizes)
    vision = CLIPVisionConfig(image_size=32, patch_size=8, **sizes)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                         projection_dim=16)).save_pretrained(folder)
    if with_tokenizer:
        tokenizer.save_pretrained(folder)
    return folder


# The stock diffusers calls a user makes to load each method's result (DiffusionPipeline picks the SD or SDXL
# pipeline class from the folder's model_index.json).
def load_dreambooth(base, output):
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(output)


def load_lora(base, output):
    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(base)
    pipeline.load_lora_weights(output)
    return pipeline


def load_custom_diffusion(base, output):
    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(base)
    pipeline.unet.load_attn_procs(output, weight_name="pytorch_custom_diffusion_weights.safetensors")
    pipeline.load_textual_inversion(output, weight_name="<new1>.safetensors")
    return pipeline


class StepRecorder:
    """Records the optimizer steps the training loop runs and presses Ctrl-C (KeyboardInterrupt) at step
    `interrupt_at`; set it to None to let the next run finish."""

    def __init__(self, monkeypatch, interrupt_at: int | None = None):
        import rewardbooth.training.loop as loop

        self.steps: list[int] = []
        self.interrupt_at = interrupt_at
        accumulate = loop.accumulate_gradients

        def interruptible(run, policy, config, step):
            if step == self.interrupt_at:
                raise KeyboardInterrupt
            self.steps.append(step)
            return accumulate(run, policy, config, step)

        monkeypatch.setattr(loop, "accumulate_gradients", interruptible)


def reachable_tensors(root, depth=6):
    """Every tensor reachable from `root` through attributes, containers, modules and closures."""
    found, seen, frontier = [], set(), [(root, 0)]
    while frontier:
        item, level = frontier.pop()
        if id(item) in seen or level > depth:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            found.append(item)
            continue
        if isinstance(item, torch.nn.Module):
            children = [*item.parameters(), *item.buffers()]
        elif isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, (list, tuple, set)):
            children = list(item)
        elif isinstance(item, (types.FunctionType, types.MethodType)):
            function = getattr(item, "__func__", item)
            children = [getattr(item, "__self__", None),
                        *[cell.cell_contents for cell in function.__closure__ or ()]]
        elif hasattr(item, "__dict__") and not isinstance(item, type) and not isinstance(item, types.ModuleType):
            children = list(vars(item).values())
        else:
            continue
        frontier.extend((child, level + 1) for child in children if child is not None)
    return found
