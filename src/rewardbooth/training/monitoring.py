"""What a person watches during a run: metric logs (JSON lines + accelerate trackers) and sample grids."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from PIL import Image

from rewardbooth.core.config import ValidationConfig
from rewardbooth.core.errors import UserError
from rewardbooth.evaluation.plots import PALETTE
from rewardbooth.models import ModelParts
from rewardbooth.models.sampling import sample_images


def validation_prompts(config: ValidationConfig, instance_prompts: list[str]) -> list[str]:
    """The configured prompts, or every concept's instance prompt."""
    return list(config.prompts) or list(instance_prompts)


def sampling_settings(parts: ModelParts, config: ValidationConfig) -> tuple[int, float]:
    """The validation's (steps, guidance scale): what the config leaves unset is the family's (never SD's for
    SD3)."""
    steps, guidance = parts.sampling_defaults
    steps = config.num_inference_steps if config.num_inference_steps is not None else steps
    return steps, config.guidance_scale if config.guidance_scale is not None else guidance


def validation_jobs(prompts: list[str], config: ValidationConfig) -> list[list[tuple[str, int]]]:
    """The sampling batches of a validation, one per prompt: `num_images` (prompt, seed) jobs each."""
    return [[(prompt, config.seed + k) for k in range(config.num_images)] for prompt in prompts]


@torch.no_grad()
def render_samples(parts: ModelParts, prompts: list[str], config: ValidationConfig, resolution: int,
                   device: torch.device, autocast_dtype: torch.dtype | None = None,
                   text_inputs: dict[tuple[str, ...], dict] | None = None) -> list[Image.Image]:
    """`num_images` per prompt, prompt by prompt; seeds are fixed so that samples of different steps compare
    like for like. With `text_inputs` (rewardbooth.training.frozen_text: each batch's embeddings, computed
    before the frozen text encoders left the device) the pipeline holds no text encoder."""
    without_encoders = {} if text_inputs is None else {name: None for name in parts.named_text_encoders}
    pipeline = parts.pipeline(**without_encoders).to(device)
    jobs = [job for batch in validation_jobs(prompts, config) for job in batch]
    steps, guidance = sampling_settings(parts, config)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        return sample_images(pipeline, jobs, resolution, steps, guidance, batch_size=config.num_images,
                             text_inputs=text_inputs)


class MetricsLog:
    """Appends one JSON object per logged step to metrics.jsonl (main process only).

    A non-finite value (a diverged loss) is written as null: JSON has no NaN or Infinity, and strict readers
    (jq, JavaScript, pandas' default) refuse the bare words Python would write."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, step: int, values: dict[str, float]) -> None:
        if self.enabled:
            row = {"step": step, **{k: v if math.isfinite(v) else None for k, v in values.items()}}
            with self.path.open("a") as file:
                file.write(json.dumps(row, allow_nan=False) + "\n")

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so the log matches an uninterrupted run."""
        if not (self.enabled and self.path.is_file()):
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))


class SkipCount:
    """Steps skipped for a non-finite loss: in all, and in a row (`limit` in a row means the run diverged;
    0 = no limit)."""

    def __init__(self, limit: int):
        self.limit, self.total, self.in_a_row = limit, 0, 0

    def add(self, skipped: bool) -> bool:
        self.total += skipped
        self.in_a_row = self.in_a_row + 1 if skipped else 0
        return skipped

    @property
    def over_limit(self) -> bool:
        return 0 < self.limit <= self.in_a_row


def divergence_error(terms: dict[str, torch.Tensor], skips: SkipCount, step: int, output_dir: Path) -> UserError:
    """The one line that stops a diverged run, naming the likely cause: a critic whose own loss blew up (its
    lr or optimizer, or a reward on a large scale), else the policy (its lr)."""
    critic = "critic_loss" in terms and not bool(torch.isfinite(terms["critic_loss"]).all())
    cause = ("the critic diverged (critic_loss is not finite): lower critic.lr, use critic.optimizer=adamw, or "
             "scale the reward down" if critic else "the policy diverged: lower train.lr (or train.max_grad_norm)")
    return UserError(f"training stopped at step {step}: {skips.in_a_row} consecutive steps had a non-finite loss "
                     f"(train.max_skipped_steps={skips.limit}), so no result is published in {output_dir} "
                     f"(checkpoints are kept); {cause}, then train again")


