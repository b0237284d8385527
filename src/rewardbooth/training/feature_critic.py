"""The feature critic (`critic.name=feature`): Q(s, a) = head(f(decode(x0_hat))), f a frozen image encoder.

Why: a critic on latents fits an image reward's values (R^2 0.5-0.7) without carrying its gradient (cos ~0,
docs/critic.md): the gradient of a function learnt from a few hundred samples in a 1,024- (toy) to 16,384-
dimensional (SD) action space is set by what the learner already knows. A small head on an encoder whose
features already vary with what the reward measures needs to learn only a low-dimensional function, so its
input gradient, pulled back through f and the VAE decoder, can point where the reward's does (LaSRO, Zhang
et al. 2024, learns its surrogate on a pretrained backbone for the same reason).

- The reward depends on x0_hat alone, so Q takes no timestep and no text: Q = w * s + head([e, s]) with
  e = f(decode(x0_hat)) unit features and s = e . c their cosine to the centroid c of the subject's photos
  (what DreamBench's DINO score is). w and the head's last layer start at 0: Q starts as a constant and
  learns everything from the reward's values.
- Replay (`critic.replay_size`, `critic.replay_batch`): each scoring step stores (e, r) of the batch and fits
  on the batch plus samples of earlier steps. A reward of x0_hat alone stays valid for old samples, and one
  sample per step is too little for any regression. The buffer is part of the critic's state (checkpointed:
  resume is bitwise); under DDP it is rank 0's (buffers are broadcast).
- Guard (`critic.probe_step` > 0): the surrogate is checked where the policy is about to climb it. Each
  scoring step moves x0_hat by +-eps along Q's own gradient (eps = probe_step * |x0_hat|) and scores both
  with the reward: two calls, no reward gradient needed. Agreement = the share of samples whose reward rises
  along +grad Q (ties skipped, as a quantised reward often ties). Its moving average m sets the trust
  max(0, 2m - 1) by which the policy's Q is scaled: a surrogate no better than chance stops steering the
  policy. The probes also enter the replay buffer, so the head learns the reward's slope along its own
  gradient, where it is most wrong.

Inputs: x0_hat latents (B, C, h, w) give the value the policy climbs (trust * Q); features (B, D) from the
replay buffer give Q as it is fitted.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rewardbooth.maths.similarity import centroid

AGREEMENT_DECAY = 0.9  # moving average of the probe agreement over ~10 scoring steps


class FeatureCritic(nn.Module):
    def __init__(self, encoder: Callable[[torch.Tensor], torch.Tensor], dim: int,
                 decode: Callable[[torch.Tensor], torch.Tensor], reference_images: torch.Tensor, hidden: int,
                 replay_size: int, replay_batch: int, probe_step: float):
        super().__init__()
        self._frozen = (encoder, decode)  # a tuple: neither is registered, trained, saved nor DDP-synced
        self.replay_batch, self.probe_step = replay_batch, probe_step
        self.seed = torch.initial_seed()  # setup seeds the critic's construction with train.seed
        with torch.no_grad():
            self.register_buffer("reference", centroid(encoder(reference_images).float()))  # (D,)
        self.similarity = nn.Linear(1, 1)
        self.head = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                  nn.Linear(hidden, 1))
        for layer in (self.similarity, self.head[-1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.register_buffer("replay_features", torch.zeros(replay_size, dim))
        self.register_buffer("replay_rewards", torch.zeros(replay_size))
        self.register_buffer("replay_seen", torch.zeros((), dtype=torch.long))  # samples ever stored
        self.register_buffer("agreement", torch.ones(()))  # moving average of the probe agreement

    def embed(self, latents: torch.Tensor) -> torch.Tensor:
        """Shape: x0_hat (B, C, h, w) -> unit features (B, D) float32."""
        encoder, decode = self._frozen
        return encoder(decode(latents.float())).float()

    def value(self, features: torch.Tensor) -> torch.Tensor:
        """Q as fitted. Shape: features (B, D) -> (B,)"""
        similarity = features @ self.reference  # (B,)
        inputs = torch.cat([features, similarity[:, None]], dim=1)
        return (self.similarity(similarity[:, None]) + self.head(inputs)).squeeze(1)

    @property
    def trust(self) -> torch.Tensor:
        if self.probe_step <= 0:
            return torch.ones((), device=self.agreement.device)
        return (2 * self.agreement - 1).clamp(0, 1)

    def forward(self, inputs: torch.Tensor, timesteps: torch.Tensor | None = None,
                text_embedding: torch.Tensor | None = None) -> torch.Tensor:
        with torch.autocast(device_type=inputs.device.type, enabled=False):
            if inputs.ndim == 2:
                return self.value(inputs.float())
            return self.trust * self.value(self.embed(inputs))

    @torch.no_grad()
    def remember(self, features: torch.Tensor, rewards: torch.Tensor) -> None:
        """Store samples in the ring buffer. Shape: features (B, D), rewards (B,)"""
        size = self.replay_features.shape[0]
        slots = (self.replay_seen + torch.arange(len(features), device=features.device)) % size
        self.replay_features[slots] = features.float()
        self.replay_rewards[slots] = rewards.float()
        self.replay_seen += len(features)

    def recall(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`count` stored samples drawn uniformly with replacement. Shape: -> (count, D), (count,)"""
        seen = int(self.replay_seen.item())
        # Seeded by the run's seed and the samples seen so far (both checkpointed): a resumed run replays what
        # an uninterrupted one does, and the global RNG is left alone.
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + seen)
        stored = min(seen, self.replay_features.shape[0])
        index = torch.randint(stored, (count,), generator=generator).to(self.replay_features.device)
        return self.replay_features[index], self.replay_rewards[index]

    def probe(self, latents: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The reward at x0_hat +- eps * grad Q / |grad Q|: the probes' features and rewards, and the share of
        samples (ties skipped) whose reward rises along +grad Q (None when every sample ties).

        Shape: latents (B, C, h, w) -> features (2B, D), rewards (2B,), agreement scalar | None
        """
        latents = latents.detach().float().requires_grad_(True)
        with torch.enable_grad():
            (gradient,) = torch.autograd.grad(self.value(self.embed(latents)).sum(), latents)
        norm = gradient.flatten(1).norm(dim=1)
        step = self.probe_step * latents.detach().flatten(1).norm(dim=1) / norm.clamp_min(1e-12)
        move = gradient * step.view(-1, *[1] * (latents.ndim - 1))
        with torch.no_grad():
            up, down = latents.detach() + move, latents.detach() - move
            rewards = torch.cat([score(up), score(down)]).float()
            features = torch.cat([self.embed(up), self.embed(down)])
        rise = rewards[:len(up)] - rewards[len(up):]
        decided = (norm > 0) & (rise != 0)
        agreement = (rise[decided] > 0).float().mean() if decided.any() else None
        return features, rewards, agreement

    def regression_batch(self, latents: torch.Tensor, rewards: torch.Tensor,
                         score: Callable[[torch.Tensor], torch.Tensor]
                         ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """What one scoring step fits Q on: this batch first, then replayed samples (the probes among them).

        Shape: latents (B, C, h, w), rewards (B,) -> features (M, D), rewards (M,), logs, M = max(B, replay_batch)
        """
        with torch.no_grad():
            features = self.embed(latents)
        logs = {}
        stored_features, stored_rewards = features, rewards.float()
        if self.probe_step > 0:
            probe_features, probe_rewards, agreement = self.probe(latents, score)
            if agreement is not None:
                self.agreement.mul_(AGREEMENT_DECAY).add_((1 - AGREEMENT_DECAY) * agreement)
                logs["critic/probe_agreement"] = agreement
            logs["critic/trust"] = self.trust.detach()
            stored_features = torch.cat([features, probe_features])
            stored_rewards = torch.cat([stored_rewards, probe_rewards])
        self.remember(stored_features, stored_rewards)
        replayed_features, replayed_rewards = self.recall(max(0, self.replay_batch - len(features)))
        return (torch.cat([features, replayed_features]), torch.cat([rewards.float(), replayed_rewards]), logs)
