"""The model-family contract (diffusers' PipelineTesterMixin style): every registered family, on its tiny model,
diffuses, looks forward, conditions and calls its denoiser, scales its latents and builds a stock pipeline
exactly as diffusers does. Family-neutral: `parts.denoiser`, float or integer time values, and the oracle is
the family's own stock scheduler (DDPM's add_noise/step, flow matching's scale_noise/step) or stock
`encode_prompt` (through the family's `stock_conditioning` hook)."""

import json

import pytest
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, FlowMatchEulerDiscreteScheduler

from rewardbooth.core.config import ModelConfig
from rewardbooth.core.errors import UserError
from rewardbooth.models import load_model
from rewardbooth.models.families import Conditioning, families, family_for_pipeline

TINY_MODEL = {"stable-diffusion": "tiny", "stable-diffusion-xl": "tiny-sdxl", "stable-diffusion-3": "tiny-sd3",
              "flux": "tiny-flux", "z-image": "tiny-zimage"}
SHIPPED_MODELS = {"toy-flow": "stable-diffusion-3"}  # shipped pretrained folders the suite covers too: their family
PROMPTS = ["a photo of sks dog", "a dog on the beach"]


def test_every_family_has_a_tiny_model():
    assert set(families.names()) == set(TINY_MODEL)


@pytest.fixture(scope="module", params=sorted(TINY_MODEL) + sorted(SHIPPED_MODELS))
def family_parts(request):
    family_name = SHIPPED_MODELS.get(request.param, request.param)
    parts = load_model(ModelConfig(TINY_MODEL.get(request.param, request.param)))
    assert parts.family is families.get(family_name)  # a shipped folder is detected as its family
    return parts.family, parts


def latents_and_noise(parts, batch=3, side=8):
    generator = torch.Generator().manual_seed(0)
    shape = (batch, parts.latent_channels, side, side)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def flow_scheduler(parts, steps=10):
    """The family's stock flow sampler over `steps` steps (FLUX-dev shifts by resolution: some μ)."""
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(parts.scheduler.config)
    scheduler.set_timesteps(steps, **({"mu": 1.0} if scheduler.config.use_dynamic_shifting else {}))
    return scheduler


def stock_oracle(parts, x0, noise, action, x_t):
    """(timesteps, x_t, one stock sampler step's prediction of x0) from the family's own stock scheduler."""
    if parts.prediction_type == "flow_prediction":
        scheduler = flow_scheduler(parts)
        t = scheduler.timesteps[[1, 5, 8]]
        return t, scheduler.scale_noise(x0, t, noise), None
    scheduler = DDPMScheduler.from_config(parts.scheduler.config, clip_sample=False, thresholding=False)
    t = torch.tensor([10, 500, 990])
    if x_t is None:
        return t, scheduler.add_noise(x0, noise, t), None
    stepped = torch.cat([scheduler.step(action[i:i + 1], int(t[i]), x_t[i:i + 1]).pred_original_sample
                         for i in range(3)])
    return t, None, stepped


def test_process_matches_the_stock_scheduler_and_recovers_x0(family_parts):
    family, parts = family_parts
    process = family.process(parts)
    x0, noise = latents_and_noise(parts)
    t, stock_x_t, _ = stock_oracle(parts, x0, noise, None, None)
    x_t = process.diffuse(x0, noise, t)
    torch.testing.assert_close(x_t, stock_x_t)
    target = process.target(x0, noise, t)  # the true action: x0_hat of it is x0
    torch.testing.assert_close(process.look_forward(x_t, target, t), x0, atol=1e-4, rtol=1e-4)
    level = process.noise_level(t)
    assert level.shape == (3,) and bool(((0 <= level) & (level <= 1)).all()) and bool((level.diff() != 0).all())


def test_look_forward_is_the_stock_samplers_x0(family_parts):
    """DDPM: the scheduler step's pred_original_sample; flow: an Euler step lands on the line to x̂0."""
    family, parts = family_parts
    process = family.process(parts)
    x0, noise = latents_and_noise(parts)
    action = torch.randn_like(x0)
    if parts.prediction_type != "flow_prediction":
        t = torch.tensor([10, 500, 990])
        x_t = process.diffuse(x0, noise, t)
        _, _, stepped = stock_oracle(parts, x0, noise, action, x_t)
        torch.testing.assert_close(process.look_forward(x_t, action, t), stepped, atol=1e-5, rtol=1e-5)
        return
    scheduler = flow_scheduler(parts)
    index = 4
    t, sigma, sigma_next = scheduler.timesteps[index], scheduler.sigmas[index], scheduler.sigmas[index + 1]
    x_t = process.diffuse(x0, noise, t.expand(3))
    scheduler._step_index = index
    stepped = scheduler.step(action, t, x_t).prev_sample
    x0_hat = process.look_forward(x_t, action, t.expand(3))
    torch.testing.assert_close(stepped, x_t + (1 - sigma_next / sigma) * (x0_hat - x_t), atol=1e-5, rtol=1e-5)


