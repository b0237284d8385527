"""The rollout maths (maths/rollout.py) and the DDPM process's stochastic step, by hand and against diffusers'
own DDIM scheduler (an independent implementation of the same step)."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from rewardbooth.maths import rollout
from rewardbooth.models.ddpm import DDPMProcess

SD_SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


@pytest.fixture
def process():
    return DDPMProcess.from_scheduler_config(DDPMScheduler(**SD_SCHEDULE).config)


def test_sampling_timesteps_are_sd_ddim_leading_spacing(process):
    ddim = DDIMScheduler(**SD_SCHEDULE, steps_offset=1, set_alpha_to_one=False, clip_sample=False)
    ddim.set_timesteps(10)
    assert torch.equal(process.sampling_timesteps(10), ddim.timesteps.long())  # 901, 801, ..., 1


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_stochastic_step_is_diffusers_ddim_with_eta(process, eta):
    """Mean, std and the drawn sample agree with DDIMScheduler.step(eta, variance_noise) for eps-prediction;
    the log-probability is the Gaussian's, averaged over dimensions."""
    ddim = DDIMScheduler(**SD_SCHEDULE, steps_offset=1, set_alpha_to_one=False, clip_sample=False)
    ddim.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    x_t, action, noise = (torch.randn(2, 4, 8, 8, generator=generator) for _ in range(3))
    for t in (901, 101, 1):  # the last step lands on abar_0
        t_next = t - 100
        expected = ddim.step(action, t, x_t, eta=eta, variance_noise=noise).prev_sample
        std = eta * ddim._get_variance(torch.tensor(t), torch.tensor(t_next)).sqrt()
        times = torch.full((2,), t)
        mean_only = ddim.step(action, t, x_t, eta=eta, variance_noise=torch.zeros_like(noise)).prev_sample
        drawn, log_prob = process.stochastic_step(x_t, action, times, torch.full((2,), t_next), eta,
                                                  x_next=expected)
        torch.testing.assert_close(drawn, expected)
        by_hand = (-(expected - mean_only).square() / (2 * std ** 2) - std.log() - 0.5 * math.log(2 * math.pi))
        torch.testing.assert_close(log_prob, by_hand.flatten(1).mean(1), rtol=1e-4, atol=1e-4)
        # Drawing: x_next = mean + std * noise, with the noise of the generator given.
        sample, _ = process.stochastic_step(x_t, action, times, torch.full((2,), t_next), eta,
                                            generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(sample, mean_only + std * torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7)),
                                   rtol=1e-4, atol=1e-5)


def test_gaussian_log_prob_is_the_mean_of_normal_log_densities():
    x, mean = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    std = torch.tensor([0.5, 1.0, 2.0])
    expected = torch.distributions.Normal(mean, std.view(3, 1, 1, 1)).log_prob(x).flatten(1).mean(1)
    torch.testing.assert_close(rollout.gaussian_log_prob(x, mean, std), expected)


def test_group_advantages_standardise_within_each_group_and_clip():
    advantages = rollout.group_advantages(torch.tensor([1.0, 2.0, 10.0, 30.0]), group_size=2, clip=5.0)
    torch.testing.assert_close(advantages, torch.tensor([-1.0, 1.0, -1.0, 1.0]), atol=1e-3, rtol=0)
    # The better image of a group gets the positive sign, whatever the other group's scale.
    skewed = rollout.group_advantages(torch.tensor([0.0, 0.0, 0.0, 1.0]), group_size=4, clip=1.5)
    torch.testing.assert_close(skewed, torch.tensor([-1 / math.sqrt(3)] * 3 + [1.5]), atol=1e-3, rtol=0)


def test_clipped_surrogate_by_hand():
    log_prob = torch.log(torch.tensor([1.5, 0.5, 1.0]))
    advantages = torch.tensor([1.0, -1.0, 2.0])
    loss, ratio = rollout.clipped_surrogate(log_prob, torch.zeros(3), advantages, clip_range=0.2)
    torch.testing.assert_close(ratio, torch.tensor([1.5, 0.5, 1.0]))
    # max(-1 * 1.5, -1 * 1.2) = -1.2;  max(0.5, 0.8) = 0.8;  max(-2, -2) = -2
    torch.testing.assert_close(loss, torch.tensor((-1.2 + 0.8 - 2.0) / 3))


def test_the_surrogate_raises_the_log_prob_of_a_positive_advantage():
    """The sign: descending the loss makes a better-than-its-group sample likelier, a worse one less likely."""
    log_prob = torch.zeros(2, requires_grad=True)
    loss, _ = rollout.clipped_surrogate(log_prob, torch.zeros(2), torch.tensor([1.0, -1.0]), clip_range=0.2)
    loss.backward()
    assert log_prob.grad[0] < 0 < log_prob.grad[1]


def test_kl_estimate_is_zero_only_when_the_policies_agree():
    log_prob = torch.tensor([-1.0, -1.0, -1.0])
    kl = rollout.kl_estimate(log_prob, torch.tensor([-1.0, -0.5, -2.0]))
    assert kl[0] == 0 and (kl[1:] > 0).all()
    torch.testing.assert_close(kl[1], torch.tensor(math.exp(0.5) - 0.5 - 1))
