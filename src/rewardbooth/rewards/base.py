"""The reward registry, the two kinds of reward, and the weighted sums of several.

- An image scorer (`ImageScorer`: dino, clip_image, clip_text, face, toy_identity) scores images (B, 3, H, W)
  in [0, 1] with their prompts: `score_images(images, prompts)`. Checkpoint selection calls it directly on the
  validation samples; the trainer calls it on decode(x0_hat) through one adapter, `OnDecodedImages`.
- A latent reward (`Reward`: look_forward) scores x0_hat with what the batch knows (`RewardContext`: x0, the
  prompts, the decoder): `reward(x0_hat, context)`. Only training can use it.

A factory declares its kind by a `kind` attribute ("image" or "latent"); without one, a class with
`score_images` is an image scorer and any other class a latent reward, and a plain function's result tells.
"""

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

    # (B, C, h, w) reference latents the noisy states were made from; None for prompt-only states (sampled by the
    # model for a prompt without a photo), which a reward declaring `needs_reference = True` cannot score
    x0: torch.Tensor | None
    prompts: list[str]
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None  # latents -> images (B, 3, H, W) in [0, 1]


@dataclass
class RewardOutput:
    """Scores (B,) float32, higher is better, and per-sample diagnostics (name -> (B,) float32) for the logs."""

    scores: torch.Tensor
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)


class Reward(Protocol):
    """A latent reward: what the trainer calls."""

    differentiable: bool

    def __call__(self, x0_hat: torch.Tensor, context: RewardContext) -> RewardOutput | torch.Tensor:
        """Shape: x0_hat (B, C, h, w) -> scores (B,) float32, as a RewardOutput or a bare tensor."""


