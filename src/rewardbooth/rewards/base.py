"""The reward registry, the types its entries share, and the weighted sum the trainer optimises."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from rewardbooth.core.errors import UserError
from rewardbooth.core.registry import Registry

rewards = Registry("reward")


@dataclass(frozen=True)
class RewardSetup:
    """What a reward factory may use once, at build time."""

    reference_images: torch.Tensor  # (N, 3, H, W) float32 in [0, 1]: the subject's photos
    identifier: str
    device: torch.device


@dataclass
class RewardContext:
    """What a reward may use per batch, besides x0_hat."""

    x0: torch.Tensor  # (B, C, h, w) reference latents the noisy states were made from
    prompts: list[str]
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None  # latents -> images (B, 3, H, W) in [0, 1]


@dataclass
class RewardOutput:
    """Scores (B,) float32, higher is better, and per-sample diagnostics (name -> (B,) float32) for the logs."""

    scores: torch.Tensor
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)


class Reward(Protocol):
    differentiable: bool

    def __call__(self, x0_hat: torch.Tensor, context: RewardContext) -> RewardOutput | torch.Tensor:
        """Shape: x0_hat (B, C, h, w) -> scores (B,) float32, as a RewardOutput or a bare tensor."""


def as_output(result: RewardOutput | torch.Tensor) -> RewardOutput:
    """A user reward may return a bare (B,) tensor: it is the scores, with no diagnostics."""
    return result if isinstance(result, RewardOutput) else RewardOutput(result)


def make_reward(name: str | Callable[..., Any], setup: RewardSetup, **options: Any) -> Reward:
    factory = rewards.get(name)
    try:
        inspect.signature(factory).bind(setup, **options)
    except TypeError as error:
        raise UserError(f"reward {name!r}: bad options {sorted(options)} ({error}); "
                        f"see `rewardbooth rewards` for the options each reward takes") from None
    return factory(setup, **options)


def require_module(module: str, reward: str, install: str) -> Any:
    """Import an optional dependency of one reward, or fail with the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"the {reward!r} reward needs the {module!r} package: {install}") from None


class WeightedSum:
    """sum_k w_k r_k(x0_hat): what the trainer optimises when several rewards are configured.

    Differentiable only if every part is. Diagnostics carry every part's scores as `<name>` plus each part's
    own diagnostics as `<name>/<key>`, so a combined run still logs what each reward said.
    """

    def __init__(self, parts: Mapping[str, tuple[float, Reward]]):
        if not parts:
            raise ValueError("a weighted sum needs at least one reward")
        self.parts = dict(parts)
        self.differentiable = all(reward.differentiable for _, reward in self.parts.values())

    def __call__(self, x0_hat: torch.Tensor, context: RewardContext) -> RewardOutput:
        total, diagnostics = None, {}
        for name, (weight, reward) in self.parts.items():
            output = as_output(reward(x0_hat, context))
            scores = output.scores.float()
            total = weight * scores if total is None else total + weight * scores
            diagnostics[name] = scores.detach()
            diagnostics.update({f"{name}/{key}": value.detach() for key, value in output.diagnostics.items()})
        return RewardOutput(total, diagnostics)


def reward_weights(reward: str | Mapping[str, float]) -> dict[str, float]:
    """`objective.reward` as {name: weight}: a bare name has weight 1."""
    return {reward: 1.0} if isinstance(reward, str) else dict(reward)


def build_reward(reward: str | Mapping[str, float], options: Mapping[str, Mapping[str, Any]] | None,
                 setup: RewardSetup) -> Reward:
    """The configured reward: one registered reward, or the weighted sum of several."""
    weights, options = reward_weights(reward), dict(options or {})
    if not weights:
        raise UserError("objective.reward is empty: name a reward (see `rewardbooth rewards`)")
    unknown = sorted(set(options) - set(weights))
    if unknown:
        raise UserError(f"objective.reward_options has options for {unknown[0]!r}, which objective.reward does not "
                        f"use ({', '.join(weights)}): fix the name or add the reward to objective.reward")
    built = {name: (weight, make_reward(name, setup, **options.get(name, {}))) for name, weight in weights.items()}
    if len(built) == 1 and next(iter(weights.values())) == 1.0:
        return next(iter(built.values()))[1]
    return WeightedSum(built)


def describe_rewards(names: list[str] | None = None) -> str:
    """What `rewardbooth rewards` prints: per reward, its summary, differentiability and options."""
    blocks = []
    for name in names or rewards.names():
        factory = rewards.get(name)
        flag = {True: "differentiable: objective.name=dpg or direct",
                False: "not differentiable: objective.name=dpg (the critic learns it)"}.get(
            getattr(factory, "differentiable", None), "differentiability is declared when built")
        parameters = list(inspect.signature(factory).parameters.values())[1:]  # after `setup`
        options = ", ".join(p.name if p.default is p.empty else f"{p.name}={p.default!r}" for p in parameters
                            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
        summary = (inspect.getdoc(factory) or "").split("\n")[0]
        blocks.append(f"{name}\n    {summary}\n    {flag}\n    options: {options or 'none'}")
    return "\n".join(blocks)