def test_text_conditioning_is_the_stock_pipelines(family_parts):
    family, parts = family_parts
    token_ids = family.tokenize(parts.tokenizers, PROMPTS)
    assert len(token_ids) == len(parts.tokenizers)
    assert all(ids.shape[0] == 2 and ids.dtype == torch.int64 for ids in token_ids)
    with torch.no_grad():
        ours = family.encode_text(parts.text_encoders, token_ids)
        stock = family.stock_conditioning(parts.pipeline(), PROMPTS)
    assert isinstance(ours, Conditioning) and set(ours.embeds) == set(stock.embeds)
    for key, value in stock.embeds.items():
        torch.testing.assert_close(ours.embeds[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("guidance", [1.0, 4.0])  # 4: classifier-free guidance with the empty prompt's negative
def test_sampling_from_precomputed_text_inputs_draws_the_prompts_images(family_parts, guidance):
    # What validation does once the frozen encoders are gone (training/setup.py): the same images, to the bit,
    # from a pipeline that holds no text encoder at all.
    family, parts = family_parts
    prompts = PROMPTS[:1] * 2
    options = {"height": 32, "width": 32, "num_inference_steps": 2, "guidance_scale": guidance, "output_type": "pt"}

    def generators():
        return [torch.Generator().manual_seed(seed) for seed in range(len(prompts))]

    with torch.no_grad():
        inputs = family.pipeline_text_inputs(parts.pipeline(), prompts, guidance, torch.device("cpu"))
        from_prompts = parts.pipeline()(prompts, generator=generators(), **options).images
        without_encoders = parts.pipeline(**{name: None for name in parts.named_text_encoders})
        from_inputs = without_encoders(generator=generators(), **inputs, **options).images
    assert torch.equal(from_inputs, from_prompts)


def test_denoise_acts_on_latents_and_trains_the_encoders_it_is_given(family_parts):
    """The action has the (unpacked) latents' shape whatever the family packs inside; the text embedding is
    `text_embedding_dim` wide; with token ids, the trainable encoders run in the step, so the loss reaches
    them; with precomputed embeddings, the same action."""
    family, parts = family_parts
    side = 64 // parts.vae_scale_factor
    x_t = torch.randn(2, parts.latent_channels, side, side)
    t = family.process(parts).sample_timesteps(2, torch.Generator().manual_seed(1))
    token_ids = family.tokenize(parts.tokenizers, PROMPTS)
    micro = family.micro_conditioning(64)
    action, text = family.denoise(parts.denoiser, x_t, t, Conditioning(token_ids=token_ids), parts.text_encoders,
                                  micro)
    assert action.shape == x_t.shape and text.ndim == 3 and text.shape[-1] == parts.text_embedding_dim
    action.square().mean().backward()
    for name in family.trainable_text_encoders:
        encoder = parts.named_text_encoders.get(name)
        if encoder is not None:
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters()), name
    for module in (parts.denoiser, *parts.text_encoders):
        module.zero_grad(set_to_none=True)
    with torch.no_grad():
        embedded = family.encode_text(parts.text_encoders, token_ids)
        again, _ = family.denoise(parts.denoiser, x_t, t, embedded, None, micro)
    # Attention under no_grad may take another kernel (SD3's did: 4e-7 apart), hence a float tolerance.
    torch.testing.assert_close(again, action.detach(), rtol=1e-4, atol=1e-5)


def test_latent_space_channels_and_timesteps(family_parts):
    family, parts = family_parts
    space, process = family.latent_space(parts), family.process(parts)
    assert space.scaling_factor == parts.vae.config.scaling_factor
    assert space.shift_factor == (parts.vae.config.get("shift_factor") or 0.0)
    assert parts.latent_channels == parts.vae.config.latent_channels  # unpacked C, whatever the denoiser takes
    z = torch.randn(2, parts.latent_channels, 8, 8)
    torch.testing.assert_close(space.to_vae(space.from_vae(z)), z)
    t = process.sample_timesteps(500, torch.Generator().manual_seed(0))
    assert t.shape == (500,) and t.dtype in (torch.int64, torch.float32) and 0 <= float(t.min()) < float(t.max()) < 1000
    assert torch.equal(t, process.sample_timesteps(500, torch.Generator().manual_seed(0)))
    if parts.prediction_type == "flow_prediction":  # never "epsilon" for a flow scheduler
        # σ's median 0.5 (the densities are symmetric) after the static shift s: s / (1 + s) (SD3's 3: 0.75;
        # toy-flow's 0.375: 0.27); none where the shift is dynamic (FLUX-dev).
        config = parts.scheduler.config
        shift = 1.0 if config.use_dynamic_shifting else config.shift
        assert t.dtype == torch.float32 and abs(float(t.median()) - 1000 * shift / (1 + shift)) < 60


def test_sampling_defaults_are_the_familys(family_parts):
    """Guidance is the stock pipeline's own (SD 7.5, SD3 7.0: never SD's 7.5 for another family); steps at most
    the pipeline's (SD: 25 of its 50, as the project always sampled)."""
    import inspect

    family, parts = family_parts
    steps, guidance = parts.sampling_defaults
    signature = inspect.signature(family.pipeline_class.__call__).parameters
    assert 1 <= steps <= signature["num_inference_steps"].default
    assert signature["guidance_scale"].default == guidance


def test_lora_targets_name_layers_of_the_model(family_parts):
    family, parts = family_parts
    components = {"denoiser": parts.denoiser, **parts.named_text_encoders}
    assert set(family.trainable_text_encoders) <= set(family.lora_targets)
    for component, targets in family.lora_targets.items():
        if components.get(component) is None:  # SD 1.x has no text_encoder_2
            continue
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
    for name in (parts.denoiser_name, "vae"):
        for key, value in getattr(parts, name).state_dict().items():
            assert torch.equal(getattr(reloaded, name).state_dict()[key], value), f"{name}.{key}"


def test_pipeline_classes_match_exactly():
    """Each family loads its own pipeline classes only: an SD3 folder is never taken for SD 1.x."""
    assert family_for_pipeline("StableDiffusion3Pipeline").name == "stable-diffusion-3"
    assert family_for_pipeline("StableDiffusionPipeline").name == "stable-diffusion"
    assert family_for_pipeline("StableDiffusionXLPipeline").name == "stable-diffusion-xl"
    assert family_for_pipeline("FluxPipeline").name == "flux"
    for other in ("PixArtAlphaPipeline", "StableDiffusionXLInpaintPipeline", "StableDiffusion3ControlNetPipeline",
                  "FluxFillPipeline", ""):
        assert family_for_pipeline(other) is None


def test_loading_a_folder_of_another_pipeline_names_it_and_the_supported_ones(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
    with pytest.raises(UserError, match="PixArtAlphaPipeline, not a pipeline of a family here") as error:
        load_model(ModelConfig(str(tmp_path)))
    assert "StableDiffusion3Pipeline" in str(error.value) and "\n" not in str(error.value)


def test_sd3_without_t5_conditions_as_its_pipeline_does():
    """text_encoder_3=None (diffusers' way to drop T5): the pipeline puts 256 zero tokens of the joint width in
    T5's place; the family's own conditioning (what training sees) is the same, token for token."""
    import dataclasses

    parts = load_model(ModelConfig("tiny-sd3"))
    parts = dataclasses.replace(parts, text_encoder_3=None, tokenizer_3=None)
    family = parts.family
    token_ids = family.tokenize(parts.tokenizers, PROMPTS)
    assert [ids.shape for ids in token_ids] == [(2, 77), (2, 77), (2, 0)]
    with torch.no_grad():
        ours = family.encode_text(parts.text_encoders, token_ids)
        stock = family.stock_conditioning(parts.pipeline(), PROMPTS)
        assert ours.embeds["embeds"].shape == (2, 77 + 256, parts.transformer.config.joint_attention_dim)
        for key, value in stock.embeds.items():
            torch.testing.assert_close(ours.embeds[key], value, rtol=0, atol=0)
        x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([100.0, 700.0])
        action, _ = family.denoise(parts.denoiser, x_t, t, Conditioning(token_ids=token_ids), parts.text_encoders)
        stock_action, _ = family.denoise(parts.denoiser, x_t, t, stock)
    torch.testing.assert_close(action, stock_action, rtol=0, atol=0)
