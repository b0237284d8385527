"""Rollout policy gradients (DDPO, Black et al. 2023; Flow-GRPO, Liu et al. 2025): the pure maths.

A stochastic sampler makes denoising a Markov decision process whose every step is a Gaussian policy
pi_theta(x_{t'} | x_t) = N(mean_theta(x_t, t), std_t^2 I). For DDPM families that step is DDIM with eta > 0
(Song et al. 2021, eq. 12): with x0_hat and eps_hat implied by the denoiser's action,
    std_t = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)
    mean  = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - std_t^2) eps_hat
(eta = 1 is the DDPM posterior's variance). Log-probabilities are averaged over the latent's dimensions, as
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
