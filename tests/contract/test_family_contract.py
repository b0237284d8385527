"""The model-family contract: every registered family, on its tiny model, diffuses, looks forward, conditions and
calls its denoiser, scales its latents and builds a stock pipeline exactly as diffusers does."""

import pytest
import torch
from diffusers import DDPMScheduler, DiffusionPipeline

from rewardbooth.core.config import ModelConfig
from rewardbooth.models import load_model
from rewardbooth.models.families import families, family_for_pipeline

TINY_MODEL = {"stable-diffusion": "tiny", "stable-diffusion-xl": "tiny-sdxl"}


def test_every_family_has_a_tiny_model():
    assert set(families.names()) == set(TINY_MODEL)


@pytest.fixture(scope="module", params=sorted(TINY_MODEL))
def family_parts(request):
    return families.get(request.param), load_model(ModelConfig(TINY_MODEL[request.param]))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_process_matches_the_schedulers_and_recovers_x0(family_parts, prediction_type):
    family, parts = family_parts
    assert parts.family is family
    config = {**parts.scheduler.config, "prediction_type": prediction_type}
    scheduler = DDPMScheduler.from_config(config, clip_sample=False, thresholding=False)
    process = family.process(parts).__class__.from_scheduler_config(scheduler.config)
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=generator), torch.randn(3, 4, 8, 8, generator=generator)
    t = torch.tensor([10, 500, 990])
    x_t = process.diffuse(x0, noise, t)
    torch.testing.assert_close(x_t, scheduler.add_noise(x0, noise, t))
    target = process.target(x0, noise, t)  # the true action: x0_hat of it is x0
    torch.testing.assert_close(process.look_forward(x_t, target, t), x0, atol=1e-4, rtol=1e-4)
    stepped = torch.cat([scheduler.step(target[i:i + 1], int(t[i]), x_t[i:i + 1]).pred_original_sample
                         for i in range(3)])
    torch.testing.assert_close(process.look_forward(x_t, target, t), stepped, atol=1e-5, rtol=1e-5)


def test_conditioning_fits_the_denoiser(family_parts):
    family, parts = family_parts
    ids = family.micro_conditioning(64)
    projection = parts.unet.config.projection_class_embeddings_input_dim
    if ids is None:
        assert projection is None
    else:  # the added embedding takes the ids (one time-embedding each) and the pooled text projection
        pooled = parts.text_encoders[-1].config.projection_dim
        assert ids.shape == (1, 6) and projection == pooled + 6 * parts.unet.config.addition_time_embed_dim
    assert parts.unet.config.cross_attention_dim == parts.text_embedding_dim


def test_text_conditioning_is_the_stock_pipelines(family_parts):
    family, parts = family_parts
    prompts = ["a photo of sks dog", "a dog on the beach"]
    token_ids = family.tokenize(parts.tokenizers, prompts)
    assert token_ids.shape[:2] == (2, len(parts.tokenizers)) and token_ids.dtype == torch.int64
    with torch.no_grad():
        ours = family.encode_text(parts.text_encoders, token_ids)
        stock = parts.pipeline().encode_prompt(prompts, device="cpu", num_images_per_prompt=1,
                                               do_classifier_free_guidance=False)
    torch.testing.assert_close(ours["embeds"], stock[0], rtol=0, atol=0)
    assert ours["embeds"].shape[-1] == parts.text_embedding_dim


def test_denoise_acts_on_latents_and_trains_the_encoders_it_is_given(family_parts):
    """The action has the latents' shape whatever the family packs inside; with token ids, the encoders run
    in the step, so the loss reaches them; with precomputed embeddings, the same action."""
    family, parts = family_parts
    side = 64 // parts.vae_scale_factor
    x_t, t = torch.randn(2, parts.unet.config.in_channels, side, side), torch.tensor([3, 700])
    token_ids = family.tokenize(parts.tokenizers, ["a photo of sks dog", "a dog"])
    micro = family.micro_conditioning(64)
    action, text = family.denoise(parts.unet, x_t, t, {"token_ids": token_ids}, parts.text_encoders, micro)
    assert action.shape == x_t.shape and text.shape[-1] == parts.text_embedding_dim
    action.square().mean().backward()
    for encoder in parts.text_encoders:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
        encoder.zero_grad(set_to_none=True)
    parts.unet.zero_grad(set_to_none=True)
    with torch.no_grad():
        embedded = family.encode_text(parts.text_encoders, token_ids)
        again, _ = family.denoise(parts.unet, x_t, t, embedded, None, micro)
    torch.testing.assert_close(again, action.detach(), rtol=0, atol=0)


def test_latent_space_and_timesteps(family_parts):
    family, parts = family_parts
    space, process = family.latent_space(parts), family.process(parts)
    assert space.scaling_factor == parts.vae.config.scaling_factor
    z = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(space.to_vae(space.from_vae(z)), z)
    t = process.sample_timesteps(500, torch.Generator().manual_seed(0))
    assert t.shape == (500,) and t.dtype == torch.int64 and 0 <= int(t.min()) and int(t.max()) < 1000
    assert torch.equal(t, process.sample_timesteps(500, torch.Generator().manual_seed(0)))


def test_lora_targets_name_layers_of_the_model(family_parts):
    family, parts = family_parts
    components = {"denoiser": parts.denoiser, "text_encoder": parts.text_encoders[0]}
    for component, targets in family.lora_targets.items():
        names = [name for name, _ in components[component].named_modules()]
        for target in targets:
            assert any(name.endswith(target) for name in names), (component, target)


def test_resolutions(family_parts):
    family, parts = family_parts
    multiple = family.resolution_multiple(parts)
    assert 64 % multiple == 0 and family.native_resolution(parts) % multiple == 0


def test_pipeline_round_trips_through_stock_diffusers(family_parts, tmp_path):
    family, parts = family_parts
    pipeline = parts.pipeline()
    assert type(pipeline) is family.pipeline_class
    pipeline.save_pretrained(tmp_path)
    reloaded = load_model(ModelConfig(str(tmp_path)))
    assert reloaded.family is family
    assert family_for_pipeline(DiffusionPipeline.load_config(tmp_path)["_class_name"]) is family
    for name, module in (("unet", parts.unet), ("vae", parts.vae)):
        for key, value in module.state_dict().items():
            assert torch.equal(getattr(reloaded, name).state_dict()[key], value), f"{name}.{key}"


def test_a_folder_of_another_pipeline_is_no_family():
    assert family_for_pipeline("FluxPipeline") is None and family_for_pipeline("") is None


def test_loading_a_folder_of_another_family_names_its_pipeline(tmp_path):
    import json

    from rewardbooth.core.errors import UserError

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(UserError, match="FluxPipeline, not a Stable Diffusion") as error:
        load_model(ModelConfig(str(tmp_path)))
    assert "\n" not in str(error.value)