def non_finite_weights(modules: dict[str, torch.nn.Module | None]) -> str | None:
    """'unet: conv_in.weight' for the first trained parameter holding inf or nan, or None if all are finite.
    Frozen ones are not read: training cannot change them, and a quantized base's (model.quantize) are tensor
    types that have no isfinite."""
    for name, module in modules.items():
        for key, parameter in module.named_parameters() if module is not None else ():
            if parameter.requires_grad and not bool(torch.isfinite(parameter.detach()).all()):
                return f"{name}: {key}"
    return None


PLOTTED_METRICS = ("loss", "instance_loss", "prior_loss", "policy_term", "critic_loss", "reward", "q", "critic/r2",
                   "critic/grad_cosine", "critic/grad_ratio", "lr", "grad_norm", "discount_mean")
# Levels drawn as dashed lines (and kept in view): what the critic diagnostics should reach.
REFERENCE_LEVELS = {"critic/grad_cosine": (0.0, 0.9, 1.0), "critic/grad_ratio": (0.5, 1.0, 2.0), "critic/r2": (0.0, 1.0)}


def plot_metrics(metrics_file: Path, output: Path, panel_size: tuple[int, int] = (360, 200)) -> Path | None:
    """One line chart per logged metric (PIL only, no plotting dependency); returns the PNG's path."""
    from PIL import ImageDraw

    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    names = [name for name in PLOTTED_METRICS if any(name in row for row in rows)]
    # Each reward part and diagnostic, and the validation scores.
    names += sorted({key for row in rows for key in row if key.startswith(("reward/", "val/"))})
    if not names:
        return None
    width, height = panel_size
    canvas = Image.new("RGB", (width * min(3, len(names)), height * math.ceil(len(names) / 3)), "white")
    draw = ImageDraw.Draw(canvas)
    for index, name in enumerate(names):
        points = [(row["step"], row[name]) for row in rows if row.get(name) is not None and math.isfinite(row[name])]
        left, top = (index % 3) * width, (index // 3) * height
        _draw_panel(draw, (left + 45, top + 22, left + width - 12, top + height - 24), name, points,
                    REFERENCE_LEVELS.get(name, ()))
    canvas.save(output)
    return output


def _draw_panel(draw, box: tuple[int, int, int, int], title: str, points: list[tuple[int, float]],
                levels: tuple[float, ...] = ()) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline="gray")
    draw.text((x0, y0 - 16), title, fill="black")
    if not points:
        return
    steps, values = zip(*points)
    low, high = min([*values, *levels]), max([*values, *levels])
    span_x, span_y = max(steps[-1] - steps[0], 1), (high - low) or 1.0
    for level in levels:
        y = y1 - (level - low) / span_y * (y1 - y0)
        for start in range(x0, x1, 8):  # dashed
            draw.line([(start, y), (min(start + 4, x1), y)], fill=(160, 160, 160))
    def to_xy(pairs):
        return [(x0 + (s - steps[0]) / span_x * (x1 - x0), y1 - (v - low) / span_y * (y1 - y0)) for s, v in pairs]

    xy = to_xy(points)
    if len(xy) > 40:  # a noisy per-step series: the raw values faint, a running mean over ~5 % of the run on top
        draw.line(xy, fill=(174, 199, 232), width=1)
        window = max(2, len(values) // 20)
        running = [sum(values[max(0, i - window + 1):i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))]
        draw.line(to_xy(zip(steps, running)), fill=PALETTE[0], width=2)
    elif len(xy) > 1:
        draw.line(xy, fill=PALETTE[0], width=2)
    else:
        draw.point(xy, fill=PALETTE[0])
    draw.text((2 + x0 - 45, y0), f"{high:.3g}", fill="black")
    draw.text((2 + x0 - 45, y1 - 10), f"{low:.3g}", fill="black")
    draw.text((x0, y1 + 4), f"step {steps[0]}", fill="black")
    draw.text((x1 - 60, y1 + 4), f"step {steps[-1]}", fill="black")
