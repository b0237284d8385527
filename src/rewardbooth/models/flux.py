"""FLUX.1 (Black Forest Labs 2024; dev and schnell): a rectified-flow MMDiT over 2x2-packed latents,
conditioned exactly as diffusers' FluxPipeline conditions it.

- Text: CLIP-L's pooled output (the transformer's `pooled_projections`) and T5-XXL's 512 tokens (its
  `encoder_hidden_states`), with zero text ids.
- Latents: (z - shift) * scale from the VAE config; `denoise` packs (B, C, h, w) into (B, hw/4, 4C) tokens
  with their img ids and unpacks the velocity, so the loop, critic and rewards only see (B, C, h, w).
- Time: the transformer takes σ and scales it by 1000 inside, so `denoise` divides the process's 1000σ.
- Guidance: FLUX.1-dev is guidance-distilled, its transformer has a guidance embedding (`guidance_embeds`).
  Training sets it to the sampling guidance (3.5), as diffusers' train_dreambooth_lora_flux.py does
  (`--guidance_scale`, default 3.5): the embedding is an input the distilled model always saw, and the
  adapters learn the subject at the guidance they will be sampled with. Schnell has no embedding (None).
- σ in training: uniform (the script's default weighting "none"), no shift: FLUX-dev's scheduler shifts
  dynamically by resolution at inference only (`use_dynamic_shifting`), so its training table is unshifted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
from diffusers.schedulers import SchedulerMixin
from torch import nn

from rewardbooth.models.families import (
    NO_OPTIONS,
    Conditioning,
    LatentSpace,
    SamplingDefaults,
    TrainingOptions,
    device_of,
    families,
)
from rewardbooth.models.flow import FlowProcess, with_training
from rewardbooth.models.parts import ModelParts

TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2")
T5_LENGTH = 512  # FluxPipeline's max_sequence_length default: training must see what sampling does
DEV, SCHNELL = SamplingDefaults(28, 3.5), SamplingDefaults(4, 0.0)  # the pipeline's, and schnell's card


@dataclass
class FluxParts(ModelParts):
    """The components of a FLUX.1 model: the transformer, the VAE, CLIP-L (pooled) and T5."""

    transformer: FluxTransformer2DModel
    vae: AutoencoderKL
    text_encoder: nn.Module
    text_encoder_2: nn.Module
    tokenizer: object
    tokenizer_2: object
    scheduler: SchedulerMixin
    source: str
    family_name: str

    denoiser_name: ClassVar[str] = "transformer"

    @property
    def named_text_encoders(self) -> dict:
        return {name: getattr(self, name) for name in TEXT_ENCODER_NAMES}

    @property
    def tokenizers(self) -> list:
        return [self.tokenizer, self.tokenizer_2]


def pack(latents: torch.Tensor) -> torch.Tensor:
    """2x2 patches as tokens (FluxPipeline._pack_latents). Shape: (B, C, h, w) -> (B, hw/4, 4C)"""
    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of `pack` (FluxPipeline._unpack_latents at scale 1). Shape: (B, hw/4, 4C) -> (B, C, h, w)"""
    return FluxPipeline._unpack_latents(tokens, h, w, 1)


