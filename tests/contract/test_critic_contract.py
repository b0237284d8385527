"""One contract every registered critic passes: registering a critic enrolls it here.

Besides shapes and precision, the contract is about what the policy receives, dQ/da: a critic must carry a
known differentiable reward's gradient, not merely regress its values. A factory may declare what its critic
reads (`inputs`, `reads_text`); each check runs on what it declares.
"""

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from rewardbooth.core.config import CriticConfig
from rewardbooth.maths import dpg
from rewardbooth.training.critic import CriticSpec, critic_fit, critics, make_critic, make_critic_optimizer
from rewardbooth.training.critic_diagnostics import alignment_terms

DECODER = torch.randn(3, 8, 1, 1, generator=torch.Generator().manual_seed(0)) * 0.5


def decode(latents):
    """The run's decoder as critics that read images see it: latents (B, C, h, w) -> (B, 3, 2h, 2w) in [0, 1]."""
    return torch.sigmoid(F.interpolate(F.conv2d(latents.float(), DECODER[:, :latents.shape[1]]), scale_factor=2))


def spec(channels, size, text_dim=None):
    return CriticSpec(channels, size, text_dim, decode=decode,
                      reference_images=decode(torch.randn(3, channels, *size, generator=torch.Generator().manual_seed(1))))


def settings(**options):
    """The critic's config; an encoder-reading critic reads the toy world's shipped encoder (offline)."""
    return CriticConfig(**{"encoder": "toy_encoder", **options})


def reads(name, what):
    factory = critics.get(name)
    return what in getattr(factory, "inputs", ()) if what != "text" else getattr(factory, "reads_text", True)


@pytest.fixture(params=critics.names())
def name(request):
    return request.param


@pytest.mark.parametrize("condition_on_text", [False, True])
@pytest.mark.parametrize("batch_size,size", [(1, 8), (3, 16), (2, 64), (5, 13)])
def test_any_batch_and_resolution(name, condition_on_text, batch_size, size):
    if condition_on_text and not reads(name, "text"):
        pytest.skip(f"{name} declares it reads no text")
    critic = make_critic(spec(8, (16, 16), 32), settings(name=name, hidden_channels=16, input="prediction",
                                                             condition_on_text=condition_on_text))
    q = critic(torch.randn(batch_size, 8, size, size), torch.randint(1000, (batch_size,)), torch.randn(batch_size, 7, 32))
    assert q.shape == (batch_size,) and q.dtype == torch.float32 and torch.isfinite(q).all()


@pytest.mark.parametrize("height,width", [(12, 20), (20, 12)])
def test_non_square_latents_of_an_aspect_bucket(name, height, width):
    """data.aspect_buckets: a portrait's (or landscape's) latents, at a grid the critic was not sized for."""
    critic = make_critic(spec(8, (16, 16), 32), settings(name=name, hidden_channels=16, input="prediction"))
    features = torch.randn(2, 8, height, width, requires_grad=True)
    q = critic(features, torch.randint(1000, (2,)), torch.randn(2, 7, 32))
    assert q.shape == (2,) and torch.isfinite(q).all()
    (gradient,) = torch.autograd.grad(q.sum(), features)
    assert gradient.shape == features.shape and torch.isfinite(gradient).all()


