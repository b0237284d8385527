"""The feature critic: Q = head(f(decode(x0_hat))) on a frozen encoder, fitted with replay, guarded by probes."""

import pytest
import torch
import torch.nn.functional as F

from rewardbooth.core.config import CriticConfig
from rewardbooth.core.errors import UserError
from rewardbooth.training.critic import CriticSpec, critic_fit, make_critic, make_critic_optimizer
from rewardbooth.training.feature_critic import FeatureCritic

torch.manual_seed(0)
PROJECTION = torch.randn(3, 4, 1, 1) * 0.5
ENCODER_WEIGHTS = torch.randn(16, 3 * 8 * 8) / 13


def decode(latents: torch.Tensor) -> torch.Tensor:
    """A fixed 'VAE decoder': latents (B, 4, 8, 8) -> images (B, 3, 16, 16) in [0, 1]."""
    return torch.sigmoid(F.interpolate(F.conv2d(latents, PROJECTION), scale_factor=2))


class Encoder:
    """A fixed 'pretrained encoder': pooled pixels through a random projection, unit length."""

    dim = 16

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.avg_pool2d(images, 2).flatten(1) @ ENCODER_WEIGHTS.T, dim=1)


def critic(probe_step=0.0, replay_size=256, replay_batch=32, hidden=32):
    torch.manual_seed(3)
    return FeatureCritic(Encoder(), Encoder.dim, decode, decode(torch.randn(4, 4, 8, 8)), hidden, replay_size,
                         replay_batch, probe_step)


def encoder_reward(latents: torch.Tensor) -> torch.Tensor:
    """A reward the encoder knows: cosine to a target direction in its own feature space."""
    target = F.normalize(torch.arange(16.0) - 7.5, dim=0)
    return Encoder()(decode(latents)) @ target


def fit(model, steps=150, batch=8, probe_score=None):
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        latents = torch.randn(batch, 4, 8, 8, generator=generator)
        inputs, rewards, _ = model.regression_batch(latents, encoder_reward(latents), probe_score or encoder_reward)
        loss = (model(inputs) - rewards).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def gradient_cosine(model, latents):
    latents = latents.clone().requires_grad_(True)
    (q_grad,) = torch.autograd.grad(model(latents).sum(), latents)
    latents = latents.detach().requires_grad_(True)
    (r_grad,) = torch.autograd.grad(encoder_reward(latents).sum(), latents)
    return F.cosine_similarity(q_grad.flatten(), r_grad.flatten(), dim=0).item()


