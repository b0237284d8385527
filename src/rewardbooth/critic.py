"""Critics Q_phi(s, a): small networks that regress the reward so the policy can climb it.

Contract (every registered critic, see tests/test_critic_contract.py): a factory
``make(in_channels, text_dim, config) -> nn.Module`` whose module maps
``(features (B, C_in, h, w), timesteps (B,), text_embedding (B, L, D) | None) -> q (B,)`` in float32,
for any h, w and B, and keeps float32 parameters whatever the training precision. Unlike the released code's
critic (a Linear over a flattened 64x64 map, batch 1, no timestep), ours pool globally and see t.
"""

from __future__ import annotations

import math

import torch
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from rewardbooth.config import CriticConfig
from rewardbooth.registry import Registry

critics = Registry("critic")

TIME_EMBEDDING_DIM = 64


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


class ConvCritic(nn.Module):
    """Strided conv trunk, FiLM-modulated by the conditioning, global average pool, linear head.

    The head starts at zero, so Q = 0 and dQ/da = 0 until the critic has seen rewards: the policy term
    cannot push the UNet with an untrained critic's noise.
    """

    def __init__(self, in_channels: int, hidden_channels: int, num_layers: int, text_dim: int | None):
        super().__init__()
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
            return self.head(hidden.mean(dim=(2, 3))).squeeze(1)  # (B,)


class PooledCritic(nn.Module):
    """An MLP on per-channel spatial statistics (mean and mean square): the cheapest resolution-agnostic Q.

    With the 'residual' input the mean over channels of the per-channel mean is exactly -reward of the
    look-forward reward, so this critic can represent that reward exactly.
    """

    def __init__(self, in_channels: int, hidden_channels: int, text_dim: int | None):
        super().__init__()
        self.conditioning = _Conditioning(hidden_channels, text_dim)
        self.inputs = nn.Linear(2 * in_channels, hidden_channels)
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(hidden_channels, hidden_channels), nn.SiLU(),
                                  nn.Linear(hidden_channels, 1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, features, timesteps, text_embedding=None):
        with torch.autocast(device_type=features.device.type, enabled=False):
            features = features.float()
            stats = torch.cat([features.mean(dim=(2, 3)), features.square().mean(dim=(2, 3))], dim=1)
            hidden = self.inputs(stats) + self.conditioning(timesteps, text_embedding)
            return self.head(hidden).squeeze(1)  # (B,)


@critics.register("conv")
def make_conv_critic(in_channels: int, text_dim: int | None, config: CriticConfig) -> nn.Module:
    return ConvCritic(in_channels, config.hidden_channels, config.num_layers,
                      text_dim if config.condition_on_text else None)


@critics.register("pooled")
def make_pooled_critic(in_channels: int, text_dim: int | None, config: CriticConfig) -> nn.Module:
    return PooledCritic(in_channels, config.hidden_channels, text_dim if config.condition_on_text else None)


def make_critic(in_channels: int, text_dim: int | None, config: CriticConfig) -> nn.Module:
    critic = critics.get(config.name)(in_channels, text_dim, config)
    return critic.float()


def make_critic_optimizer(critic: nn.Module, config: CriticConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(critic.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(critic.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
