"""Flow-GRPO's SDE step (maths/rollout.py) and the flow process's rollouts (models/flow.py): by hand, its
a -> 0 limit against diffusers' own Euler step, and the schedule against the families' stock pipelines."""

import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from rewardbooth.maths import rollout
from rewardbooth.models.flow import FlowProcess

SD3 = dict(num_train_timesteps=1000, shift=3.0)
FLUX = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096)


def step_by_hand(sigma, sigma_next, a, x, v):
    """Liu et al. 2025, eq. 9 in scalars."""
    s_t = a * math.sqrt(sigma / (1 - (sigma_next if sigma >= 1 else sigma)))
    dt = sigma_next - sigma
    mean = x * (1 + s_t ** 2 / (2 * sigma) * dt) + v * (1 + s_t ** 2 * (1 - sigma) / (2 * sigma)) * dt
    return mean, s_t * math.sqrt(-dt)


@pytest.mark.parametrize("sigma, sigma_next, a, mean, std", [
    (0.5, 0.25, 0.5, 0.9375 * 2 - 0.28125 * 1, 0.25),  # s_t = 0.5; x (1 - 0.0625) + v (1.125)(-0.25)
    (1.0, 0.75, 0.7, 0.755 * 2 - 0.25 * 1, 0.7),  # at sigma = 1 the next sigma bounds s_t: 0.7 * 2 = 1.4
    (0.25, 0.0, 0.6, None, 0.6 / math.sqrt(3) * 0.5),  # the last step, to sigma = 0: std still positive
])
def test_flow_sde_step_by_hand(sigma, sigma_next, a, mean, std):
    x, v = torch.full((1, 1, 2, 2), 2.0), torch.full((1, 1, 2, 2), 1.0)
    sigmas, nexts = torch.tensor([sigma]), torch.tensor([sigma_next])
    diffusion = rollout.flow_sde_diffusion(sigmas, nexts, a)
    got_mean = rollout.flow_sde_step_mean(x, v, sigmas, nexts, diffusion)
    got_std = rollout.flow_sde_step_std(diffusion, sigmas, nexts)
    expected_mean, expected_std = step_by_hand(sigma, sigma_next, a, 2.0, 1.0)
    torch.testing.assert_close(got_mean, torch.full_like(x, expected_mean))
    torch.testing.assert_close(got_std, torch.tensor([expected_std]))
    if mean is not None:
        assert expected_mean == pytest.approx(mean)
    assert expected_std == pytest.approx(std) and got_std.item() > 0


def test_the_noiseless_limit_is_diffusers_euler_step():
    """a -> 0: mean = x + dt v_hat, FlowMatchEulerDiscreteScheduler.step's prev_sample, at every step."""
    scheduler = FlowMatchEulerDiscreteScheduler(**SD3)
    scheduler.set_timesteps(4)
    generator = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    for index, t in enumerate(scheduler.timesteps):
        sigma, sigma_next = scheduler.sigmas[index].expand(2), scheduler.sigmas[index + 1].expand(2)
        euler = scheduler.step(v, t, x).prev_sample
        for a in (0.0, 1e-4):
            diffusion = rollout.flow_sde_diffusion(sigma, sigma_next, a)
            torch.testing.assert_close(rollout.flow_sde_step_mean(x, v, sigma, sigma_next, diffusion), euler,
                                       rtol=1e-4, atol=1e-4)


def test_the_process_step_draws_from_the_gaussian_it_scores():
    process = FlowProcess.from_scheduler_config(FlowMatchEulerDiscreteScheduler(**SD3).config)
    generator = torch.Generator().manual_seed(1)
    x, v = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    t, t_next = torch.full((2,), 500.0), torch.full((2,), 250.0)
    drawn, log_prob = process.stochastic_step(x, v, t, t_next, 0.7, generator=torch.Generator().manual_seed(7))
    mean, std = step_by_hand(0.5, 0.25, 0.7, x.double(), v.double())
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(drawn, (mean + std * noise).float(), rtol=1e-4, atol=1e-5)
    by_hand = torch.distributions.Normal(mean.float(), std).log_prob(drawn).flatten(1).mean(1)
    torch.testing.assert_close(log_prob, by_hand, rtol=1e-4, atol=1e-4)
    # Scoring a given sample gives the same log-probability; a t_next below 0 (the last step) lands on 0.
    again, rescored = process.stochastic_step(x, v, t, t_next, 0.7, x_next=drawn)
    assert again is drawn and torch.equal(rescored, log_prob)
    _, last = process.stochastic_step(x, v, torch.full((2,), 250.0), torch.full((2,), -1.0), 0.7, x_next=x)
    mean, std = step_by_hand(0.25, 0.0, 0.7, x.double(), v.double())
    torch.testing.assert_close(last, torch.distributions.Normal(mean.float(), std).log_prob(x).flatten(1).mean(1),
                               rtol=1e-4, atol=1e-4)


def test_sd3_schedule_is_the_schedulers_own_static_shift():
    process = FlowProcess.from_scheduler_config(FlowMatchEulerDiscreteScheduler(**SD3).config)
    times = process.sampling_timesteps(4, (16, 16))
    # diffusers spaces 1000σ linearly from σ_max = 1 to its (shifted) σ_min, then shifts: 3σ / (1 + 2σ).
    sigma_min = 3 * 1e-3 / (1 + 2 * 1e-3)
    unshifted = np.linspace(1.0, sigma_min, 4)
    torch.testing.assert_close(times, torch.tensor(1000 * 3 * unshifted / (1 + 2 * unshifted), dtype=torch.float32))


@pytest.mark.parametrize("size, tokens", [((16, 16), 64), ((128, 128), 4096)])
def test_flux_schedule_shifts_by_the_token_count(size, tokens):
    """FluxPipeline: σ = linspace(1, 1/S, S), then exp(μ) / (exp(μ) + 1/σ - 1), μ linear in the packed token
    count from 0.5 at 256 tokens to 1.15 at 4096."""
    process = FlowProcess.from_scheduler_config(FlowMatchEulerDiscreteScheduler(**FLUX).config,
                                                linear_sampling_sigmas=True)
    mu = 0.5 + (tokens - 256) * 0.65 / (4096 - 256)
    sigmas = np.linspace(1.0, 1 / 4, 4)
    expected = 1000 * math.exp(mu) / (math.exp(mu) + 1 / sigmas - 1)
    torch.testing.assert_close(process.sampling_timesteps(4, size), torch.tensor(expected, dtype=torch.float32))
    assert process.to("cpu").sampling_timesteps(4, size).equal(process.sampling_timesteps(4, size))
