"""Reward-based checkpoint selection: every `validation.every` steps the validation images (fixed prompts and
seeds) are scored by `validation.reward`; the best step's model is kept in `best/`, and with
`validation.patience` the run stops after that many validations without improvement.

The validation reward is made of image scorers (`score_images` on the generated images; a latent reward is
refused by its declared kind); a weighted sum or a weighted harmonic mean combines several, e.g. subject
fidelity with text alignment, so that a run which copies the references at the cost of the prompt does not win.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from PIL import Image

from rewardbooth.core.config import Config
from rewardbooth.data.images import pil_to_tensor
from rewardbooth.rewards import RewardSetup, as_output, build_scorer, reward_weights
from rewardbooth.rewards.concepts import build_concept_reward
from rewardbooth.training.monitoring import MetricsLog
from rewardbooth.training.setup import RunSetup, reward_setups

logger = logging.getLogger(__name__)

BEST_DIR = "best"


def mix_scores(parts: dict[str, tuple[float, float]], mix: str) -> float:
    """Combine {name: (weight, mean score)}: 'weighted' = sum w s; 'harmonic' = sum w / sum (w / s), the
    weighted harmonic mean, dominated by the weakest part (scores at or below 0 count as 1e-6)."""
    if mix == "weighted":
        return sum(weight * score for weight, score in parts.values())
    total = sum(weight for weight, _ in parts.values())
    return total / sum(weight / max(score, 1e-6) for weight, score in parts.values())


@dataclass
class BestTracker:
    """The best validation score so far, and how many validations have passed without beating it."""

    patience: int = 0  # 0 = never stop early
    best_score: float = -math.inf
    best_step: int | None = None
    since_best: int = 0

    def update(self, step: int, score: float) -> bool:
        """Record a validation; True if it is a new best (ties keep the earlier step)."""
        if score > self.best_score:
            self.best_score, self.best_step, self.since_best = score, step, 0
            return True
        self.since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.since_best >= self.patience

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path, patience: int) -> BestTracker:
        tracker = cls(**json.loads(path.read_text())) if path.is_file() else cls()
        tracker.patience = patience
        return tracker


class ValidationScorer:
    """`validation.reward` on the validation images; `scores(...)` returns the mixed score and every part."""

    def __init__(self, config: Config, setups: list[RewardSetup], device: torch.device):
        """`setups`: one per concept (its photos and identifier); each image is scored against its own."""
        validation = config.validation
        self.weights = reward_weights(validation.reward)
        # build_scorer refuses a latent reward (look_forward) by its declared kind, before building anything.
        self.scorer = build_concept_reward(
            lambda setup: build_scorer(validation.reward, validation.reward_options, setup), setups)
        self.mix, self.device = validation.mix, device

    @torch.no_grad()
    def scores(self, images: list[Image.Image], prompts: list[str]) -> dict[str, float]:
        pixels = torch.stack([pil_to_tensor(image) for image in images]).to(self.device)
        output = as_output(self.scorer.score_images(pixels, prompts))
        if len(self.weights) == 1:
            (name, weight), = self.weights.items()
            parts = {name: (weight, float(output.scores.mean()))}
        else:
            parts = {name: (weight, float(output.diagnostics[name].mean())) for name, weight in self.weights.items()}
        return {"val/score": mix_scores(parts, self.mix), **{f"val/{name}": score for name, (_, score) in parts.items()}}


class Selection:
    """Keep-best and early stopping by the validation reward, for the training loop."""

    def __init__(self, run: RunSetup, config: Config, output_dir: Path, metrics: MetricsLog):
        self.run, self.metrics = run, metrics
        self.best_dir, self.keep_best = output_dir / BEST_DIR, config.validation.keep_best
        self.scorer = ValidationScorer(config, reward_setups(config, run.concept_images, run.accelerator.device),
                                       run.accelerator.device)
        # On resume, the best so far is the one recorded in best/ (a fresh run has none).
        self.tracker = BestTracker.load(self.best_dir / "best.json", config.validation.patience)

    def score(self, step: int, images, prompts: list[str]) -> None:
        values = self.scorer.scores(images, prompts)
        self.metrics.write(step, values)
        self.best_dir.mkdir(exist_ok=True)
        if self.tracker.update(step, values["val/score"]) and self.keep_best:
            self.run.method.save(self.run.parts, self.best_dir)
        self.tracker.save(self.best_dir / "best.json")
        logger.info("step %d: validation score %.4f (best %.4f at step %s)", step, values["val/score"],
                    self.tracker.best_score, self.tracker.best_step)

    def stop_agreed(self, accelerator: Accelerator) -> bool:
        """The main process decides (it alone validates); every process learns the decision."""
        from accelerate.utils import broadcast

        flag = torch.tensor([float(self.tracker.should_stop)], device=accelerator.device)
        return bool(broadcast(flag, from_process=0).item())
