"""The DPG maths against values computed by hand."""

import math

import pytest
import torch

from rewardbooth.maths import dpg


def scalar_batch(*values):
    return torch.tensor(values, dtype=torch.float32).reshape(-1, 1, 1, 1)


def test_predict_x0_epsilon_by_hand():
    # x_t = 1, eps_hat = 0.5, abar = 0.25: (1 - sqrt(0.75) * 0.5) / 0.5 = 2 - sqrt(0.75)
    x0_hat = dpg.predict_x0(scalar_batch(1.0), scalar_batch(0.5), torch.tensor([0.25]), "epsilon")
    assert x0_hat.item() == pytest.approx(2 - math.sqrt(0.75))


def test_predict_x0_v_prediction_by_hand():
    # sqrt(0.25) * 1 - sqrt(0.75) * 0.5
    x0_hat = dpg.predict_x0(scalar_batch(1.0), scalar_batch(0.5), torch.tensor([0.25]), "v_prediction")
    assert x0_hat.item() == pytest.approx(0.5 - 0.5 * math.sqrt(0.75))


def test_v_target_by_hand():
    # v = sqrt(abar) eps - sqrt(1 - abar) x0 with x0 = 2, eps = 1, abar = 0.25
    v = dpg.denoising_target(scalar_batch(2.0), scalar_batch(1.0), torch.tensor([0.25]), "v_prediction")
    assert v.item() == pytest.approx(0.5 - 2 * math.sqrt(0.75))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_exact_action_looks_forward_to_x0(prediction_type):
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 5, 6, generator=generator), torch.randn(3, 4, 5, 6, generator=generator)
    alpha_bar = torch.tensor([0.9, 0.5, 0.01])
    x_t = dpg.expand_to(alpha_bar.sqrt(), x0) * x0 + dpg.expand_to((1 - alpha_bar).sqrt(), x0) * noise
    action = dpg.denoising_target(x0, noise, alpha_bar, prediction_type)
    torch.testing.assert_close(dpg.predict_x0(x_t, action, alpha_bar, prediction_type), x0, atol=1e-4, rtol=1e-4)


def test_look_forward_loss_is_inverse_snr_weighted_epsilon_loss():
    """DESIGN §1: ||x0_hat - x0||^2 = (1 - abar) / abar * ||eps_hat - eps||^2 exactly (epsilon-prediction)."""
    generator = torch.Generator().manual_seed(1)
    x0, noise, eps_hat = (torch.randn(4, 4, 8, 8, generator=generator, dtype=torch.float64) for _ in range(3))
    alpha_bar = torch.tensor([0.99, 0.6, 0.1, 0.005], dtype=torch.float64)
    x_t = dpg.expand_to(alpha_bar.sqrt(), x0) * x0 + dpg.expand_to((1 - alpha_bar).sqrt(), x0) * noise
    x0_hat = dpg.predict_x0(x_t, eps_hat, alpha_bar, "epsilon")
    lhs = (x0_hat - x0).square().flatten(1).sum(1)
    rhs = dpg.inverse_snr(alpha_bar) * (eps_hat - noise).square().flatten(1).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)


def test_discount_by_hand():
    torch.testing.assert_close(dpg.discount(torch.tensor([0, 1, 3]), 0.5), torch.tensor([1.0, 0.5, 0.125]))
    assert dpg.discount(torch.tensor([999]), 0.9986).item() == pytest.approx(0.9986**999, rel=1e-6)
    assert dpg.discount(torch.tensor([999]), 1.0).item() == 1.0


def test_per_sample_mse_by_hand():
    prediction = torch.zeros(2, 1, 2, 2)
    target = torch.stack([torch.ones(1, 2, 2), 2 * torch.ones(1, 2, 2)])
    torch.testing.assert_close(dpg.per_sample_mse(prediction, target), torch.tensor([1.0, 4.0]))


def test_actor_loss_by_hand():
    # 0.5 * mean(1, 3) + 2 * mean(4) - 3 * mean(0.5**0 * 2, 0.5**1 * -2) = 1 + 8 - 1.5 = 7.5
    terms = dpg.actor_loss(torch.tensor([1.0, 3.0]), torch.tensor([4.0]), torch.tensor([2.0, -2.0]),
                           torch.tensor([0, 1]), instance_weight=0.5, prior_weight=2.0, critic_weight=3.0, gamma=0.5)
    assert terms["loss"].item() == pytest.approx(7.5)
    assert terms["policy_term"].item() == pytest.approx(-1.5)
    assert terms["instance_loss"].item() == pytest.approx(2.0)
    assert terms["prior_loss"].item() == pytest.approx(4.0)


def test_actor_loss_without_prior_or_critic_is_the_denoising_loss():
    terms = dpg.actor_loss(torch.tensor([1.0, 3.0]), None, None, torch.tensor([5, 7]),
                           instance_weight=1.0, prior_weight=1.0, critic_weight=1.0, gamma=0.9)
    assert terms["loss"].item() == pytest.approx(2.0)
    assert "policy_term" not in terms and "prior_loss" not in terms


def test_policy_gradient_flows_only_through_q():
    q = torch.tensor([1.0, 2.0], requires_grad=True)
    dpg.actor_loss(torch.tensor([0.0, 0.0]), None, q, torch.tensor([0, 2]), instance_weight=1.0,
                   prior_weight=1.0, critic_weight=2.0, gamma=0.5)["loss"].backward()
    # d/dq of -2 * mean(gamma^t * q) = -2 * gamma^t / 2
    torch.testing.assert_close(q.grad, torch.tensor([-1.0, -0.25]))