class Flux:
    """FLUX.1 dev / schnell: MMDiT over packed latents, rectified flow, CLIP-L pooled + T5."""

    name = "flux"
    pipeline_class = FluxPipeline
    pipeline_class_names = ("FluxPipeline",)
    load_options: ClassVar[dict] = {}
    # Both streams' attention projections (diffusers' train_dreambooth_lora_flux.py, without its FF layers).
    lora_targets: ClassVar[dict] = {
        "denoiser": ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0",
                     "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out"),
        "text_encoder": ("q_proj", "k_proj", "v_proj", "out_proj")}
    trainable_text_encoders: ClassVar[tuple] = ()
    # FLUX.1 was trained and ships in bf16; its activations leave fp16's range (black or NaN images).
    mixed_precisions: ClassVar[tuple] = ("no", "bf16")

    def matches(self, pipeline_class_name: str) -> bool:
        return pipeline_class_name in self.pipeline_class_names

    training: TrainingOptions = NO_OPTIONS  # the user's (model.timestep_density, ...): `with_training`

    def with_training(self, parts: FluxParts, options: TrainingOptions) -> Flux:
        if not parts.transformer.config.guidance_embeds:
            options.refuse(("guidance",), "flux (schnell: no guidance embedding)", "cannot take a training guidance")
        return with_training(self, options)

    def process(self, parts: FluxParts) -> FlowProcess:
        # FluxPipeline samples with σ = linspace(1, 1/S, S), shifted dynamically: rollouts use the same.
        return FlowProcess.for_family(parts.scheduler.config, self.training, "uniform", linear_sampling_sigmas=True)

    def latent_space(self, parts: FluxParts) -> LatentSpace:
        return LatentSpace.of(parts.vae)

    def latent_channels(self, parts: FluxParts) -> int:
        return parts.transformer.config.in_channels // 4  # the transformer takes 2x2-packed channels

    def text_embedding_dim(self, parts: FluxParts) -> int:
        return parts.transformer.config.joint_attention_dim

    def prediction_type(self, parts: FluxParts) -> str:
        return "flow_prediction"

    def sampling_defaults(self, parts: FluxParts) -> SamplingDefaults:
        """dev: 28 steps at embedded guidance 3.5; schnell (no guidance embedding): 4 steps, none."""
        return DEV if parts.transformer.config.guidance_embeds else SCHNELL

    def resolution_multiple(self, parts: FluxParts) -> int:
        return parts.vae_scale_factor * 2  # the 2x2 packing splits the latents in halves

    def native_resolution(self, parts: FluxParts) -> int:
        return parts.vae.config.sample_size  # FLUX's transformer has no sample size; its VAE says 1024

    def micro_conditioning(self, resolution: int) -> None:
        return None

    def tokenize(self, tokenizers: list, prompts: list[str]) -> tuple[torch.Tensor, ...]:
        """Shape: -> (B, 77), (B, 512)"""
        clip = tokenizers[0](prompts, padding="max_length", max_length=tokenizers[0].model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        t5 = tokenizers[1](prompts, padding="max_length", max_length=T5_LENGTH, truncation=True,
                           return_length=False, return_overflowing_tokens=False, return_tensors="pt").input_ids
        return clip, t5

    def encode_text(self, encoders: list[nn.Module], token_ids: tuple[torch.Tensor, ...]) -> Conditioning:
        """Shape: -> {"embeds": (B, 512, D_joint), "pooled": (B, D_clip)}"""
        clip, t5 = encoders
        pooled = clip(token_ids[0].to(device_of(clip)), output_hidden_states=False).pooler_output
        embeds = t5(token_ids[1].to(device_of(t5)), output_hidden_states=False)[0]
        return Conditioning({"embeds": embeds, "pooled": pooled})

    def pipeline_text_inputs(self, pipeline, prompts: list[str], guidance_scale: float,
                             device: torch.device) -> dict:
        # FLUX's guidance is embedded (or none, schnell): no negative prompt at any scale.
        embeds, pooled, _ = pipeline.encode_prompt(prompts, None, device=device, num_images_per_prompt=1,
                                                   max_sequence_length=T5_LENGTH)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def lora_state_dict(self, component: str, peft_state: dict) -> dict:
        return peft_state  # peft's names, as train_dreambooth_lora_flux.py saves them

    def stock_conditioning(self, pipeline, prompts: list[str]) -> Conditioning:
        embeds, pooled, _ = pipeline.encode_prompt(prompts, None, device="cpu", num_images_per_prompt=1,
                                                   max_sequence_length=T5_LENGTH)
        return Conditioning({"embeds": embeds, "pooled": pooled})

    def denoise(self, denoiser: nn.Module, x_t: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning,
                encoders: list[nn.Module] | None = None,
                micro: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The velocity v̂, unpacked, and the T5 embedding. Shape: x_t (B, C, h, w), timesteps (B,) 1000σ
        -> (B, C, h, w), (B, 512, D_joint)"""
        if conditioning.token_ids:
            conditioning = self.encode_text(encoders, conditioning.token_ids)
        embeds = conditioning.embeds["embeds"]
        b, _, h, w = x_t.shape
        guidance = None
        if getattr(denoiser, "module", denoiser).config.guidance_embeds:  # DDP wraps the transformer
            value = DEV.guidance_scale if self.training.guidance is None else self.training.guidance
            guidance = torch.full((b,), value, device=x_t.device, dtype=torch.float32)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x_t.device, x_t.dtype)
        txt_ids = torch.zeros(embeds.shape[1], 3, device=x_t.device, dtype=x_t.dtype)
        tokens = denoiser(hidden_states=pack(x_t), timestep=timesteps.to(x_t.dtype) / 1000, guidance=guidance,
                          pooled_projections=conditioning.embeds["pooled"], encoder_hidden_states=embeds,
                          txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return unpack(tokens, h, w), embeds

    def pipeline(self, parts: FluxParts) -> FluxPipeline:
        return FluxPipeline(transformer=parts.transformer, scheduler=parts.scheduler, vae=parts.vae,
                            text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                            text_encoder_2=parts.text_encoder_2, tokenizer_2=parts.tokenizer_2)

    def parts_from_pipeline(self, pipeline, source: str) -> FluxParts:
        return FluxParts(transformer=pipeline.transformer, vae=pipeline.vae, text_encoder=pipeline.text_encoder,
                         text_encoder_2=pipeline.text_encoder_2, tokenizer=pipeline.tokenizer,
                         tokenizer_2=pipeline.tokenizer_2, scheduler=pipeline.scheduler, source=source,
                         family_name=self.name)


families.register(Flux.name)(Flux())
