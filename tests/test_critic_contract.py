"""One contract every registered critic passes: registering a critic enrolls it here."""

import pytest
import torch

from rewardbooth.config import CriticConfig
from rewardbooth.critic import critics, make_critic, make_critic_optimizer


@pytest.fixture(params=critics.names())
def name(request):
    return request.param


@pytest.mark.parametrize("condition_on_text", [False, True])
@pytest.mark.parametrize("batch_size,size", [(1, 8), (3, 16), (2, 64), (5, 13)])
def test_any_batch_and_resolution(name, condition_on_text, batch_size, size):
    critic = make_critic(8, 32, CriticConfig(name=name, hidden_channels=16, condition_on_text=condition_on_text))
    q = critic(torch.randn(batch_size, 8, size, size), torch.randint(1000, (batch_size,)), torch.randn(batch_size, 7, 32))
    assert q.shape == (batch_size,) and q.dtype == torch.float32 and torch.isfinite(q).all()


def test_starts_at_zero_and_learns_a_timestep_dependent_target(name):
    """Q starts at 0 (no push from an untrained critic) and can fit a reward that depends on t."""
    torch.manual_seed(0)
    critic = make_critic(4, None, CriticConfig(name=name, hidden_channels=32, lr=3e-3))
    features = torch.randn(16, 4, 8, 8)
    timesteps = torch.arange(16) * 60
    assert critic(features, timesteps).abs().max() == 0
    target = -(timesteps.float() / 1000) - features.square().mean(dim=(1, 2, 3))
    optimizer = make_critic_optimizer(critic, CriticConfig(name=name, lr=3e-3))
    initial = (critic(features, timesteps) - target).square().mean().item()
    for _ in range(300):
        loss = (critic(features, timesteps) - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05 * initial


def test_gradient_reaches_the_action_features(name):
    critic = make_critic(4, None, CriticConfig(name=name, hidden_channels=16))
    for parameter in critic.parameters():  # move off the zero-initialized head
        torch.nn.init.normal_(parameter, std=0.1)
    features = torch.randn(2, 4, 8, 8, requires_grad=True)
    critic(features, torch.tensor([10, 900])).sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_parameters_and_output_stay_fp32_under_autocast(name):
    critic = make_critic(4, 32, CriticConfig(name=name, hidden_channels=16, condition_on_text=True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = critic(torch.randn(2, 4, 8, 8, dtype=torch.bfloat16), torch.tensor([1, 2]),
                   torch.randn(2, 5, 32, dtype=torch.bfloat16))
    assert q.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in critic.parameters())


def test_text_conditioned_critic_needs_text(name):
    critic = make_critic(4, 32, CriticConfig(name=name, hidden_channels=16, condition_on_text=True))
    with pytest.raises(ValueError, match="text"):
        critic(torch.randn(1, 4, 8, 8), torch.tensor([1]), None)


def test_sgd_and_adamw_optimizers():
    critic = make_critic(4, None, CriticConfig())
    assert isinstance(make_critic_optimizer(critic, CriticConfig(optimizer="sgd")), torch.optim.SGD)
    assert isinstance(make_critic_optimizer(critic, CriticConfig(optimizer="adamw")), torch.optim.AdamW)
