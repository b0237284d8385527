"""Critics Q_phi(s, a): small networks that regress the reward so the policy can climb it.

Contract (every registered critic, see tests/contract/test_critic_contract.py): a factory
``make(spec: CriticSpec, config) -> nn.Module`` whose module maps
``(features (B, C_in, h, w), timesteps (B,), text_embedding (B, L, D) | None) -> q (B,)`` in float32,
for any h, w and B (`spec.latent_size` is the run's own, which a critic may size itself for), and keeps
float32 parameters whatever the training precision; after a short fit to a
known differentiable reward, its input gradient must point where the reward's does (what the policy
receives is dQ/da, not Q).

- ``released``: the released code's critic, sized to the run's latents, working at any size and batch;
  its all-positive initialisation makes Q monotone in the residual from step 0 (the `paper` preset).
- ``pooled``: an MLP on per-channel statistics, t-conditioned.
- ``conv``: a strided conv trunk with FiLM conditioning (t, optionally text) and global pooling.
- ``feature``: a head on a frozen image encoder's features of decode(x0_hat) (`training.feature_critic`), the
  one critic that can carry an image reward's gradient; it reads `critic.input=prediction` only, no text.

Both of ours add a linear function of the per-channel means and mean squares (`ResidualPrior`), which with
the `residual` input and `critic.residual_prior` (the default) starts as the look-forward reward itself,
Q = -mean((x0_hat - x0)^2): the policy gets that reward's exact gradient from step 0, where a zero-initialised
head gives none for the first ~50 steps; their networks start at 0 and learn what the prior misses.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from rewardbooth.core.config import Config, CriticConfig
from rewardbooth.core.errors import UserError
from rewardbooth.core.registry import Registry
from rewardbooth.training.feature_critic import FeatureCritic

critics = Registry("critic")

TIME_EMBEDDING_DIM = 64


@dataclass(frozen=True)
class CriticSpec:
    """What a critic is built for: its input's channels, the run's latent size (h, w), the width of the
    model's text embedding (used when `critic.condition_on_text`), and for critics that read images, the
    run's decoder (latents -> (B, 3, H, W) in [0, 1], as rewards see them) and the subject's photos."""

    in_channels: int
    latent_size: tuple[int, int]
    text_dim: int | None = None
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None
    reference_images: torch.Tensor | None = None  # (N, 3, H, W) in [0, 1]


class _Conditioning(nn.Module):
    """Embeds t (sinusoidal, as the UNet does) and optionally the mean-pooled text embedding."""

    def __init__(self, width: int, text_dim: int | None):
        super().__init__()
        self.time = nn.Sequential(nn.Linear(TIME_EMBEDDING_DIM, width), nn.SiLU(), nn.Linear(width, width))
        self.text = nn.Linear(text_dim, width) if text_dim else None

    def forward(self, timesteps: torch.Tensor, text_embedding: torch.Tensor | None) -> torch.Tensor:
        embedding = self.time(get_timestep_embedding(timesteps.float(), TIME_EMBEDDING_DIM))
        if self.text is not None:
            if text_embedding is None:
                raise ValueError("this critic is conditioned on text but got no text embedding")
            embedding = embedding + self.text(text_embedding.float().mean(dim=1))
        return embedding  # (B, width)


class ResidualPrior(nn.Module):
    """q = w . [mean_c, mean_c of squares] + b over per-channel spatial statistics; starts at -mean(features)
    when `exact` (with the residual input: the look-forward reward), else at 0.

    Shape: features (B, C, h, w) -> (B,)
    """

    def __init__(self, in_channels: int, exact: bool):
        super().__init__()
        self.linear = nn.Linear(2 * in_channels, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        if exact:
            with torch.no_grad():
                self.linear.weight[0, :in_channels] = -1.0 / in_channels

    @staticmethod
    def statistics(features: torch.Tensor) -> torch.Tensor:
        return torch.cat([features.mean(dim=(2, 3)), features.square().mean(dim=(2, 3))], dim=1)  # (B, 2C)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.statistics(features)).squeeze(1)


class ConvCritic(nn.Module):
    """Q = prior(features) + head(pool(trunk(features))): a strided conv trunk, FiLM-modulated by the
    conditioning, global average pool, linear head. The head starts at zero, so Q starts as the prior
    (`ResidualPrior`: the look-forward reward, or 0).
    """

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int, text_dim: int | None,
                 residual_prior: bool = False):
        super().__init__()
        self.prior = ResidualPrior(in_channels, exact=residual_prior)
        self.stem = nn.Conv2d(in_channels, hidden_channels, kernel_size=3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.GroupNorm(math.gcd(8, hidden_channels), hidden_channels), nn.SiLU(),
                          nn.Conv2d(hidden_channels, hidden_channels, kernel_size=3, stride=2, padding=1))
            for _ in range(num_layers)
        )
        self.conditioning = _Conditioning(hidden_channels, text_dim)
        self.film = nn.Linear(hidden_channels, 2 * hidden_channels)
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(hidden_channels, 1))
        nn.init.zeros_(self.head[1].weight)
        nn.init.zeros_(self.head[1].bias)

    def forward(self, features, timesteps, text_embedding=None):
        # The critic is tiny; fp32 throughout keeps its regression stable under fp16/bf16 autocast.
        with torch.autocast(device_type=features.device.type, enabled=False):
            scale, shift = self.film(self.conditioning(timesteps, text_embedding)).chunk(2, dim=1)
            hidden = self.stem(features.float())
            hidden = hidden * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
            for block in self.blocks:
                hidden = block(hidden)
            return self.prior(features.float()) + self.head(hidden.mean(dim=(2, 3))).squeeze(1)  # (B,)


class PooledCritic(nn.Module):
    """Q = prior(stats) + MLP(stats, t[, text]) on per-channel spatial statistics (mean and mean square): the
    cheapest resolution-agnostic Q. With the 'residual' input the prior represents the look-forward reward
    exactly; the MLP starts at zero.
    """

    def __init__(self, in_channels: int, hidden_channels: int, text_dim: int | None, residual_prior: bool = False):
        super().__init__()
        self.conditioning = _Conditioning(hidden_channels, text_dim)
        self.prior = ResidualPrior(in_channels, exact=residual_prior)
        self.inputs = nn.Linear(2 * in_channels, hidden_channels)
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(hidden_channels, hidden_channels), nn.SiLU(),
                                  nn.Linear(hidden_channels, 1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, features, timesteps, text_embedding=None):
        with torch.autocast(device_type=features.device.type, enabled=False):
            stats = ResidualPrior.statistics(features.float())
            hidden = self.inputs(stats) + self.conditioning(timesteps, text_embedding)
            return self.prior.linear(stats).squeeze(1) + self.head(hidden).squeeze(1)  # (B,)


class ReleasedCritic(nn.Module):
    """The released critic (Wei et al. 2024, code: reward_model.py): conv C -> 1 (3x3), LeakyReLU(0.01), a
    Linear from the 64x64 map to 64, ReLU, Linear to 1, every weight and bias drawn from U[0, 1/fan_in].

    On the all-positive `residual` input the all-positive weights make Q monotone in every residual element,
    so its gradient starts nearly parallel to the look-forward reward's (toy world, SGD 0.01: cos 0.985,
    1.02x its norm over the second half of a run). What differs from the released module, and why:
    - the Linear spans the run's latent map (`grid`, 64x64 for SD at 512 px as released) instead of a fixed
      64x64 one; a map of another size is resampled to it (adaptive average pooling), so any resolution and
      batch work. Sizing it to the latents matters under SGD: fed a map repeated r times, the Linear's
      effective step would be r times larger (measured: a 64x64 Linear on 16x16 toy latents collapses to a
      constant Q within the first steps at lr 0.01);
    - Q is the negated network output: the released loop minimises +Q fitted to +MSE, ours maximises Q
      fitted to r = -MSE, the same function;
    - it sees no timestep, as released; a text embedding, when asked for, enters through a zero-initialised
      projection added before the ReLU, so it starts as released;
    - fp32 parameters and arithmetic under mixed precision (the released critic ran in fp16).
    """

    def __init__(self, in_channels: int, grid: tuple[int, int], text_dim: int | None, hidden: int = 64):
        super().__init__()
        self.grid = tuple(grid)
        self.conv = nn.Conv2d(in_channels, 1, kernel_size=3, padding=1)
        self.fc = nn.Linear(self.grid[0] * self.grid[1], hidden)
        self.fc2 = nn.Linear(hidden, 1)
        for layer, fan_in in ((self.conv, 3 * 3), (self.fc, self.fc.in_features), (self.fc2, hidden)):
            nn.init.uniform_(layer.weight, 0.0, 1.0 / fan_in)  # the released bounds (conv: 1/9 whatever C)
            nn.init.uniform_(layer.bias, 0.0, 1.0 / fan_in)
        self.text = nn.Linear(text_dim, hidden) if text_dim else None
        if self.text is not None:
            nn.init.zeros_(self.text.weight)
            nn.init.zeros_(self.text.bias)

    def forward(self, features, timesteps, text_embedding=None):
        with torch.autocast(device_type=features.device.type, enabled=False):
            hidden = F.leaky_relu(self.conv(features.float()), negative_slope=0.01)
            if tuple(hidden.shape[-2:]) != self.grid:
                hidden = F.adaptive_avg_pool2d(hidden, self.grid)
            hidden = self.fc(hidden.flatten(1))  # (B, h*w) -> (B, hidden)
            if self.text is not None:
                if text_embedding is None:
                    raise ValueError("this critic is conditioned on text but got no text embedding")
                hidden = hidden + self.text(text_embedding.float().mean(dim=1))
            return -self.fc2(F.relu(hidden)).squeeze(1)  # (B,)


@critics.register("conv")
def make_conv_critic(spec: CriticSpec, config: CriticConfig) -> nn.Module:
    return ConvCritic(spec.in_channels, config.hidden_channels, config.num_layers, _text_dim(spec, config),
                      residual_prior=_exact_prior(config))


@critics.register("pooled")
def make_pooled_critic(spec: CriticSpec, config: CriticConfig) -> nn.Module:
    return PooledCritic(spec.in_channels, config.hidden_channels, _text_dim(spec, config),
                        residual_prior=_exact_prior(config))


@critics.register("released")
def make_released_critic(spec: CriticSpec, config: CriticConfig) -> nn.Module:
    return ReleasedCritic(spec.in_channels, spec.latent_size, _text_dim(spec, config))


@critics.register("feature")
def make_feature_critic(spec: CriticSpec, config: CriticConfig) -> nn.Module:
    from rewardbooth.rewards.encoders import make_encoder

    if spec.decode is None or spec.reference_images is None:
        raise ValueError("the feature critic needs the run's decoder and the subject's photos (CriticSpec)")
    encoder = make_encoder(config.encoder, spec.reference_images.device, config.encoder_model)
    return FeatureCritic(encoder, encoder.dim, spec.decode, spec.reference_images, config.hidden_channels,
                         config.replay_size, config.replay_batch, config.probe_step)


# What each factory's critic reads (the contract suite and `check_critic` ask): inputs and text conditioning.
for _factory in (make_conv_critic, make_pooled_critic, make_released_critic):
    _factory.inputs, _factory.reads_text = ("state_action", "residual", "prediction"), True
make_feature_critic.inputs, make_feature_critic.reads_text = ("prediction",), False


def check_critic(config: Config) -> None:
    """Refuse, before any slow work, a critic the run cannot build: an unknown name, an input or text
    conditioning it does not read (a factory's `inputs` and `reads_text`), the feature critic on several
    concepts or with an unknown encoder."""
    factory, name = critics.get(config.critic.name), config.critic.name
    inputs = getattr(factory, "inputs", ("state_action", "residual", "prediction"))
    if config.critic.input not in inputs:
        raise UserError(f"critic.name={name} reads {' or '.join(inputs)}, not critic.input={config.critic.input}: "
                        f"set critic.input={inputs[0]}")
    if config.critic.condition_on_text and not getattr(factory, "reads_text", True):
        raise UserError(f"critic.name={name} takes no text: set critic.condition_on_text=false")
    if name != "feature":
        return
    if config.data.concepts:
        raise UserError("critic.name=feature is built on one subject's photos: train one concept per run, or "
                        "use critic.name=conv")
    from rewardbooth.rewards.encoders import encoders

    encoders.get(config.critic.encoder)


def _text_dim(spec: CriticSpec, config: CriticConfig) -> int | None:
    return spec.text_dim if config.condition_on_text else None


def _exact_prior(config: CriticConfig) -> bool:
    return config.residual_prior and config.input == "residual"


@dataclass
class CriticFit:
    """What one scoring step regresses Q on: inputs, their timesteps and text, the rewards (the step's own
    samples first), and what the critic logs about it."""

    inputs: torch.Tensor
    timesteps: torch.Tensor
    text: torch.Tensor | None
    rewards: torch.Tensor
    logs: dict[str, torch.Tensor]


def critic_fit(critic: nn.Module, features: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor | None,
               rewards: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor]) -> CriticFit:
    """The step's (features, r) as they are, unless the critic chooses its own regression batch
    (`regression_batch(features, rewards, score)`: replay, probes scored with `score`, latents -> rewards).

    Shape: features (B, ...), timesteps (B,), rewards (B,) -> inputs (M, ...), rewards (M,), M >= B
    """
    choose = getattr(critic, "regression_batch", None)
    if choose is None:
        return CriticFit(features, timesteps, text, rewards, {})
    inputs, targets, logs = choose(features, rewards, score)
    return CriticFit(inputs, timesteps.new_zeros(len(inputs)), None, targets, logs)


def make_critic(spec: CriticSpec, config: CriticConfig) -> nn.Module:
    critic = critics.get(config.name)(spec, config)
    return critic.float()


def make_critic_optimizer(critic: nn.Module, config: CriticConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(critic.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(critic.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
