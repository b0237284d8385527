"""The model-loader registry and the parts every loader returns."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.schedulers import SchedulerMixin
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from rewardbooth.core.config import ModelConfig
from rewardbooth.core.errors import UserError
from rewardbooth.core.registry import Registry
from rewardbooth.models.families import (
    StableDiffusion,
    StableDiffusionXL,
    families,
    family_for_pipeline,
    prediction_type_of,
)

loaders = Registry("model loader")
TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2")  # the pipelines' component names, in this order

logger = logging.getLogger(__name__)


@dataclass
class StableDiffusionParts:
    """The components of a Stable-Diffusion-family model, plus where they came from. SDXL models also have a
    second text encoder (with projection: its pooled output conditions the UNet) and tokenizer."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: SchedulerMixin  # the sampler the model ships with (used for generation)
    source: str
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None

    @property
    def family(self):
        """The registered model family (rewardbooth.models.families) these components make up."""
        return families.get(StableDiffusionXL.name if self.text_encoder_2 is not None else StableDiffusion.name)

    @property
    def text_encoders(self) -> list:
        return list(self.named_text_encoders.values())

    @property
    def named_text_encoders(self) -> dict:
        """Pipeline component name -> text encoder: `text_encoder` (and SDXL's `text_encoder_2`)."""
        return {name: getattr(self, name) for name in TEXT_ENCODER_NAMES if getattr(self, name) is not None}

    @property
    def tokenizers(self) -> list[CLIPTokenizer]:
        return [t for t in (self.tokenizer, self.tokenizer_2) if t is not None]

    @property
    def text_embedding_dim(self) -> int:
        """Width of the UNet's text context: SDXL concatenates its two encoders' hidden states."""
        return sum(encoder.config.hidden_size for encoder in self.text_encoders)

    @property
    def pipeline_class(self) -> type[StableDiffusionPipeline] | type[StableDiffusionXLPipeline]:
        return self.family.pipeline_class

    @property
    def process(self):
        """The training-time forward process and parameterization (rewardbooth.models.families)."""
        return self.family.process(self)

    @property
    def prediction_type(self) -> str:
        return prediction_type_of(self.scheduler.config)  # without building the whole process

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def pipeline(self, **components) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
        """A stock pipeline over these parts; keyword arguments replace components (e.g. a trained UNet)."""
        parts = replace(self, **components)
        return parts.family.pipeline(parts)


def load_model(config: ModelConfig) -> StableDiffusionParts:
    name = config.pretrained
    if Path(name).expanduser().exists() or (name not in loaders and ":" not in name):
        return loaders.get("diffusers")(config)
    return loaders.get(name)(config)


@loaders.register("diffusers")
def load_diffusers(config: ModelConfig) -> StableDiffusionParts:
    """Load the components of a diffusers Stable Diffusion or SDXL folder or hub id (the path users pass)."""
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
            class_name = DiffusionPipeline.load_config(source, **kwargs).get("_class_name", "")
            family = family_for_pipeline(class_name)
            if family is None:
                raise ValueError(f"model_index.json names {class_name or 'no pipeline class'}, not a Stable Diffusion "
                                 f"1.x/2.x or SDXL pipeline")
            pipeline = family.pipeline_class.from_pretrained(source, variant=config.variant, **family.load_options,
                                                             **kwargs)
    except Exception as error:  # noqa: BLE001 - any failure here means the user's path or id is wrong
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"cannot load model {config.pretrained!r} ({first_line.rstrip('.')}); pass a readable "
                        f"diffusers folder or a hub id this machine can download (or 'tiny' for a smoke test)") from None
    second = {name: getattr(pipeline, name) for name in ("text_encoder_2", "tokenizer_2") if hasattr(pipeline, name)}
    return StableDiffusionParts(
        unet=pipeline.unet, vae=pipeline.vae, text_encoder=pipeline.text_encoder,
        tokenizer=pipeline.tokenizer, scheduler=pipeline.scheduler, source=source, **second,
    )


def hub_offline() -> bool:
    # Read at call time: huggingface_hub reads HF_HUB_OFFLINE once at import, which may precede the user's setting.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def check_hub_id(name: str, revision: str | None) -> None:
    """A name that is no local folder must be a hub id, and offline, one already in the local hub cache."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise UserError(f"model folder {name!r} does not exist (and it is not a hub id); pass an existing diffusers "
                        f"folder, a hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5, or 'tiny'") from None
    if hub_offline() and not isinstance(try_to_load_from_cache(name, "model_index.json", revision=revision), str):
        raise UserError(f"model {name!r} is neither a local folder nor in this machine's hub cache, and downloads "
                        f"are off (HF_HUB_OFFLINE=1): download it first (`hf download {name}`), or pass a local "
                        f"diffusers folder")


def check_resolution(resolution: int, parts: StableDiffusionParts, key: str = "data.resolution") -> None:
    """Refuse a size the UNet cannot take; warn about one far above the size the model was trained at."""
    factor = parts.vae_scale_factor * 2 ** (len(parts.unet.config.block_out_channels) - 1)
    if resolution % factor:
        lower, upper = resolution // factor * factor, (resolution // factor + 1) * factor
        raise UserError(f"{key}={resolution} is not a multiple of {factor} (the VAE factor "
                        f"{parts.vae_scale_factor} x the UNet's downsampling); use {lower or upper} or {upper}")
    native = parts.unet.config.sample_size * parts.vae_scale_factor
    if resolution > 2 * native:
        # Every step (and every class image) costs (resolution / native)^2 times more, for a size the model
        # has never drawn.
        logger.warning("%s=%d is %.0fx the %d px this model was trained at: much slower, and it draws poorly at "
                       "sizes it never saw; use %d unless you mean it", key, resolution, resolution / native,
                       native, native)
