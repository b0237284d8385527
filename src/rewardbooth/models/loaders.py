"""The model-loader registry: a diffusers folder or hub id (the `diffusers` loader), a built-in, or a user's
`package.module:factory`; each returns its family's parts record (rewardbooth.models.parts.ModelParts)."""

from __future__ import annotations

import os
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from rewardbooth.core.config import ModelConfig
from rewardbooth.core.errors import UserError
from rewardbooth.core.registry import Registry
from rewardbooth.models.families import NO_OPTIONS, TrainingOptions, families, family_for_pipeline
from rewardbooth.models.parts import ModelParts
from rewardbooth.models.quantization import pipeline_options, quantize_denoiser

loaders = Registry("model loader")



def load_model(config: ModelConfig, compute_dtype: torch.dtype | None = None) -> ModelParts:
    """The parts of `config.pretrained`, carrying the user's training options (model.timestep_density, ...),
    which their family checks here: a family without one refuses it in one line. With `model.quantize` the
    denoiser is quantized (rewardbooth.models.quantization), its unquantized layers in `compute_dtype` (fp32
    when None): a diffusers folder as it loads, an in-memory model (built-in, factory) after."""
    name = config.pretrained
    if Path(name).expanduser().exists() or (name not in loaders and ":" not in name):
        parts = load_diffusers(config, compute_dtype)
    else:
        parts = loaders.get(name)(config)
        if config.quantize != "none":
            parts = quantize_denoiser(parts, config.quantize, compute_dtype or torch.float32)
    options = TrainingOptions.of(config)
    if options == NO_OPTIONS:
        return parts
    parts.family.with_training(parts, options)  # refuses before anything is moved or trained
    return replace(parts, training=options)


@loaders.register("diffusers")
def load_diffusers(config: ModelConfig, compute_dtype: torch.dtype | None = None) -> ModelParts:
    """Load the components of a diffusers folder or hub id of a registered family's pipeline (the path users pass),
    the denoiser quantized as it loads when `model.quantize` asks."""
    source = str(Path(config.pretrained).expanduser()) if Path(config.pretrained).expanduser().exists() \
        else config.pretrained
    local = Path(source).exists()
    if local and not (Path(source) / "model_index.json").is_file():
        raise UserError(f"model folder {source!r} has no model_index.json: pass a diffusers pipeline folder "
                        f"(saved with save_pretrained) or a hub id")
    if not local:
        check_hub_id(config.pretrained, config.revision)
    kwargs = {"revision": config.revision} if config.revision else {}
    try:
        with warnings.catch_warnings():
            # diffusers passes huggingface_hub arguments it has deprecated: a warning the user can do nothing about.
            warnings.filterwarnings("ignore", category=UserWarning, module="huggingface_hub")
            index = DiffusionPipeline.load_config(source, **kwargs)
            class_name = index.get("_class_name", "")
            family = family_for_pipeline(class_name)
            if family is None:
                known = ", ".join(n for name in families.names() for n in families.get(name).pipeline_class_names)
                raise ValueError(f"model_index.json names {class_name or 'no pipeline class'}, not a pipeline of "
                                 f"a family here ({known})")
            if config.quantize != "none":
                denoiser_name = "unet" if "unet" in index else "transformer"
                kwargs.update(pipeline_options(config.quantize, denoiser_name, compute_dtype or torch.float32))
            pipeline = family.pipeline_class.from_pretrained(source, variant=config.variant, **family.load_options,
                                                             **kwargs)
    except Exception as error:  # noqa: BLE001 - any failure here means the user's path or id is wrong
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"cannot load model {config.pretrained!r} ({first_line.rstrip('.')}); pass a readable "
                        f"diffusers folder or a hub id this machine can download (or 'tiny' for a smoke test)") from None
    return family.parts_from_pipeline(pipeline, source)


def hub_offline() -> bool:
    # Read at call time: huggingface_hub reads HF_HUB_OFFLINE once at import, which may precede the user's setting.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def looks_like_a_path(name: str) -> bool:
    """A name meant as a local path (./x, ../x, /x, ~/x, or under a folder that exists here, as runs/typo): a
    missing one is a typo to report, not a hub id to advise downloading."""
    path = Path(name)
    return name.startswith((".", "/", "~", "\\")) or (len(path.parts) > 1 and Path(path.parts[0]).expanduser().is_dir())


def hub_id_of(name: str | None) -> str | None:
    """`model.pretrained` if it names a hub repository (`owner/name`, no local folder, built-in or factory), so
    that a model card may cite it as `base_model`; else None."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not name or "/" not in name or ":" in name or name in loaders or Path(name).expanduser().exists():
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return None if looks_like_a_path(name) else name


def check_hub_id(name: str, revision: str | None) -> None:
    """A name that is no local folder must be a hub id, and offline, one already in the local hub cache."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
        a_hub_id = not looks_like_a_path(name)
    except HFValidationError:
        a_hub_id = False
    if not a_hub_id:
        raise UserError(f"model folder {name!r} does not exist (and it is not a hub id); pass an existing diffusers "
                        f"folder, a hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5, or 'tiny'")
    if hub_offline() and not isinstance(try_to_load_from_cache(name, "model_index.json", revision=revision), str):
        raise UserError(f"model {name!r} is neither a local folder nor in this machine's hub cache, and downloads "
                        f"are off (HF_HUB_OFFLINE=1): download it first (`hf download {name}`), or pass a local "
                        f"diffusers folder")
