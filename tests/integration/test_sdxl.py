"""SDXL models (two text encoders, pooled embedding, size ids) through the same trainer, methods and rewards,
on a tiny SDXL saved as a stock diffusers folder and loaded through the real path (CPU, no network)."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import load_file

from helpers import load_dreambooth, load_lora, run_cli, save_tiny_clip, tiny_args
from rewardbooth.core.config import ModelConfig
from rewardbooth.models import load_model

TRAIN = ["train.max_steps=3", "validation.every=0", "train.lr=1e-3", "data.num_class_images=2"]


@pytest.fixture(scope="module")
def tiny_sdxl_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sdxl")
    load_model(ModelConfig("tiny-sdxl")).pipeline().save_pretrained(folder)
    return folder


def draw(pipeline, prompt="a photo of sks dog"):
    pipeline.set_progress_bar_config(disable=True)
    return pipeline(prompt, num_inference_steps=2, height=64, width=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]


def test_diffusers_loader_recognises_an_sdxl_folder(tiny_sdxl_folder):
    parts = load_model(ModelConfig(str(tiny_sdxl_folder)))
    assert parts.family.name == "stable-diffusion-xl" and parts.pipeline_class is StableDiffusionXLPipeline
    assert parts.text_embedding_dim == parts.unet.config.cross_attention_dim == 64


def test_conditioning_matches_the_stock_sdxl_pipeline(tiny_sdxl_folder):
    """Our training-time embeddings are exactly what StableDiffusionXLPipeline.encode_prompt computes."""
    parts = load_model(ModelConfig(str(tiny_sdxl_folder)))
    prompts = ["a photo of sks dog", "a dog on the beach"]
    family = parts.family
    ours = family.encode_text(parts.text_encoders, family.tokenize(parts.tokenizers, prompts))
    embeds, _, pooled, _ = parts.pipeline().encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
    torch.testing.assert_close(ours.embeds["embeds"], embeds, rtol=0, atol=0)
    torch.testing.assert_close(ours.embeds["pooled"], pooled, rtol=0, atol=0)

    latents, timesteps, sizes = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), family.micro_conditioning(64)
    action, text = family.denoise(parts.unet, latents, timesteps, ours, None, sizes)
    assert text is ours.embeds["embeds"] and action.shape == latents.shape
    # What the stock pipeline passes the UNet: the pooled embedding and the six size ids.
    added = {"text_embeds": pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]).expand(2, -1)}
    stock = parts.unet(latents, timesteps, embeds, added_cond_kwargs=added).sample
    torch.testing.assert_close(action, stock, rtol=0, atol=0)
    with pytest.raises(ValueError, match="size ids"):
        family.denoise(parts.unet, latents, timesteps, ours, None, None)


def test_sd_conditioning_has_no_sdxl_extras(tiny_folder):
    parts = load_model(ModelConfig(str(tiny_folder)))
    conditioning = parts.family.encode_text(parts.text_encoders, parts.family.tokenize(parts.tokenizers, ["a dog"]))
    assert set(conditioning.embeds) == {"embeds"} and parts.family.micro_conditioning(64) is None


@pytest.mark.parametrize("objective", ["baseline", "dpg"])
@pytest.mark.parametrize("method, load", [("dreambooth", load_dreambooth), ("lora", load_lora)])
def test_sdxl_trains_and_reloads_with_stock_diffusers(method, load, objective, tiny_sdxl_folder, subject_dir,
                                                      tmp_path):
    out = tmp_path / "run"
    assert run_cli(tiny_args(subject_dir, out, f"model.pretrained={tiny_sdxl_folder}", f"method.name={method}",
                             f"objective.name={objective}", *TRAIN)) == 0
    trained = load(tiny_sdxl_folder, out)
    assert isinstance(trained, StableDiffusionXLPipeline)
    trained = draw(trained)
    assert np.abs(trained - draw(StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_folder))).max() > 1e-3
    if objective == "dpg":
        critic = load_file(out / "critic.safetensors")
        assert critic and all(torch.isfinite(v).all() for v in critic.values())
    # `rewardbooth generate OUTPUT` applies the result to its SDXL base the same way.
    assert run_cli(["generate", str(out), "--prompt", "a photo of sks dog", "--num-images", "1", "--num-inference-steps", "2",
                    "--output", str(tmp_path / "generated")]) == 0
    assert (tmp_path / "generated" / "grid.png").is_file()


def test_sdxl_lora_adapts_both_text_encoders(tiny_sdxl_folder, subject_dir, tmp_path):
    out = tmp_path / "run"
    assert run_cli(tiny_args(subject_dir, out, f"model.pretrained={tiny_sdxl_folder}", "method.name=lora",
                             "method.train_text_encoder=true", "objective.name=baseline", *TRAIN)) == 0
    prefixes = {key.split(".")[0] for key in load_file(out / "pytorch_lora_weights.safetensors")}
    assert prefixes == {"unet", "text_encoder", "text_encoder_2"}
    pipeline = load_lora(tiny_sdxl_folder, out)  # stock load_lora_weights puts every adapter in place
    assert all(getattr(pipeline, name).peft_config for name in ("text_encoder", "text_encoder_2"))


def test_sdxl_dreambooth_trains_both_text_encoders(tiny_sdxl_folder, subject_dir, tmp_path):
    out = tmp_path / "run"
    assert run_cli(tiny_args(subject_dir, out, f"model.pretrained={tiny_sdxl_folder}", "method.train_text_encoder=true",
                             "objective.name=dpg", *TRAIN)) == 0
    for name in ("text_encoder", "text_encoder_2"):
        before = load_file(next((tiny_sdxl_folder / name).glob("*.safetensors")))
        after = load_file(next((out / name).glob("*.safetensors")))
        assert any(not torch.equal(before[k], after[k]) for k in before), f"{name} did not train"


def test_sdxl_image_reward_through_the_critic(tiny_sdxl_folder, subject_dir, tmp_path):
    """An image reward (CLIP-T) on decode(x0_hat) of an SDXL model, with the critic conditioned on SDXL's
    2-encoder text context."""
    clip = save_tiny_clip(tmp_path / "clip")
    out = tmp_path / "run"
    assert run_cli(tiny_args(subject_dir, out, f"model.pretrained={tiny_sdxl_folder}", "method.name=lora",
                             "objective.reward={look_forward: 1, clip_text: 1}",
                             f"objective.reward_options={{clip_text: {{model: '{clip}'}}}}",
                             "critic.input=state_action", "critic.condition_on_text=true", *TRAIN)) == 0
    logged = (out / "metrics.jsonl").read_text()
    assert '"reward/clip_text"' in logged and '"critic_loss"' in logged


def test_custom_diffusion_refuses_sdxl_with_a_clear_error(tiny_sdxl_folder, subject_dir, tmp_path, capsys):
    assert run_cli(tiny_args(subject_dir, tmp_path / "run", f"model.pretrained={tiny_sdxl_folder}",
                             "method.name=custom_diffusion", "data.identifier=<new1>",
                             "data.instance_prompt=a photo of <new1> dog", *TRAIN)) != 0
    assert "use method.name=lora or method.name=dreambooth" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
