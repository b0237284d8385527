"""Sampling from a base or personalized model: PNGs per prompt and seed, and one grid."""

from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path

import torch

from rewardbooth.core.config import ModelConfig
from rewardbooth.core.errors import UserError
from rewardbooth.core.registry import names_from_saved_run
from rewardbooth.core.storage import check_writable
from rewardbooth.evaluation.plots import prompt_grid
from rewardbooth.models import load_model
from rewardbooth.models.parts import check_resolution
from rewardbooth.models.sampling import sample_images


def slug(prompt: str, max_length: int = 60) -> str:
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:max_length] or "prompt"


def image_name(index: int, prompt: str, seed: int) -> str:
    """The file of prompt number `index` at `seed`: the index keeps prompts apart whose slugs agree (case,
    punctuation, a long common start), the slug tells a person which prompt it is."""
    return f"{index:03d}_{slug(prompt)}_{seed:05d}.png"


def recorded_config_file(folder: Path) -> Path | None:
    """The config.yaml a training run wrote next to its result (a keep-best `best/` reads its run's)."""
    for candidate in (folder / "config.yaml", folder.parent / "config.yaml" if folder.name == "best" else None):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def recorded_config(folder: Path) -> dict | None:
    import yaml

    file = recorded_config_file(folder)
    return None if file is None else yaml.safe_load(file.read_text())


def run_identifiers(model: str, lora: str | None = None) -> list[str]:
    """The identifiers a training output was trained with (every concept's), or [] for a base model."""
    recorded = recorded_config(Path(lora or model).expanduser())
    if not recorded:
        return []
    data = recorded.get("data", {})
    return [data["identifier"], *(concept["identifier"] for concept in data.get("concepts") or [])]


def resolve_result(model: str, lora: str | None) -> tuple[str, str | None, str | None]:
    """(base model, base method whose result to apply, result folder).

    A training output that is not a full pipeline (LoRA, Custom Diffusion) names its base model and method
    in the config.yaml written next to its weights; `lora` applies a LoRA folder to any model."""
    folder = Path(model).expanduser()
    if lora is not None:
        from rewardbooth.methods.lora import WEIGHT_NAME

        if not (Path(lora).expanduser() / WEIGHT_NAME).is_file():
            raise UserError(f"lora={lora!r} has no {WEIGHT_NAME}: pass a folder written by a method.name=lora run")
        return model, "lora", lora
    # A keep-best best/ of an adapter run holds weights only: its run's config.yaml is the folder above.
    if folder.is_dir() and not (folder / "model_index.json").is_file() and recorded_config_file(folder) is not None:
        recorded = recorded_config(folder)
        return str(recorded["model"]["pretrained"]), recorded["method"]["name"], model
    return model, None, None


def generate(model: str, prompts: list[str], output_dir: Path, num_images: int = 4, seed: int = 0,
             num_inference_steps: int | None = None, guidance_scale: float | None = None, resolution: int | None = None,
             overwrite: bool = False, device: str | None = None, lora: str | None = None,
             identifiers: list[str] | None = None, trust_remote_code: bool = False) -> list[Path]:
    """Image k of each prompt uses seed ``seed + k``, so the same call always gives the same images.

    `model` is a pipeline folder, hub id or built-in name, or any training output (LoRA and Custom Diffusion
    ones are applied to their base model); `lora` adds LoRA weights to the model (`load_lora_weights`).
    `identifiers` (default: the run's own, from its config.yaml) go into generation.json, so that an
    evaluation removes the right words for CLIP-T. A `package.module:factory` that a training output's
    config.yaml names (its base model or method) is imported only with `trust_remote_code`: the folder may
    come from anyone. Steps and guidance left None are the model family's."""
    if not prompts:
        raise UserError("no prompt given: pass prompts, e.g. ['a photo of sks dog']")
    for name, count in (("num_images", num_images), ("num_inference_steps", num_inference_steps)):
        if count is not None and count < 1:  # None: the family's default
            raise UserError(f"{name} must be at least 1, got {count}")
    if guidance_scale is not None and not math.isfinite(guidance_scale):
        raise UserError(f"guidance_scale must be a finite number, got {guidance_scale}")
    if resolution is not None and resolution < 8:
        raise UserError(f"resolution must be at least 8 pixels, got {resolution}")
    jobs = [(index, prompt, seed + k) for index, prompt in enumerate(prompts) for k in range(num_images)]
    planned = [output_dir / image_name(*job) for job in jobs]
    clashes = [p for p in [*planned, output_dir / "grid.png", output_dir / "generation.json"] if p.exists()]
    if clashes and not overwrite:
        raise UserError(f"{clashes[0]} already exists; pass overwrite=True or choose another output_dir")
    check_writable(output_dir, "output_dir")
    identifiers = run_identifiers(model, lora) if identifiers is None else identifiers
    model, method, result = resolve_result(model, lora)
    saved = recorded_config_file(Path(result).expanduser()) if method is not None and lora is None else None
    with names_from_saved_run(saved, trust_remote_code) if saved else contextlib.nullcontext():
        parts = load_model(ModelConfig(pretrained=model))
        if resolution is not None:
            check_resolution(resolution, parts, key="resolution")
        pipeline = parts.pipeline()
        if method is not None:
            from rewardbooth.methods import methods

            pipeline = methods.get(method).load_result(pipeline, Path(result).expanduser())
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipeline = pipeline.to(device)
    resolution = resolution or parts.family.native_resolution(parts)
    steps, guidance = parts.sampling_defaults  # unless given: the family's (SD 25 / 7.5, SD3 28 / 7, FLUX-dev 28 / 3.5)
    num_inference_steps = steps if num_inference_steps is None else num_inference_steps
    guidance_scale = guidance if guidance_scale is None else guidance_scale
    output_dir.mkdir(parents=True, exist_ok=True)
    images = sample_images(pipeline, [(prompt, seed + k) for prompt in prompts for k in range(num_images)], resolution,
                           num_inference_steps, guidance_scale, batch_size=num_images, desc="generate")
    for path, image in zip(planned, images):
        image.save(path)
    prompt_grid(images, prompts, [seed + k for k in range(num_images)]).save(output_dir / "grid.png")
    # The protocol next to the images, so that an evaluation can say exactly what it scored.
    record = {"model": model, "applied_result": {"method": method, "folder": result} if method else None,
              "sampler": type(pipeline.scheduler).__name__, "num_inference_steps": num_inference_steps,
              "guidance_scale": guidance_scale, "resolution": resolution, "images_per_prompt": num_images,
              "seeds": [seed + k for k in range(num_images)], "identifiers": identifiers,
              "images": [{"file": path.name, "prompt": prompt, "seed": image_seed}
                         for (_, prompt, image_seed), path in zip(jobs, planned)]}
    (output_dir / "generation.json").write_text(json.dumps(record, indent=2) + "\n")
    return planned
