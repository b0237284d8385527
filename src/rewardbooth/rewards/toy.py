"""The toy world's identity rewards, the DINO analogue: the judge's identity similarity of an image (in
training, decode(x0_hat)) to the subject's reference photos.

- `toy_identity`: the cosine itself. Like DINO it is a network, hence differentiable: under `direct` its
  gradient flows through judge and VAE decoder (the exact gradient's control), under `dpg` the critic learns
  it from values only, and the critic diagnostics compare dQ/da with its gradient.
- `toy_identity_blackbox`: the same cosine computed outside autograd and rounded to steps of 0.05, so its
  gradient is zero almost everywhere and none is recorded: a reward with truly no gradient, as `face` (dlib) or
  a user's black box. `direct` refuses it; `dpg` learns it. It declares `toy_identity` as its differentiable
  twin, which serves only the critic diagnostics (cos(dQ/da, d r_twin/da)).
- `toy_alignment`: the reward judge's caption agreement with the sample's own prompt (the mean probability of
  each attribute the prompt names: class, colour, size, scene, position), the CLIP-T analogue, differentiable.
  With prompts without photos (objective.scene_share) it rewards following a new prompt; beside
  `toy_identity` ({toy_identity: 1, toy_alignment: 1}) it holds alignment while identity rises. Like every
  reward here it uses the reward judge, never the held-out one the benchmark scores with.
- `toy_encoder_identity`: the cosine of the toy world's third identity network (`critic.encoder=toy_encoder`).
  It is the control for a feature critic on that encoder: `direct` on it is what the encoder alone gives, so
  a critic that does not beat it gains nothing from the reward it learns.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from rewardbooth.core.errors import UserError
from rewardbooth.maths.similarity import centroid, cosine_to_centroid
from rewardbooth.rewards.base import RewardOutput, RewardSetup, rewards


class _OnToyJudge:
    """A toy judge (the reward judge unless `judge_dir` names another), frozen on the run's device, that sees
    images at the toy world's resolution."""

    differentiable = True
    kind = "image"

    def __init__(self, setup: RewardSetup, judge_dir: str | None = None):
        from rewardbooth.toyworld.assets import JUDGE_DIR, require
        from rewardbooth.toyworld.judge import load_judge
        from rewardbooth.toyworld.world import RESOLUTION

        folder = Path(judge_dir) if judge_dir else require(JUDGE_DIR, "judge.json", "rewardbooth.toyworld.judge")
        self.judge = load_judge(folder).to(setup.device).requires_grad_(False)
        self.resolution = RESOLUTION

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) == (self.resolution, self.resolution):  # not a bucket's portrait
            return images
        return F.interpolate(images, size=(self.resolution, self.resolution), mode="bilinear", antialias=True)


@rewards.register("toy_identity")
class ToyIdentityReward(_OnToyJudge):
    """The toy judge's identity cosine of an image to the centroid of the subject's photos."""

    def __init__(self, setup: RewardSetup, judge_dir: str | None = None):
        super().__init__(setup, judge_dir)
        with torch.no_grad():
            embedding, _ = self.judge(self._resize(setup.reference_images.to(setup.device)))
        self.reference = centroid(embedding)  # (D,) unit centroid of the references

    def score_images(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        embedding, _ = self.judge(self._resize(images))
        return RewardOutput(cosine_to_centroid(embedding, self.reference).float())  # (B,) cosine in [-1, 1]


@rewards.register("toy_alignment")
class ToyAlignmentReward(_OnToyJudge):
    """The toy judge's caption agreement of an image with its prompt (the CLIP-T analogue)."""

    def score_images(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        from rewardbooth.toyworld.judge import attribute_agreement

        return RewardOutput(attribute_agreement(self.judge, self._resize(images), prompts).float())  # (B,) in [0, 1]


@rewards.register("toy_encoder_identity")
class ToyEncoderIdentityReward(ToyIdentityReward):
    """The third identity network's cosine to the subject's photos (a feature critic's encoder, as a reward)."""

    def __init__(self, setup: RewardSetup, judge_dir: str | None = None):
        from rewardbooth.toyworld.assets import FEATURE_ENCODER_DIR, require

        folder = judge_dir or str(require(FEATURE_ENCODER_DIR, "judge.json", "rewardbooth.toyworld.judge"))
        super().__init__(setup, folder)


QUANTUM = 0.05  # the black box's score resolution: ~1/40 of the cosine's [-1, 1] range, coarser than one step moves it


def quantise(scores: torch.Tensor, step: float) -> torch.Tensor:
    """Round to the nearest multiple of `step`: piecewise constant, so the derivative is 0 almost everywhere.
    Shape: (B,) -> (B,)"""
    return torch.round(scores / step) * step


@rewards.register("toy_identity_blackbox")
class ToyIdentityBlackboxReward:
    """The toy judge's identity cosine, computed without autograd and rounded to steps of `step`: no gradient."""

    differentiable = False
    kind = "image"
    twin = "toy_identity"  # differentiable, for the critic diagnostics only

    def __init__(self, setup: RewardSetup, judge_dir: str | None = None, step: float = QUANTUM):
        if not step > 0:
            raise UserError(f"toy_identity_blackbox: step={step!r} must be positive (default {QUANTUM})")
        self.identity, self.step = ToyIdentityReward(setup, judge_dir), step

    def score_images(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        with torch.no_grad():
            cosine = self.identity.score_images(images.detach(), prompts).scores
        return RewardOutput(quantise(cosine, self.step))