class ImageScorer(Protocol):
    """An image scorer: what selection and the trainer's `OnDecodedImages` call."""

    differentiable: bool  # gradients flow from the scores to the images

    def score_images(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput | torch.Tensor:
        """Shape: images (B, 3, H, W) float in [0, 1], B prompts -> scores (B,) float32."""


KINDS = ("image", "latent")


def as_output(result: RewardOutput | torch.Tensor) -> RewardOutput:
    """A user reward may return a bare (B,) tensor: it is the scores, with no diagnostics."""
    return result if isinstance(result, RewardOutput) else RewardOutput(result)


def declared_kind(factory: Any) -> str | None:
    """'image' or 'latent' as a factory declares it before it is built; None for a plain function, whose
    result tells (`kind_of`)."""
    kind = getattr(factory, "kind", None)
    if kind is None and inspect.isclass(factory):
        kind = "image" if hasattr(factory, "score_images") else "latent"
    if kind is not None and kind not in KINDS:
        raise UserError(f"reward {factory!r} declares kind {kind!r}: use one of {', '.join(KINDS)}")
    return kind


def kind_of(reward: Any) -> str:
    """The kind of a built reward: its declared `kind`, else 'image' if it has `score_images`."""
    return declared_kind(reward) or ("image" if hasattr(reward, "score_images") else "latent")


class OnDecodedImages:
    """An image scorer as a latent reward: score(decode(x0_hat), prompts), gradients included when the
    scorer is differentiable (through the scorer and the VAE decoder)."""

    kind = "latent"

    def __init__(self, scorer: ImageScorer, name: str = "image"):
        self.scorer, self.name = scorer, name
        self.differentiable = scorer.differentiable

    def __call__(self, x0_hat: torch.Tensor, context: RewardContext) -> RewardOutput:
        if context.decode is None:
            raise ValueError(f"the {self.name!r} reward scores images: the trainer must give it context.decode")
        return as_output(self.scorer.score_images(context.decode(x0_hat), context.prompts))


def _build(name: str | Callable[..., Any], setup: RewardSetup, options: Mapping[str, Any]) -> Any:
    """The registered (or dotted-path, or given) factory called with its options, as it returns it."""
    factory = rewards.get(name)
    try:
        inspect.signature(factory).bind(setup, **options)
    except TypeError as error:
        raise UserError(f"reward {name!r}: bad options {sorted(options)} ({error}); "
                        f"see `rewardbooth rewards` for the options each reward takes") from None
    return factory(setup, **options)


def make_reward(name: str | Callable[..., Any], setup: RewardSetup, **options: Any) -> Reward:
    """A reward as the trainer calls it: a latent reward as built, an image scorer on decode(x0_hat)."""
    built = _build(name, setup, options)
    return OnDecodedImages(built, str(name)) if kind_of(built) == "image" else built


def make_scorer(name: str | Callable[..., Any], setup: RewardSetup, **options: Any) -> ImageScorer:
    """An image scorer as built; a latent reward is refused (it has no images to score)."""
    return _scorer(name, setup, options, refusal=f"reward {name!r} scores latents, not images")


def _scorer(name: str | Callable[..., Any], setup: RewardSetup, options: Mapping[str, Any],
            refusal: str) -> ImageScorer:
    built = _build(name, setup, options)
    if kind_of(built) != "image":
        raise UserError(refusal)
    return built


def require_module(module: str, reward: str, install: str) -> Any:
    """Import an optional dependency of one reward, or fail with the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"the {reward!r} reward needs the {module!r} package: {install}") from None


class _Weighted:
    """sum_k w_k r_k, for either kind (`WeightedSum`, `WeightedImageSum`).

    Differentiable only if every part is. Diagnostics carry every part's scores as `<name>` plus each part's
    own diagnostics as `<name>/<key>`, so a combined run still logs what each reward said.
    """

    def __init__(self, parts: Mapping[str, tuple[float, Any]]):
        if not parts:
            raise ValueError("a weighted sum needs at least one reward")
        self.parts = dict(parts)
        self.differentiable = all(reward.differentiable for _, reward in self.parts.values())

    def _sum(self, score_fn: Callable[[Any], RewardOutput | torch.Tensor]) -> RewardOutput:
        total, diagnostics = None, {}
        for name, (weight, reward) in self.parts.items():
            output = as_output(score_fn(reward))
            scores = output.scores.float()
            total = weight * scores if total is None else total + weight * scores
            diagnostics[name] = scores.detach()
            diagnostics.update({f"{name}/{key}": value.detach() for key, value in output.diagnostics.items()})
        return RewardOutput(total, diagnostics)


class WeightedSum(_Weighted):
    """sum_k w_k r_k(x0_hat): what the trainer optimises when several rewards are configured."""

    kind = "latent"

    def __call__(self, x0_hat: torch.Tensor, context: RewardContext) -> RewardOutput:
        return self._sum(lambda reward: reward(x0_hat, context))


class WeightedImageSum(_Weighted):
    """sum_k w_k s_k(images, prompts): several image scorers as one, e.g. a validation reward."""

    kind = "image"

    def score_images(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        return self._sum(lambda scorer: scorer.score_images(images, prompts))


class ByRowKind:
    """One reward on the rows with a reference photo, another on the prompt-only rows (objective.scene_reward),
    told apart by their context: a prompt-only row's carries no reference latent (`RewardContext.x0 is None`;
    the trainer scores each kind of row with its own context)."""

    kind = "latent"

    def __init__(self, photo: Reward, scene: Reward):
        self.photo, self.scene = photo, scene
        self.differentiable = photo.differentiable and scene.differentiable

    def __call__(self, x0_hat: torch.Tensor, context: RewardContext) -> RewardOutput:
        return as_output((self.scene if context.x0 is None else self.photo)(x0_hat, context))


def reward_weights(reward: str | Mapping[str, float]) -> dict[str, float]:
    """`objective.reward` as {name: weight}: a bare name has weight 1."""
    return {reward: 1.0} if isinstance(reward, str) else dict(reward)


def differentiable_twin(reward: str | Mapping[str, float], options: Mapping[str, Mapping[str, Any]] | None
                        ) -> tuple[dict[str, float], dict[str, dict[str, Any]]] | None:
    """`objective.reward` with every non-differentiable part replaced by the twin it declares (`twin = "name"`:
    a differentiable reward measuring the same thing, for diagnostics only), with the options the twin takes;
    None when a non-differentiable part declares no twin. Parts whose differentiability is only known once
    built are kept as they are (the built sum then says whether it is differentiable)."""
    weights, options = reward_weights(reward), dict(options or {})
    twin_weights, twin_options = {}, {}
    for name, weight in weights.items():
        factory = rewards.get(name)
        twin = name
        if getattr(factory, "differentiable", None) is False:
            twin = getattr(factory, "twin", None)
            if twin is None:
                return None
        accepted = inspect.signature(rewards.get(twin)).parameters
        twin_weights[twin] = twin_weights.get(twin, 0.0) + weight
        if name in options:
            twin_options[twin] = {key: value for key, value in options[name].items() if key in accepted}
    return twin_weights, twin_options


def _weighted_parts(reward: str | Mapping[str, float], options: Mapping[str, Mapping[str, Any]] | None,
                    setup: RewardSetup, key: str, make: Callable[..., Any]) -> dict[str, tuple[float, Any]]:
    """{name: (weight, built)} for `key` (a config's reward) and `key`_options, each part built by `make`."""
    weights, options = reward_weights(reward), dict(options or {})
    if not weights:
        raise UserError(f"{key} is empty: name a reward (see `rewardbooth rewards`)")
    unknown = sorted(set(options) - set(weights))
    if unknown:
        raise UserError(f"{key}_options has options for {unknown[0]!r}, which {key} does not "
                        f"use ({', '.join(weights)}): fix the name or add the reward to {key}")
    return {name: (weight, make(name, setup, **options.get(name, {}))) for name, weight in weights.items()}


def _single_or(parts: dict[str, tuple[float, Any]], weighted: Callable[[dict], Any]) -> Any:
    """An unweighted single reward as it is; several (or a weighted one) summed by `weighted`."""
    (weight, built), *others = parts.values()
    return built if not others and weight == 1.0 else weighted(parts)


def build_reward(reward: str | Mapping[str, float], options: Mapping[str, Mapping[str, Any]] | None,
                 setup: RewardSetup, key: str = "objective.reward") -> Reward:
    """The configured latent reward, for the trainer: one reward, or the weighted sum of several (image
    scorers among them scoring decode(x0_hat))."""
    return _single_or(_weighted_parts(reward, options, setup, key, make_reward), WeightedSum)


def build_scorer(reward: str | Mapping[str, float], options: Mapping[str, Mapping[str, Any]] | None,
                 setup: RewardSetup, key: str = "validation.reward") -> ImageScorer:
    """The configured image scorer: one, or the weighted sum of several. A latent reward is refused, by its
    declared kind before anything is built (by the built object's, for a plain function factory)."""
    def refusal(name: Any) -> str:
        return (f"{key} scores generated images, but {name!r} compares latents to a training image: use image "
                f"rewards, e.g. {{dino: 1, clip_text: 1}}")

    for name in reward_weights(reward):
        if declared_kind(rewards.get(name)) == "latent":
            raise UserError(refusal(name))
    parts = _weighted_parts(reward, options, setup, key,
                            lambda name, setup, **opts: _scorer(name, setup, opts, refusal(name)))
    return _single_or(parts, WeightedImageSum)


def describe_rewards(names: list[str] | None = None) -> str:
    """What `rewardbooth rewards` prints: per reward, its summary, kind, differentiability and options."""
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
        kind = {"image": "image scorer: scores images (decode(x0_hat) in training; also as validation.reward)",
                "latent": "latent reward: scores x0_hat itself (training only: objective.reward)"}.get(
            declared_kind(factory), "kind is declared when built")
        blocks.append(f"{name}\n    {summary}\n    {kind}\n    {flag}\n    options: {options or 'none'}")
    return "\n".join(blocks)
