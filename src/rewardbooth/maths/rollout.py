"""Rollout policy gradients (DDPO, Black et al. 2023; Flow-GRPO, Liu et al. 2025): the pure maths.

A stochastic sampler makes denoising a Markov decision process whose every step is a Gaussian policy
pi_theta(x_{t'} | x_t) = N(mean_theta(x_t, t), std_t^2 I). For DDPM families that step is DDIM with eta > 0
(Song et al. 2021, eq. 12): with x0_hat and eps_hat implied by the denoiser's action,
    std_t = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)
    mean  = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - std_t^2) eps_hat
(eta = 1 is the DDPM posterior's variance). For flow-matching families it is Flow-GRPO's SDE step (Liu et al.
2025, eq. 9), with sigma decreasing from 1 to 0, dt = sigma_next - sigma < 0, v_hat the velocity and a the
noise level:
    s_t   = a * sqrt(sigma / (1 - sigma))      (the SDE's diffusion coefficient)
    mean  = x (1 + s_t^2 / (2 sigma) dt) + v_hat (1 + s_t^2 (1 - sigma) / (2 sigma)) dt
    std   = s_t * sqrt(-dt)
(a -> 0: the Euler step x + dt v_hat of FlowMatchEulerDiscreteScheduler). Log-probabilities are averaged over the latent's dimensions, as
DDPO's `ddim_step_with_logprob` does, so ratios and KL terms do not scale with the resolution.
Group advantages (GRPO, Shao et al. 2024): each sample's reward standardised within its prompt's group.
"""

from __future__ import annotations

import math

import torch

from rewardbooth.maths.dpg import expand_to


def ddim_step_std(alpha_bar_t: torch.Tensor, alpha_bar_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """std_t of the DDIM step t -> prev (Song et al. 2021, eq. 16 times eta). Shape: (B,), (B,) -> (B,)"""
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)
    return eta * variance.clamp(min=0).sqrt()


def ddim_step_mean(x_t: torch.Tensor, x0_hat: torch.Tensor, alpha_bar_t: torch.Tensor,
                   alpha_bar_prev: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The DDIM step's mean (Song et al. 2021, eq. 12), eps_hat recovered from x0_hat and x_t.

    Shape: x_t, x0_hat (B, C, h, w); alpha_bar_t, alpha_bar_prev, std (B,) -> (B, C, h, w)
    """
    abar_t, abar_prev = expand_to(alpha_bar_t, x_t), expand_to(alpha_bar_prev, x_t)
    eps_hat = (x_t - abar_t.sqrt() * x0_hat) / (1 - abar_t).sqrt()
    direction = (1 - abar_prev - expand_to(std, x_t).square()).clamp(min=0).sqrt()
    return abar_prev.sqrt() * x0_hat + direction * eps_hat


def flow_sde_diffusion(sigma: torch.Tensor, sigma_next: torch.Tensor, noise_scale: float) -> torch.Tensor:
    """s_t = a sqrt(sigma / (1 - sigma)) (Liu et al. 2025, below eq. 9). At sigma = 1, where it is infinite,
    sigma_next stands in for sigma in the denominator, as Flow-GRPO's code takes the schedule's second sigma.

    Shape: (B,), (B,) -> (B,)
    """
    bounded = torch.where(sigma >= 1, sigma_next, sigma)
    return noise_scale * (sigma / (1 - bounded)).sqrt()


def flow_sde_step_mean(x_t: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
                       diffusion: torch.Tensor) -> torch.Tensor:
    """The SDE step's mean (Liu et al. 2025, eq. 9): the Euler step plus the score correction s_t^2/(2 sigma)
    (x + (1 - sigma) v_hat) dt that keeps the marginals of the deterministic flow.

    Shape: x_t, velocity (B, C, h, w); sigma, sigma_next, diffusion (B,) -> (B, C, h, w)
    """
    sigma, dt = expand_to(sigma, x_t), expand_to(sigma_next - sigma, x_t)
    correction = expand_to(diffusion, x_t).square() / (2 * sigma)
    return x_t * (1 + correction * dt) + velocity * (1 + correction * (1 - sigma)) * dt


def flow_sde_step_std(diffusion: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """The step's Gaussian std s_t sqrt(-dt), dt = sigma_next - sigma < 0 (eq. 9's last term).
    Shape: (B,), (B,), (B,) -> (B,)"""
    return diffusion * (sigma - sigma_next).sqrt()


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std^2 I), averaged over all dimensions but the first.

    Shape: x, mean (B, C, h, w); std (B,) -> (B,)
    """
    std = expand_to(std, x)
    log_density = -(x - mean).square() / (2 * std.square()) - std.log() - 0.5 * math.log(2 * math.pi)
    return log_density.flatten(1).mean(dim=1)


def group_advantages(rewards: torch.Tensor, group_size: int, clip: float, eps: float = 1e-4) -> torch.Tensor:
    """(r - mean of its group) / (std of its group + eps), clipped to [-clip, clip]; groups are consecutive.

    Shape: rewards (G * group_size,) -> (G * group_size,)
    """
    groups = rewards.float().view(-1, group_size)
    std = groups.std(dim=1, keepdim=True, unbiased=False)
    return ((groups - groups.mean(dim=1, keepdim=True)) / (std + eps)).clamp(-clip, clip).flatten()


def clipped_surrogate(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                      clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped objective as a loss to minimise (Schulman et al. 2017, eq. 7), and the ratios.

    loss = mean(max(-A * rho, -A * clip(rho, 1 - c, 1 + c))), rho = exp(log_prob - old_log_prob).
    Shape: (B,), (B,), (B,) -> scalar, (B,)
    """
    ratio = (log_prob - old_log_prob).exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    return torch.maximum(unclipped, clipped).mean(), ratio


def kl_estimate(log_prob: torch.Tensor, reference_log_prob: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi_theta || pi_ref) at samples of pi_theta: exp(d) - d - 1 with
    d = log pi_ref - log pi_theta; non-negative, zero iff the two agree (DeepSeekMath's GRPO, eq. 4).
    Shape: (B,), (B,) -> (B,)"""
    difference = reference_log_prob - log_prob
    return difference.exp() - difference - 1