def test_starts_constant_and_after_a_short_fit_carries_the_gradient_of_a_reward_its_encoder_knows():
    model = critic()
    latents = torch.randn(16, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    assert torch.equal(model(latents), torch.zeros(16))  # Q learns everything from the reward's values
    fit(model)
    assert gradient_cosine(model, latents) > 0.8


def test_the_gradient_reaches_the_latents_through_the_decoder_and_encoder_only():
    model = critic()
    fit(model, steps=20)
    latents = torch.randn(2, 4, 8, 8, requires_grad=True)
    model(latents).sum().backward()
    assert latents.grad.abs().sum() > 0
    assert not any("encoder" in name or "decode" in name for name, _ in model.named_parameters())
    assert set(dict(model.named_parameters())) == {"similarity.weight", "similarity.bias", "head.0.weight",
                                                   "head.0.bias", "head.2.weight", "head.2.bias", "head.4.weight",
                                                   "head.4.bias"}


def test_replay_fits_on_this_step_first_then_earlier_samples_and_the_ring_wraps():
    model = critic(replay_size=10, replay_batch=6)
    first = torch.randn(4, 4, 8, 8)
    inputs, rewards, logs = model.regression_batch(first, torch.arange(4.0), encoder_reward)
    assert inputs.shape == (6, 16) and torch.equal(rewards[:4], torch.arange(4.0)) and logs == {}
    assert torch.allclose(inputs[:4], model.embed(first))
    assert set(rewards[4:].tolist()) <= {0.0, 1.0, 2.0, 3.0}  # replayed from what was stored
    for _ in range(3):
        model.regression_batch(torch.randn(4, 4, 8, 8), torch.full((4,), 9.0), encoder_reward)
    assert model.replay_seen.item() == 16 and torch.equal(model.replay_rewards, torch.full((10,), 9.0))


def test_replay_draws_depend_on_the_checkpointed_state_only():
    """A resumed run replays what an uninterrupted one does: the draws follow the saved buffers."""
    model = critic()
    model.regression_batch(torch.randn(8, 4, 8, 8), torch.randn(8), encoder_reward)
    restored = critic()
    restored.load_state_dict(model.state_dict())
    torch.manual_seed(123)  # the global RNG plays no part
    latents, rewards = torch.randn(2, 4, 8, 8), torch.randn(2)
    first = model.regression_batch(latents, rewards, encoder_reward)
    second = restored.regression_batch(latents, rewards, encoder_reward)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize("sign,trusted", [(1.0, True), (-1.0, False)])
def test_probes_measure_whether_the_reward_rises_along_the_critic_gradient_and_set_its_trust(sign, trusted):
    model = critic(probe_step=0.05)
    fit(model, steps=60)  # Q now climbs where encoder_reward does
    latents = torch.randn(8, 4, 8, 8)
    for _ in range(30):
        _, _, logs = model.regression_batch(latents, encoder_reward(latents), lambda x: sign * encoder_reward(x))
    assert logs["critic/probe_agreement"].item() == (1.0 if trusted else 0.0)
    assert logs["critic/trust"].item() == pytest.approx(1.0 if trusted else 0.0, abs=0.1)
    q = model(latents)  # the policy's Q, scaled by the trust
    assert (q.abs().sum() > 0) == trusted


def test_ties_of_a_quantised_reward_leave_the_trust_as_it_was():
    model = critic(probe_step=0.05)
    fit(model, steps=30)
    before = model.trust.item()
    _, _, logs = model.regression_batch(torch.randn(4, 4, 8, 8), torch.zeros(4), lambda x: torch.zeros(len(x)))
    assert "critic/probe_agreement" not in logs and logs["critic/trust"].item() == before


def spec():
    return CriticSpec(4, (8, 8), 32, decode=decode, reference_images=decode(torch.randn(3, 4, 8, 8)))


def test_critic_fit_keeps_other_critics_batches_as_they_are():
    conv = make_critic(CriticSpec(4, (8, 8)), CriticConfig(name="conv", hidden_channels=8))
    features, timesteps, rewards = torch.randn(2, 4, 8, 8), torch.tensor([3, 4]), torch.randn(2)
    fit_ = critic_fit(conv, features, timesteps, None, rewards, encoder_reward)
    assert fit_.inputs is features and fit_.timesteps is timesteps and fit_.rewards is rewards and fit_.logs == {}


def test_built_from_config_on_the_toy_encoder_and_trained_by_its_optimizer():
    config = CriticConfig(name="feature", input="prediction", encoder="toy_encoder", hidden_channels=16,
                          replay_batch=8)
    model = make_critic(spec(), config)
    optimizer = make_critic_optimizer(model, config)
    latents = torch.randn(3, 4, 8, 8)
    fit_ = critic_fit(model, latents, torch.zeros(3), None, torch.rand(3), encoder_reward)
    assert fit_.inputs.shape == (8, 64)
    loss = (model(fit_.inputs, fit_.timesteps) - fit_.rewards).square().mean()
    loss.backward()
    optimizer.step()
    assert model(latents).shape == (3,)


@pytest.mark.parametrize("overrides,message", [
    ({"input": "residual"}, "set critic.input=prediction"),
    ({"input": "prediction", "condition_on_text": True}, "critic.condition_on_text=false"),
    ({"input": "prediction", "encoder": "nope"}, "unknown critic encoder 'nope'"),
])
def test_a_feature_critic_it_cannot_build_is_refused_in_one_line(overrides, message):
    from rewardbooth.core.config import load_config
    from rewardbooth.training.critic import check_critic

    config = load_config("default", ["critic.name=feature", *[f"critic.{k}={v}" for k, v in overrides.items()]])
    with pytest.raises(UserError, match=message) as error:
        check_critic(config)
    assert "\n" not in str(error.value)
