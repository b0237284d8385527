"""`toy_identity`: the toy world's DINO analogue as an image scorer — the judge's identity similarity of an
image (in training, decode(x0_hat)) to the subject's reference photos. Like DINO it is a network, hence differentiable: under `dpg` the critic
learns it from its values alone (the judge is a black box to the policy), under `direct` its gradient flows
through judge and VAE decoder (the control for the critic), and the critic diagnostics use that gradient.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from rewardbooth.maths.similarity import centroid, cosine_to_centroid
from rewardbooth.rewards.base import RewardOutput, RewardSetup, rewards


@rewards.register("toy_identity")
class ToyIdentityReward:
    """The toy judge's identity cosine of an image to the centroid of the subject's photos."""

    differentiable = True
    kind = "image"

    def __init__(self, setup: RewardSetup, judge_dir: str | None = None):
        from rewardbooth.toyworld.assets import JUDGE_DIR, require
        from rewardbooth.toyworld.judge import load_judge
        from rewardbooth.toyworld.world import RESOLUTION

        folder = Path(judge_dir) if judge_dir else require(JUDGE_DIR, "judge.json", "rewardbooth.toyworld.judge")
        self.judge = load_judge(folder).to(setup.device).requires_grad_(False)
        self.resolution = RESOLUTION
        with torch.no_grad():
            embedding, _ = self.judge(self._resize(setup.reference_images.to(setup.device)))
        self.reference = centroid(embedding)  # (D,) unit centroid of the references

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] == self.resolution:
            return images
        return F.interpolate(images, size=(self.resolution, self.resolution), mode="bilinear", antialias=True)

    def score_images(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        embedding, _ = self.judge(self._resize(images))
        return RewardOutput(cosine_to_centroid(embedding, self.reference).float())  # (B,) cosine in [-1, 1]
