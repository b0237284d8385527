"""The Stable Diffusion families: 1.x/2.x and SDXL, UNets trained as DDPM denoisers, conditioned exactly as
diffusers' pipelines condition them.

- Stable Diffusion 1.x/2.x: one CLIP text encoder; the UNet attends to its last hidden state.
- SDXL: two encoders; the UNet attends to their *penultimate* hidden states concatenated (768 + 1280 = 2048
  dims for SDXL 1.0), and its added "text_time" embedding takes the second encoder's pooled projection plus
  six size/crop ids (original height, width, crop top, left, target height, width; Podell et al. 2023, §2.2).

A batch's conditioning (rewardbooth.models.families.Conditioning) holds precomputed `embeds` (B, L, D)
[+ `pooled` (B, P) for SDXL] when the text encoders are frozen, or one (B, L) row of token ids per tokenizer
when they train and must run each step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.schedulers import SchedulerMixin
from diffusers.utils import convert_state_dict_to_diffusers
from torch import nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from rewardbooth.models.ddpm import DDPMProcess, prediction_type_of
from rewardbooth.models.families import (
    Conditioning,
    LatentSpace,
    SamplingDefaults,
    TrainingOptions,
    device_of,
    families,
    without_none,
)
from rewardbooth.models.parts import ModelParts

TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2")  # the pipelines' component names, in this order


@dataclass
class StableDiffusionParts(ModelParts):
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

    denoiser_name: ClassVar[str] = "unet"  # the pipeline's name for the denoiser ("transformer" in SD3 and FLUX)

    @property
    def named_text_encoders(self) -> dict:
        """Pipeline component name -> text encoder: `text_encoder` (and SDXL's `text_encoder_2`)."""
        return {name: getattr(self, name) for name in TEXT_ENCODER_NAMES if getattr(self, name) is not None}

    @property
    def tokenizers(self) -> list[CLIPTokenizer]:
        return [t for t in (self.tokenizer, self.tokenizer_2) if t is not None]


def tokenize(tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    """Shape: -> (B, L) token ids, padded to the tokenizer's max length as Stable Diffusion is trained."""
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


class StableDiffusion:
    """Stable Diffusion 1.x/2.x: one CLIP text encoder, a UNet on its last hidden state, DDPM training."""

    name = "stable-diffusion"
    pipeline_class = StableDiffusionPipeline
    pipeline_class_names = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
    load_options = {"safety_checker": None, "requires_safety_checker": False}  # for from_pretrained
    # LoRA's default targets per component: the attention projections (diffusers' train_dreambooth_lora.py).
    lora_targets = {"denoiser": ("to_k", "to_q", "to_v", "to_out.0"),
                    **{name: ("q_proj", "k_proj", "v_proj", "out_proj") for name in TEXT_ENCODER_NAMES}}
    trainable_text_encoders = TEXT_ENCODER_NAMES
    mixed_precisions = ("no", "fp16", "bf16")
    sampling = SamplingDefaults(num_inference_steps=25, guidance_scale=7.5)

    def matches(self, pipeline_class_name: str) -> bool:
        """Whether a diffusers folder's model_index.json `_class_name` is this family's (exactly: SD3's
        `StableDiffusion3Pipeline` is not)."""
        return pipeline_class_name in self.pipeline_class_names

    def with_training(self, parts: StableDiffusionParts, options: TrainingOptions) -> StableDiffusion:
        options.refuse(tuple(TrainingOptions.KEYS), self.name, "trains as DDPM (timesteps drawn uniformly from "
                       "its scheduler's table: no flow density, shift or guidance embedding)")
        return self

    def process(self, parts: StableDiffusionParts) -> DDPMProcess:
        """The training-time forward process, read from the model's own scheduler config."""
        return DDPMProcess.from_scheduler_config(parts.scheduler.config)

    def latent_space(self, parts: StableDiffusionParts) -> LatentSpace:
        return LatentSpace.of(parts.vae)

    def latent_channels(self, parts: StableDiffusionParts) -> int:
        return parts.unet.config.in_channels

    def text_embedding_dim(self, parts: StableDiffusionParts) -> int:
        """The UNet's cross-attention width (SDXL: its two encoders' widths concatenated)."""
        return parts.unet.config.cross_attention_dim

    def prediction_type(self, parts: StableDiffusionParts) -> str:
        return prediction_type_of(parts.scheduler.config)

    def sampling_defaults(self, parts: StableDiffusionParts) -> SamplingDefaults:
        return self.sampling

    def resolution_multiple(self, parts: StableDiffusionParts) -> int:
        """Image sizes the UNet takes: multiples of the VAE factor times its downsampling."""
        return parts.vae_scale_factor * 2 ** (len(parts.unet.config.block_out_channels) - 1)

    def native_resolution(self, parts: StableDiffusionParts) -> int:
        return parts.unet.config.sample_size * parts.vae_scale_factor

    def micro_conditioning(self, resolution: int | tuple[int, int]) -> torch.Tensor | None:
        """Extra ids the denoiser takes besides text and t (none here), for images of `resolution` px (a side,
        or (height, width))."""
        return None

    def tokenize(self, tokenizers: list, prompts: list[str]) -> tuple[torch.Tensor, ...]:
        """Padded to each tokenizer's max length, as both families are trained. Shape: -> E x (B, L)"""
        return tuple(tokenize(tokenizer, prompts) for tokenizer in tokenizers)

    def encode_text(self, encoders: list[nn.Module], token_ids: tuple[torch.Tensor, ...]) -> Conditioning:
        """The UNet's text context: the encoder's last hidden state. Shape: 1 x (B, L) -> {"embeds": (B, L, D)}"""
        encoder = encoders[0]
        return Conditioning({"embeds": encoder(token_ids[0].to(device_of(encoder)))[0]})

    def lora_state_dict(self, component: str, peft_state: dict) -> dict:
        """A component's adapters as its pipeline's `save_lora_weights` expects them (diffusers' SD scripts
        convert peft's names to diffusers')."""
        return convert_state_dict_to_diffusers(peft_state)

    def stock_conditioning(self, pipeline, prompts: list[str]) -> Conditioning:
        embeds, _ = pipeline.encode_prompt(prompts, device="cpu", num_images_per_prompt=1,
                                           do_classifier_free_guidance=False)
        return Conditioning({"embeds": embeds})

    def pipeline_text_inputs(self, pipeline, prompts: list[str], guidance_scale: float,
                             device: torch.device) -> dict:
        # __call__ guides when guidance_scale > 1 (the negative is the empty prompt's embedding).
        embeds, negative = pipeline.encode_prompt(prompts, device, 1, guidance_scale > 1)
        return without_none(prompt_embeds=embeds, negative_prompt_embeds=negative)

    def denoise(self, denoiser: nn.Module, x_t: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning,
                encoders: list[nn.Module] | None = None,
                micro: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The action (the UNet's output) and the text embedding it was conditioned on.

        Token ids run through the (training) encoders here, so their gradient reaches the encoders.
        Shape: x_t (B, C, h, w), timesteps (B,) -> (B, C, h, w), (B, L, D)"""
        if conditioning.token_ids:
            conditioning = self.encode_text(encoders, conditioning.token_ids)
        embeds = conditioning.embeds["embeds"]
        return denoiser(x_t, timesteps, embeds, **self._extra_inputs(conditioning, micro)).sample, embeds

    def _extra_inputs(self, conditioning: Conditioning, micro: torch.Tensor | None) -> dict:
        return {}

    def pipeline(self, parts: StableDiffusionParts) -> StableDiffusionPipeline:
        return StableDiffusionPipeline(
            vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
            scheduler=parts.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)

    def parts_from_pipeline(self, pipeline, source: str) -> StableDiffusionParts:
        return StableDiffusionParts(unet=pipeline.unet, vae=pipeline.vae, text_encoder=pipeline.text_encoder,
                                    tokenizer=pipeline.tokenizer, scheduler=pipeline.scheduler, source=source,
                                    family_name=self.name)


class StableDiffusionXL(StableDiffusion):
    """SDXL: two text encoders (penultimate hidden states concatenated, the second's pooled projection) and
    six size/crop ids in the UNet's added embedding (Podell et al. 2023, §2.2); the same DDPM process."""

    name = "stable-diffusion-xl"
    pipeline_class = StableDiffusionXLPipeline
    pipeline_class_names = ("StableDiffusionXLPipeline",)
    load_options = {}
    sampling = SamplingDefaults(num_inference_steps=25, guidance_scale=5.0)  # StableDiffusionXLPipeline's guidance

    def micro_conditioning(self, resolution: int | tuple[int, int]) -> torch.Tensor:
        """Our training images are resized and centre-cropped to the training size (a square, or an aspect
        bucket's (height, width)), as the stock pipeline assumes at inference: original = target =
        (height, width), crop (0, 0). Shape: (1, 6)"""
        height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
        return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)

    def encode_text(self, encoders: list[nn.Module], token_ids: tuple[torch.Tensor, ...]) -> Conditioning:
        """Both encoders' penultimate hidden states, concatenated, and the second's pooled projection.

        Shape: token_ids 2 x (B, L) -> {"embeds": (B, L, D1 + D2), "pooled": (B, P)}"""
        hidden = []
        for ids, encoder in zip(token_ids, encoders, strict=True):
            output = encoder(ids.to(device_of(encoder)), output_hidden_states=True)
            hidden.append(output.hidden_states[-2])
        # CLIPTextModelWithProjection's first output is text_embeds: the pooled, projected EOS feature.
        return Conditioning({"embeds": torch.cat(hidden, dim=-1), "pooled": output[0]})

    def stock_conditioning(self, pipeline, prompts: list[str]) -> Conditioning:
        embeds, _, pooled, _ = pipeline.encode_prompt(prompts, device="cpu", num_images_per_prompt=1,
                                                      do_classifier_free_guidance=False)
        return Conditioning({"embeds": embeds, "pooled": pooled})

    def pipeline_text_inputs(self, pipeline, prompts: list[str], guidance_scale: float,
                             device: torch.device) -> dict:
        # With guidance, the negatives are zeros when the config forces them (force_zeros_for_empty_prompt).
        embeds, negative, pooled, negative_pooled = pipeline.encode_prompt(
            prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=guidance_scale > 1)
        return without_none(prompt_embeds=embeds, negative_prompt_embeds=negative, pooled_prompt_embeds=pooled,
                            negative_pooled_prompt_embeds=negative_pooled)

    def _extra_inputs(self, conditioning: Conditioning, micro: torch.Tensor | None) -> dict:
        if micro is None:
            raise ValueError("an SDXL batch (pooled text embedding) needs the size ids")
        embeds = conditioning.embeds["embeds"]
        time_ids = micro.to(embeds.device).expand(len(embeds), -1)
        return {"added_cond_kwargs": {"text_embeds": conditioning.embeds["pooled"], "time_ids": time_ids}}

    def pipeline(self, parts: StableDiffusionParts) -> StableDiffusionXLPipeline:
        return StableDiffusionXLPipeline(
            vae=parts.vae, text_encoder=parts.text_encoder, text_encoder_2=parts.text_encoder_2,
            tokenizer=parts.tokenizer, tokenizer_2=parts.tokenizer_2, unet=parts.unet, scheduler=parts.scheduler,
            add_watermarker=False)

    def parts_from_pipeline(self, pipeline, source: str) -> StableDiffusionParts:
        return StableDiffusionParts(unet=pipeline.unet, vae=pipeline.vae, text_encoder=pipeline.text_encoder,
                                    tokenizer=pipeline.tokenizer, text_encoder_2=pipeline.text_encoder_2,
                                    tokenizer_2=pipeline.tokenizer_2, scheduler=pipeline.scheduler, source=source,
                                    family_name=self.name)


families.register(StableDiffusion.name)(StableDiffusion())
families.register(StableDiffusionXL.name)(StableDiffusionXL())
