"""toy-flow's derived numbers (experiments/toyworld/pretrain_flow.py): the timestep shift from the token count,
the VAE's latent calibration, and the T5 stand-in whose output is the pipeline's zeros."""

import math

import pytest
import torch
from transformers import ByT5Tokenizer

from rewardbooth.experiments.toyworld.pretrain_flow import (
    WARMUP,
    latent_calibration,
    learning_rate_factor,
    make_scheduler,
    token_shift,
    zero_t5,
)
from rewardbooth.models.families import LatentSpace


def test_shift_is_sd3s_scaled_by_the_square_root_of_the_token_ratio_and_never_below_one():
    assert token_shift(4096) == 3.0  # SD3's own: 1024 px, 64x64 patches
    assert token_shift(16384) == pytest.approx(6.0)  # 4x the tokens: twice the shift
    assert token_shift(1024) == pytest.approx(1.5)
    assert token_shift(576) == pytest.approx(1.125)  # 3·√(576/4096): above ~455 tokens the rule itself
    assert token_shift(64) == token_shift(256) == 1.0  # the rule would give 0.375 and 0.75: no shift instead


def test_the_saved_scheduler_carries_the_toys_shift():
    scheduler = make_scheduler()  # 32 px -> 16x16 latents -> 64 patches of 2x2
    assert scheduler.config.shift == token_shift(64) == 1.0 and not scheduler.config.use_dynamic_shifting
    for shift in (1.0, 0.375):  # σ' = sσ / (1 + (s - 1)σ): the toy's leaves σ as it is; 0.375 lowers it
        sigma, sigmas = 0.5, make_scheduler(shift).sigmas
        index = int(torch.argmin((torch.linspace(1, 1 / 1000, 1000) - sigma).abs()))
        assert float(sigmas[index]) == pytest.approx(shift * sigma / (1 + (shift - 1) * sigma), abs=1e-3)


def test_latent_calibration_makes_the_denoisers_latents_standard():
    latents = torch.tensor([1.0, 3.0, 5.0, 7.0]).reshape(1, 1, 2, 2)
    shift, scale = latent_calibration(latents)
    assert shift == 4.0 and scale == pytest.approx(1 / math.sqrt(20 / 3))  # mean 4; unbiased variance 20/3
    latents = torch.randn(4096, 4, 2, 2, generator=torch.Generator().manual_seed(0)) * 2.5 + 0.7
    z = LatentSpace(*reversed(latent_calibration(latents))).from_vae(latents)
    assert abs(float(z.mean())) < 1e-4 and float(z.std()) == pytest.approx(1.0, abs=1e-4)


def test_the_t5_stand_in_outputs_exactly_the_pipelines_zeros():
    tokenizer = ByT5Tokenizer()
    t5 = zero_t5(tokenizer, 32)
    ids = tokenizer(["a red ball on the beach", "sks"], padding="max_length", max_length=256,
                    return_tensors="pt").input_ids
    output = t5(ids)[0]
    assert output.shape == (2, 256, 32) and torch.equal(output, torch.zeros_like(output))


def test_pretrainings_loss_is_the_familys_flow_loss_on_the_pipelines_conditioning():
    """flow_loss folds T5's 256 zero tokens into one; the family's own denoise (what fine-tuning runs) sees all
    of them: the same loss, with the same σ and noise."""
    import torch.nn.functional as F
    from transformers import CLIPTokenizer

    from rewardbooth.experiments.toyworld.pretrain_flow import FAMILY, flow_loss, make_components, make_parts
    from rewardbooth.models.families import Conditioning
    from rewardbooth.toyworld.assets import BASE_MODEL_DIR

    tokenizer = CLIPTokenizer.from_pretrained(BASE_MODEL_DIR, subfolder="tokenizer")
    torch.manual_seed(0)
    transformer, *text_encoders = make_components(tokenizer, num_layers=2, num_heads=2, head_dim=8, text_width=16)
    parts = make_parts(transformer, None, text_encoders, tokenizer, "test")
    process = FAMILY.process(parts)
    x0 = torch.randn(3, 4, 16, 16)
    ids = FAMILY.tokenize(parts.tokenizers, ["a red ball on the beach", "a blue box", ""])[0]
    with torch.no_grad():
        loss = flow_loss(parts, process, x0, ids, torch.Generator().manual_seed(5))
        generator = torch.Generator().manual_seed(5)
        noise = torch.randn(x0.shape, generator=generator)
        t = process.sample_timesteps(3, generator)
        token_ids = FAMILY.tokenize(parts.tokenizers, ["a red ball on the beach", "a blue box", ""])
        action, embeds = FAMILY.denoise(parts.transformer, process.diffuse(x0, noise, t), t,
                                        Conditioning(token_ids=token_ids), parts.text_encoders)
    assert embeds.shape[1] == 16 + 256
    torch.testing.assert_close(loss, F.mse_loss(action, process.target(x0, noise, t)), rtol=1e-5, atol=1e-6)


