"""The parts every loader returns: a model's components, named as its diffusers pipeline names them, and the
registered family they make up (set by the loader, never guessed from which components exist). Each family
defines its record (rewardbooth.models.stable_diffusion.StableDiffusionParts) over the shared `ModelParts`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from rewardbooth.core.errors import UserError
from rewardbooth.models.families import NO_OPTIONS, TrainingOptions, families

logger = logging.getLogger(__name__)


@dataclass
class ModelParts:
    """What every family's parts record provides (a dataclass of the pipeline's components, in each family's
    module), beside the components themselves: `family_name`, `source`, `vae`, `scheduler`, `denoiser_name`
    (the pipeline's name for the denoiser: "unet", "transformer"), `named_text_encoders` and `tokenizers`,
    which the record defines, and `training`, the user's overrides of the family's training process. The rest
    follows."""

    training: TrainingOptions = field(default=NO_OPTIONS, kw_only=True)

    @property
    def denoiser(self):
        """The network whose output is the policy's action."""
        return getattr(self, self.denoiser_name)

    @property
    def family(self):
        """The registered model family these components make up, training with `self.training` when set."""
        family = families.get(self.family_name)
        return family if self.training == NO_OPTIONS else family.with_training(self, self.training)

    @property
    def text_encoders(self) -> list:
        return list(self.named_text_encoders.values())

    @property
    def text_embedding_dim(self) -> int:
        """Width D of the (B, L, D) text embedding the family's `denoise` returns (the family says)."""
        return self.family.text_embedding_dim(self)

    @property
    def latent_channels(self) -> int:
        """C of the unpacked (B, C, h, w) latents the loop, critic and rewards see (FLUX packs inside denoise)."""
        return self.family.latent_channels(self)

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
        """"epsilon", "v_prediction", "sample" (DDPM families) or "flow_prediction" (v = ε − x0)."""
        return self.family.prediction_type(self)

    @property
    def sampling_defaults(self):
        """The family's (num_inference_steps, guidance_scale), for whatever the user leaves unset."""
        return self.family.sampling_defaults(self)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def pipeline(self, **components):
        """A stock pipeline over these parts; keyword arguments replace components (e.g. a trained UNet)."""
        parts = replace(self, **components)
        return parts.family.pipeline(parts)


def check_precision(mixed_precision: str, parts: ModelParts, key: str = "train.mixed_precision") -> None:
    """Refuse a precision the family does not train under (FLUX in fp16 overflows), before any slow work."""
    allowed = parts.family.mixed_precisions
    if mixed_precision not in allowed:
        raise UserError(f"{key}={mixed_precision}: the {parts.family.name} family does not train in {mixed_precision} "
                        f"(its activations overflow it); use {key}={allowed[-1]}")


def check_resolution(resolution: int, parts: ModelParts, key: str = "data.resolution") -> None:
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