def test_learns_to_regress_a_reward_of_its_features(name):
    torch.manual_seed(0)
    config = settings(name=name, hidden_channels=32, lr=3e-3, input="prediction")
    critic = make_critic(spec(4, (8, 8)), config)
    optimizer = make_critic_optimizer(critic, config)
    features = torch.randn(16, 4, 8, 8)
    timesteps = torch.arange(16) * 60
    target = features[:, 0].mean(dim=(1, 2)) - features.square().mean(dim=(1, 2, 3))
    initial = (critic(features, timesteps) - target).square().mean().item()
    for _ in range(300):
        # What a scoring step fits on (the critic's own choice: this batch, or with replay).
        fit = critic_fit(critic, features, timesteps, None, target, lambda latents: torch.zeros(len(latents)))
        loss = (critic(fit.inputs, fit.timesteps)[:16] - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05 * initial


SCHEDULE = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod


def on_policy_batch(generator, size=8, policy_error=0.1):
    """What the loop feeds the critic: x_t of reference latents, a denoiser's action with some error, x0_hat."""
    x0, noise = torch.randn(size, 4, 16, 16, generator=generator), torch.randn(size, 4, 16, 16, generator=generator)
    timesteps = torch.randint(1000, (size,), generator=generator)
    alpha_bar = SCHEDULE[timesteps]
    x_t = dpg.expand_to(alpha_bar.sqrt(), x0) * x0 + dpg.expand_to((1 - alpha_bar).sqrt(), x0) * noise
    action = noise + policy_error * torch.randn(x0.shape, generator=generator)
    return x0, x_t, action, timesteps, alpha_bar


def look_forward_alignment(critic, generator):
    """cos(dQ/da, dr/da) and the norm ratio for the look-forward reward, with the residual input."""
    x0, x_t, action, timesteps, alpha_bar = on_policy_batch(generator, size=16)

    def x0_hat(a):
        return dpg.predict_x0(x_t, a, alpha_bar, "epsilon")

    terms = alignment_terms(lambda a: critic(dpg.critic_features("residual", x_t, a, x0_hat(a), x0), timesteps),
                            lambda a: -dpg.per_sample_mse(x0_hat(a), x0), action, torch.ones(16))
    return terms["critic/grad_cosine"].item(), terms["critic/grad_ratio"].item()


def test_carries_the_look_forward_gradient_from_the_start_and_after_a_short_fit(name):
    """What the policy receives is dQ/da: with the residual input it must point where the reward's gradient
    points, before any regression (the presets' critics start there; the released one at ~0.4x the norm) and,
    at about the reward's own magnitude, after 200 on-policy steps."""
    if not reads(name, "residual"):
        pytest.skip(f"{name} does not read the residual input the look-forward reward is a function of")
    torch.manual_seed(0)
    config = settings(name=name, input="residual")
    critic = make_critic(CriticSpec(4, (16, 16)), config)
    optimizer = make_critic_optimizer(critic, config)
    figures = [look_forward_alignment(critic, torch.Generator().manual_seed(99))]
    generator = torch.Generator().manual_seed(1)
    for _ in range(200):
        x0, x_t, action, timesteps, alpha_bar = on_policy_batch(generator)
        x0_hat = dpg.predict_x0(x_t, action, alpha_bar, "epsilon")
        q = critic(dpg.critic_features("residual", x_t, action, x0_hat, x0), timesteps)
        loss = dpg.critic_loss(q, -dpg.per_sample_mse(x0_hat, x0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    figures.append(look_forward_alignment(critic, torch.Generator().manual_seed(99)))
    (start_cosine, start_ratio), (cosine, ratio) = figures
    assert start_cosine >= 0.9 and start_ratio >= 0.25, figures
    assert cosine >= 0.9 and 0.5 <= ratio <= 2, figures


def test_gradient_reaches_the_action_features(name):
    critic = make_critic(spec(4, (8, 8)), settings(name=name, hidden_channels=16, input="prediction"))
    for parameter in critic.parameters():  # move off the zero-initialized head
        torch.nn.init.normal_(parameter, std=0.1)
    features = torch.randn(2, 4, 8, 8, requires_grad=True)
    critic(features, torch.tensor([10, 900])).sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_parameters_and_output_stay_fp32_under_autocast(name):
    critic = make_critic(spec(4, (8, 8), 32), settings(name=name, hidden_channels=16, input="prediction",
                                                           condition_on_text=reads(name, "text")))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = critic(torch.randn(2, 4, 8, 8, dtype=torch.bfloat16), torch.tensor([1, 2]),
                   torch.randn(2, 5, 32, dtype=torch.bfloat16))
    assert q.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in critic.parameters())


def test_text_conditioned_critic_needs_text(name):
    if not reads(name, "text"):
        pytest.skip(f"{name} declares it reads no text")
    critic = make_critic(spec(4, (8, 8), 32), settings(name=name, hidden_channels=16, condition_on_text=True))
    with pytest.raises(ValueError, match="text"):
        critic(torch.randn(1, 4, 8, 8), torch.tensor([1]), None)


def test_sgd_and_adamw_optimizers():
    critic = make_critic(CriticSpec(4, (8, 8)), CriticConfig())
    assert isinstance(make_critic_optimizer(critic, CriticConfig(optimizer="sgd")), torch.optim.SGD)
    assert isinstance(make_critic_optimizer(critic, CriticConfig(optimizer="adamw")), torch.optim.AdamW)