def test_the_unclamped_shift_trains_above_sigma_0_8_about_1_percent_of_the_time():
    """docs/toyworld.md's reading of the shift ablation: s = 0.375 (the √ rule unclamped) puts ~0.9 % of training
    σ above 0.8, the toy's s = 1 ~8 %, SD3's 3 ~39 % (logit-normal(0, 1) u through σ' = sσ / (1 + (s - 1)σ))."""
    from rewardbooth.models.flow import FlowProcess

    for shift, expected in ((0.375, 0.009), (token_shift(64), 0.084), (3.0, 0.387)):
        process = FlowProcess.from_scheduler_config(make_scheduler(shift).config)
        sigma = process.noise_level(process.sample_timesteps(200_000, torch.Generator().manual_seed(0)))
        assert float((sigma > 0.8).float().mean()) == pytest.approx(expected, abs=0.005)



def test_the_look_forward_reward_weighs_the_instance_loss_20x_on_toy_and_under_0_3x_on_toy_flow():
    """docs/toyworld.md (toy-flow benchmark, why): the latent look-forward reward -||x̂0 - x0||² is the instance
    loss reweighted by (1 - ᾱ)/ᾱ under DDPM and by σ² under the flow (tests/unit/test_dpg.py has both
    identities). Averaged over each toy's own training noise levels: ~20 (84 % of it from t ≥ 800) on `toy`'s
    scaled-linear schedule with t uniform, ~0.29 on toy-flow's logit-normal σ with shift 1."""
    from diffusers import DDPMScheduler

    from rewardbooth.maths import dpg
    from rewardbooth.models.flow import FlowProcess
    from rewardbooth.toyworld.assets import BASE_MODEL_DIR

    ddpm = DDPMScheduler.from_pretrained(BASE_MODEL_DIR, subfolder="scheduler")
    weight = dpg.inverse_snr(ddpm.alphas_cumprod)  # t uniform over 0..999: the mean over the table
    assert float(weight.mean()) == pytest.approx(20.3, abs=0.1)
    assert float(weight[800:].sum() / weight.sum()) == pytest.approx(0.84, abs=0.01)
    process = FlowProcess.from_scheduler_config(make_scheduler(token_shift(64)).config, density="logit_normal")
    sigma = process.noise_level(process.sample_timesteps(200_000, torch.Generator().manual_seed(0)))
    assert float(sigma.square().mean()) == pytest.approx(0.29, abs=0.01) and float(sigma.max()) <= 1


def test_an_image_reward_reaches_the_action_six_times_weaker_on_toy_flow_than_on_toy():
    """docs/toyworld.md (toy-flow benchmark, why): an image reward r(D(x̂0)) reaches the action through
    ∂x̂0/∂a, -sqrt((1 - ᾱ)/ᾱ) for an ε-predicting DDPM and -σ for a velocity-predicting flow. Averaged over each
    toy's training noise levels: ~3.0 on `toy`, ~0.50 on toy-flow."""
    from diffusers import DDPMScheduler

    from rewardbooth.maths import dpg
    from rewardbooth.models.flow import FlowProcess
    from rewardbooth.toyworld.assets import BASE_MODEL_DIR

    ddpm = DDPMScheduler.from_pretrained(BASE_MODEL_DIR, subfolder="scheduler")
    alpha_bar = ddpm.alphas_cumprod[torch.tensor([10, 500, 990])]
    x_t, action = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2, requires_grad=True)
    x0_hat = dpg.predict_x0(x_t, action, alpha_bar, "epsilon")
    (slope,) = torch.autograd.grad(x0_hat.sum(), action)
    torch.testing.assert_close(slope[:, 0, 0, 0], -dpg.inverse_snr(alpha_bar).sqrt())
    assert float(dpg.inverse_snr(ddpm.alphas_cumprod).sqrt().mean()) == pytest.approx(3.0, abs=0.05)

    process = FlowProcess.from_scheduler_config(make_scheduler(token_shift(64)).config, density="logit_normal")
    timesteps = process.sample_timesteps(200_000, torch.Generator().manual_seed(0))
    x_t, action = torch.randn(4, 4, 2, 2), torch.randn(4, 4, 2, 2, requires_grad=True)
    (slope,) = torch.autograd.grad(process.look_forward(x_t, action, timesteps[:4]).sum(), action)
    torch.testing.assert_close(slope[:, 0, 0, 0], -process.noise_level(timesteps[:4]))
    assert float(process.noise_level(timesteps).mean()) == pytest.approx(0.50, abs=0.01)


def test_the_learning_rate_warms_up_from_each_fresh_optimizer_under_one_cosine():
    assert learning_rate_factor(0, 0, 100_000) == pytest.approx(1 / WARMUP)
    assert learning_rate_factor(WARMUP - 1, 0, 100_000) == pytest.approx(1.0, abs=1e-3)
    # a warm restart at step 1000 of 2000: the cosine is at 0.5 there, and the warmup starts again
    assert learning_rate_factor(1000, 1000, 2000) == pytest.approx(0.5 / WARMUP)
    assert learning_rate_factor(1000 + WARMUP - 1, 1000, 2000) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * (1000 + WARMUP - 1) / 2000)))