def test_critic_loss_by_hand_and_detaches_reward():
    rewards = torch.tensor([0.0, 4.0], requires_grad=True)
    q = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = dpg.critic_loss(q, rewards)
    assert loss.item() == pytest.approx(2.5)
    loss.backward()
    assert rewards.grad is None
    torch.testing.assert_close(q.grad, torch.tensor([1.0, -2.0]))


def test_critic_features():
    x_t, action, x0_hat, x0 = (torch.full((1, 4, 2, 2), float(v)) for v in (1, 2, 3, 5))
    assert dpg.critic_features("state_action", x_t, action, x0_hat, x0).shape == (1, 8, 2, 2)
    torch.testing.assert_close(dpg.critic_features("residual", x_t, action, x0_hat, x0), torch.full((1, 4, 2, 2), 4.0))
    assert dpg.critic_input_channels("state_action", 4) == 8
    assert dpg.critic_input_channels("residual", 4) == 4
    assert torch.equal(dpg.critic_features("prediction", x_t, action, x0_hat, x0), x0_hat)
    assert dpg.critic_input_channels("prediction", 4) == 4


def test_prediction_critic_input_passes_the_policy_gradient_through_the_look_forward_step():
    """dQ/da through x0_hat: for eps-prediction d x0_hat / d eps = -sqrt(1 - abar) / sqrt(abar)."""
    alpha_bar = torch.tensor([0.64])
    x_t, action = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2, requires_grad=True)
    x0_hat = dpg.predict_x0(x_t, action, alpha_bar, "epsilon")
    q = dpg.critic_features("prediction", x_t, action, x0_hat, torch.zeros_like(x_t)).sum()  # Q = sum(x0_hat)
    q.backward()
    torch.testing.assert_close(action.grad, torch.full_like(x_t, -0.6 / 0.8))


def test_gradient_alignment_by_hand():
    """Batch vectors laid end to end: a = (3, 4 | 0, 0), b = (3, 0 | 0, 4): cos = 9 / (5 * 5), ratio 5 / 5."""
    critic = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    reward = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    cosine, ratio = dpg.gradient_alignment(critic, reward)
    assert cosine.item() == pytest.approx(9 / 25) and ratio.item() == pytest.approx(1.0)
    cosine, ratio = dpg.gradient_alignment(2 * reward, reward)  # parallel, twice as long
    assert cosine.item() == pytest.approx(1.0) and ratio.item() == pytest.approx(2.0)
    cosine, ratio = dpg.gradient_alignment(-reward, reward)
    assert cosine.item() == pytest.approx(-1.0)
    cosine, ratio = dpg.gradient_alignment(reward, torch.zeros_like(reward))  # no reward gradient: undefined
    assert cosine.isnan() and ratio.isnan()


def test_r_squared_by_hand():
    targets = torch.tensor([1.0, 2.0, 3.0, 4.0])  # mean 2.5, SS_tot = 5
    assert dpg.r_squared(targets, targets).item() == pytest.approx(1.0)
    assert dpg.r_squared(torch.full((4,), 2.5), targets).item() == pytest.approx(0.0)  # predicting the mean
    # residuals (0.5, -0.5, 0.5, -0.5): SS_res = 1, R^2 = 1 - 1/5
    assert dpg.r_squared(targets + torch.tensor([0.5, -0.5, 0.5, -0.5]), targets).item() == pytest.approx(0.8)
    assert dpg.r_squared(torch.zeros(4), torch.ones(4)).isnan()  # constant targets


def test_flow_matching_by_hand():
    # x0 = 2, eps = 1, sigma = 0.25: x_sigma = 0.75 * 2 + 0.25 = 1.75, v = eps - x0 = -1, x0_hat(v) = 1.75 + 0.25
    x_sigma = dpg.flow_diffuse(scalar_batch(2.0), scalar_batch(1.0), torch.tensor([0.25]))
    velocity = dpg.flow_target(scalar_batch(2.0), scalar_batch(1.0))
    assert x_sigma.item() == 1.75 and velocity.item() == -1.0
    assert dpg.flow_predict_x0(x_sigma, velocity, torch.tensor([0.25])).item() == 2.0


def test_flow_look_forward_error_is_sigma_squared_times_the_velocity_error():
    """||x̂0 - x0||² = σ² ||v̂ - v||², sample by sample (DESIGN.md §1: the residual critic's input scales by σ²)."""
    generator = torch.Generator().manual_seed(0)
    x0, noise, v_hat = (torch.randn(4, 3, 5, 5, generator=generator, dtype=torch.float64) for _ in range(3))
    sigma = torch.tensor([0.01, 0.3, 0.7, 1.0], dtype=torch.float64)
    x_sigma = dpg.flow_diffuse(x0, noise, sigma)
    x0_hat = dpg.flow_predict_x0(x_sigma, v_hat, sigma)
    lhs = (x0_hat - x0).square().flatten(1).sum(1)
    rhs = sigma.square() * (v_hat - dpg.flow_target(x0, noise)).square().flatten(1).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=0)


def test_discount_takes_float_flow_timesteps():
    """Flow families give 1000σ as float32: γ^(1000σ), the same curve DDPM's integer t walks."""
    weights = dpg.discount(torch.tensor([0.0, 500.5, 1000.0]), 0.999)
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights, torch.tensor([1.0, 0.999**500.5, 0.999**1000]))
    torch.testing.assert_close(dpg.discount(torch.tensor([300.0]), 0.99), dpg.discount(torch.tensor([300]), 0.99))
