"""The parts every loader returns: a model's components, named as its diffusers pipeline names them, and the
registered family they make up (set by the loader, never guessed from which components exist)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.schedulers import SchedulerMixin
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from rewardbooth.core.errors import UserError
from rewardbooth.models.families import families, prediction_type_of

TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2")  # the pipelines' component names, in this order

logger = logging.getLogger(__name__)


@dataclass
class StableDiffusionParts:
    """The components of a Stable-Diffusion-family model, plus where they came from and their family's name.
    SDXL models also have a second text encoder (with projection: its pooled output conditions the UNet) and
    tokenizer."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: SchedulerMixin  # the sampler the model ships with (used for generation)
    source: str
    family_name: str  # a registered family (rewardbooth.models.families)
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None

    @property
    def family(self):
        """The registered model family these components make up."""
        return families.get(self.family_name)

    @property
    def denoiser(self):
        """The network whose output is the policy's action (the UNet here; a transformer in SD3 and FLUX)."""
        return self.unet

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
    def pipeline_class(self):
        return self.family.pipeline_class

    @property
    def process(self):
        """The training-time forward process and parameterization (rewardbooth.models.families)."""
        return self.family.process(self)

    @property
    def latent_space(self):
        return self.family.latent_space(self)

    @property
    def prediction_type(self) -> str:
        return prediction_type_of(self.scheduler.config)  # without building the whole process

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def pipeline(self, **components):
        """A stock pipeline over these parts; keyword arguments replace components (e.g. a trained UNet)."""
        parts = replace(self, **components)
        return parts.family.pipeline(parts)


def check_resolution(resolution: int, parts: StableDiffusionParts, key: str = "data.resolution") -> None:
    """Refuse a size the denoiser cannot take; warn about one far above the size the model was trained at."""
    factor = parts.family.resolution_multiple(parts)
    if resolution % factor:
        lower, upper = resolution // factor * factor, (resolution // factor + 1) * factor
        raise UserError(f"{key}={resolution} is not a multiple of {factor} (the VAE factor "
                        f"{parts.vae_scale_factor} x the denoiser's downsampling); use {lower or upper} or {upper}")
    native = parts.family.native_resolution(parts)
    if resolution > 2 * native:
        # Every step (and every class image) costs (resolution / native)^2 times more, for a size the model
        # has never drawn.
        logger.warning("%s=%d is %.0fx the %d px this model was trained at: much slower, and it draws poorly at "
                       "sizes it never saw; use %d unless you mean it", key, resolution, resolution / native,
                       native, native)
