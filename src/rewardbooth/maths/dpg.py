"""The maths of deterministic-policy-gradient personalization: pure functions, tensors in, tensors out.

Notation (Wei et al. 2024, arXiv 2407.06642, §3; DESIGN.md §1): x0 is the reference latent, t ~ U{0..T-1},
eps ~ N(0, I), x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, and the action a = f_theta(x_t, t, c) is the
UNet output in the scheduler's parameterization (epsilon, v or sample). The policy is deterministic, so the
actor climbs a learned critic Q_phi(s, a) through dQ/da (Silver et al. 2014, Theorem 1).
"""

from __future__ import annotations

from typing import Literal

import torch

PredictionType = Literal["epsilon", "v_prediction", "sample"]


def expand_to(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample scalars broadcastable against a latent batch.

    Shape: values (B,), like (B, C, h, w) -> (B, 1, 1, 1)
    """
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1))).to(like.dtype)


def diffuse(x0: torch.Tensor, noise: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """The forward process in one jump (Ho et al. 2020, eq. 4): x_t = sqrt(abar) x0 + sqrt(1 - abar) eps.

    Shape: x0, noise (B, C, h, w); alpha_bar_t (B,) -> (B, C, h, w)
    """
    return expand_to(alpha_bar_t.sqrt(), x0) * x0 + expand_to((1 - alpha_bar_t).sqrt(), x0) * noise


def predict_x0(
    x_t: torch.Tensor, action: torch.Tensor, alpha_bar_t: torch.Tensor, prediction_type: PredictionType
) -> torch.Tensor:
    """The "look forward" step: the clean latent implied by the action in one jump.

    epsilon:      x0_hat = (x_t - sqrt(1 - abar) eps_hat) / sqrt(abar)
    v_prediction: x0_hat = sqrt(abar) x_t - sqrt(1 - abar) v_hat   (Salimans & Ho 2022, §4)
    sample:       x0_hat = a

    Shape: x_t, action (B, C, h, w); alpha_bar_t (B,) -> (B, C, h, w)
    """
    abar = expand_to(alpha_bar_t, x_t)
    if prediction_type == "epsilon":
        return (x_t - (1 - abar).sqrt() * action) / abar.sqrt()
    if prediction_type == "v_prediction":
        return abar.sqrt() * x_t - (1 - abar).sqrt() * action
    if prediction_type == "sample":
        return action
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def denoising_target(
    x0: torch.Tensor, noise: torch.Tensor, alpha_bar_t: torch.Tensor, prediction_type: PredictionType
) -> torch.Tensor:
    """What the action should equal: eps, v = sqrt(abar) eps - sqrt(1 - abar) x0, or x0.

    Shape: x0, noise (B, C, h, w); alpha_bar_t (B,) -> (B, C, h, w)
    """
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        abar = expand_to(alpha_bar_t, x0)
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0
    if prediction_type == "sample":
        return x0
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def flow_diffuse(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Rectified flow's straight path (Liu et al. 2023; Esser et al. 2024, eq. 1): x_σ = (1 - σ) x0 + σ ε.

    Shape: x0, noise (B, C, h, w); sigma (B,) -> (B, C, h, w)
    """
    sigma = expand_to(sigma, x0)
    return (1 - sigma) * x0 + sigma * noise


def flow_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity a flow-matching denoiser predicts, v = dx_σ/dσ = ε - x0 (diffusers' SD3 / FLUX scripts).

    Shape: (B, C, h, w) -> (B, C, h, w)
    """
    return noise - x0


def flow_predict_x0(x_sigma: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Look forward along the predicted velocity to σ = 0: x̂0 = x_σ - σ v̂, so ||x̂0 - x0||² = σ² ||v̂ - v||².

    Shape: x_sigma, velocity (B, C, h, w); sigma (B,) -> (B, C, h, w)
    """
    return x_sigma - expand_to(sigma, x_sigma) * velocity


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each sample, computed in fp32.

    Shape: (B, ...) -> (B,)
    """
    return (prediction.float() - target.float()).square().flatten(1).mean(dim=1)


def inverse_snr(alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """(1 - abar) / abar: for epsilon-prediction ||x0_hat - x0||^2 = inverse_snr * ||eps_hat - eps||^2 exactly.

    Shape: (B,) -> (B,)
    """
    return (1 - alpha_bar_t) / alpha_bar_t


def discount(timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """gamma**t, the paper's weighting of the policy term by how far the state is from the image (Eq. 9).

    `timesteps` are the process's own time values on one 0..1000 scale: DDPM's integer t, a flow family's
    float 1000σ (γ is raised to 1000σ, the value the denoiser is given, so one γ means the same over
    the same range in both; σ is the noise's coefficient, as sqrt(1 - ᾱ_t) is in DDPM).

    Shape: (B,) integer or float timesteps -> (B,) float32
    """
    return torch.pow(torch.tensor(gamma, dtype=torch.float64), timesteps.double()).float()


def actor_loss(
    instance_mse: torch.Tensor,
    prior_mse: torch.Tensor | None,
    q_values: torch.Tensor | None,
    timesteps: torch.Tensor,
    *,
    instance_weight: float,
    prior_weight: float,
    critic_weight: float,
    gamma: float,
) -> dict[str, torch.Tensor]:
    """loss = w_inst * mean(mse_inst) + w_prior * mean(mse_prior) - lambda * mean(gamma**t * Q(s, a)).

    The critic's parameters must be frozen while this loss is backpropagated: only dQ/da reaches theta.
    Returns the total under "loss" and each term (detached) for logging.

    Shape: instance_mse, q_values, timesteps (B,); prior_mse (B_prior,) -> scalars
    """
    instance_term = instance_weight * instance_mse.mean()
    total = instance_term
    terms = {"instance_loss": instance_mse.mean().detach()}
    if prior_mse is not None:
        total = total + prior_weight * prior_mse.mean()
        terms["prior_loss"] = prior_mse.mean().detach()
    if q_values is not None:
        weights = discount(timesteps, gamma).to(q_values.device)
        policy_term = -critic_weight * (weights * q_values.float()).mean()
        total = total + policy_term
        terms["policy_term"] = policy_term.detach()
        terms["discount_mean"] = weights.mean()
    terms["loss"] = total
    return terms


def critic_loss(q_values: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """Regression of Q(s, a) on the reward of the action actually taken (both inputs detached upstream).

    Shape: q_values, rewards (B,) -> scalar
    """
    return (q_values.float() - rewards.detach().float()).square().mean()


def critic_features(
    kind: Literal["state_action", "residual", "prediction"],
    x_t: torch.Tensor,
    action: torch.Tensor,
    x0_hat: torch.Tensor,
    x0: torch.Tensor,
) -> torch.Tensor:
    """The critic's input image.

    state_action: [x_t, a] stacked on channels, the textbook Q(s, a).
    residual:     (x0_hat - x0)^2, the released code's input; it makes the look-forward reward nearly linear
                  in the input, so the critic learns it fast but only for rewards that compare to x0.
    prediction:   x0_hat itself. Still a function of (s, a) (Eq. look-forward: x0_hat = (x_t - sqrt(1 - abar_t)
                  a) / sqrt(abar_t) for eps-prediction), and every reward here scores x0_hat alone, so
                  Q(x0_hat, t) can represent any of them exactly, without first learning the look-forward map.

    Shape: all (B, C, h, w) -> (B, 2C, h, w) or (B, C, h, w)
    """
    if kind == "state_action":
        return torch.cat([x_t, action], dim=1)
    if kind == "residual":
        return (x0_hat - x0).square()
    if kind == "prediction":
        return x0_hat
    raise ValueError(f"unknown critic input {kind!r}")


def critic_input_channels(kind: str, latent_channels: int) -> int:
    return 2 * latent_channels if kind == "state_action" else latent_channels


def gradient_alignment(critic_gradient: torch.Tensor, reward_gradient: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How well the critic's push matches the reward's: cos(dQ/da, dr/da) and ||dQ/da|| / ||dr/da||.

    Both gradients are of the batch's weighted sum (sum_i gamma^t_i Q_i and sum_i gamma^t_i r_i) with respect
    to the batch of actions, i.e. exactly what the policy term hands to the UNet; each sample's action only
    moves its own term, so the batch vectors are the per-sample gradients laid end to end. A cosine near 1 and
    a ratio near 1 mean the critic carries the reward's gradient; a well-fitted Q (high R^2) does not imply
    either (DESIGN.md §1). Undefined (NaN) when the reward's gradient is zero.

    Shape: (B, ...) each -> two scalars (float32)
    """
    critic_flat, reward_flat = critic_gradient.flatten().double(), reward_gradient.flatten().double()
    reward_norm = reward_flat.norm()
    if reward_norm == 0:
        nan = torch.tensor(float("nan"))
        return nan, nan
    critic_norm = critic_flat.norm()
    cosine = (critic_flat @ reward_flat) / (critic_norm * reward_norm).clamp_min(1e-300)
    return cosine.float(), (critic_norm / reward_norm).float()


def r_squared(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Coefficient of determination 1 - SS_res / SS_tot of predictions of targets (NaN if targets are constant).

    Shape: (N,), (N,) -> scalar (float32)
    """
    predictions, targets = predictions.double(), targets.double()
    total = (targets - targets.mean()).square().sum()
    if len(targets) < 2 or total == 0:
        return torch.tensor(float("nan"))
    return (1 - (predictions - targets).square().sum() / total).float()
