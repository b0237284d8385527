"""Stable Diffusion 3 / 3.5 (Esser et al. 2024): an MMDiT transformer trained by rectified flow, conditioned
exactly as diffusers' StableDiffusion3Pipeline conditions it.

- Text: CLIP-L and CLIP-G penultimate hidden states concatenated (77 tokens), zero-padded to the T5 width and
  followed by T5-XXL's 256 tokens on the sequence axis; the pooled projections of both CLIPs, concatenated.
- Time: the transformer takes 1000σ; σ from a logit-normal density with the scheduler's static shift (3).
- Latents: (z - shift) * scale from the VAE config; 2x2 patches are made inside the transformer.
- Without T5 (text_encoder_3 None, as the toy world's `toy-flow`): the pipeline puts 256 zero tokens of the
  joint width in T5's place (`_get_t5_prompt_embeds`), and so does `encode_text`: the CLIP part is zero-padded
  to its own width (the widest it can know without the transformer) and `denoise` pads both to the
  transformer's `joint_attention_dim`, which is the same zero padding the pipeline does in one step.

`train_text_encoder` is refused: T5 never trains, and the CLIPs' per-step encoding beside a precomputed T5
embedding is not wired (the transformer trains; see docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, SD3Transformer2DModel, StableDiffusion3Pipeline
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
    without_none,
)
from rewardbooth.models.flow import FlowProcess, with_training
from rewardbooth.models.parts import ModelParts

TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2", "text_encoder_3")
T5_LENGTH = 256  # StableDiffusion3Pipeline's max_sequence_length default: training must see what sampling does
CLIP_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass
class StableDiffusion3Parts(ModelParts):
    """The components of an SD3 model: the transformer, the VAE, two CLIPs with projection and T5."""

    transformer: SD3Transformer2DModel
    vae: AutoencoderKL
    text_encoder: nn.Module
    text_encoder_2: nn.Module
    text_encoder_3: nn.Module
    tokenizer: object
    tokenizer_2: object
    tokenizer_3: object
    scheduler: SchedulerMixin  # the sampler the model ships with (used for generation)
    source: str
    family_name: str

    denoiser_name: ClassVar[str] = "transformer"

    @property
    def named_text_encoders(self) -> dict:
        return {name: getattr(self, name) for name in TEXT_ENCODER_NAMES}

    @property
    def tokenizers(self) -> list:
        return [self.tokenizer, self.tokenizer_2, self.tokenizer_3]


class StableDiffusion3:
    """SD3 / SD3.5 (Large, Medium): MMDiT, rectified flow, CLIP-L + CLIP-G + T5."""

    name = "stable-diffusion-3"
    pipeline_class = StableDiffusion3Pipeline
    pipeline_class_names = ("StableDiffusion3Pipeline",)
    load_options: ClassVar[dict] = {}
    # Both streams' attention projections (diffusers' train_dreambooth_lora_sd3.py default).
    lora_targets: ClassVar[dict] = {
        "denoiser": ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0",
                     "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out"),
        "text_encoder": CLIP_TARGETS, "text_encoder_2": CLIP_TARGETS}
    trainable_text_encoders: ClassVar[tuple] = ()
    mixed_precisions: ClassVar[tuple] = ("no", "fp16", "bf16")  # SD3 ships fp16 weights
    sampling = SamplingDefaults(num_inference_steps=28, guidance_scale=7.0)  # the pipeline's own defaults

    def matches(self, pipeline_class_name: str) -> bool:
        return pipeline_class_name in self.pipeline_class_names

    training: TrainingOptions = NO_OPTIONS  # the user's (model.timestep_density, ...): `with_training`

    def with_training(self, parts: StableDiffusion3Parts, options: TrainingOptions) -> StableDiffusion3:
        options.refuse(("guidance",), self.name, "has no guidance embedding (it samples with classifier-free guidance)")
        return with_training(self, options)

    def process(self, parts: StableDiffusion3Parts) -> FlowProcess:
        """Logit-normal(0, 1) σ (SD3's training, diffusers' script default), the config's static shift, unless
        the user's options (model.timestep_density, model.timestep_shift, ...) say otherwise."""
        return FlowProcess.for_family(parts.scheduler.config, self.training, "logit_normal")

    def latent_space(self, parts: StableDiffusion3Parts) -> LatentSpace:
        return LatentSpace.of(parts.vae)

    def latent_channels(self, parts: StableDiffusion3Parts) -> int:
        return parts.transformer.config.in_channels

    def text_embedding_dim(self, parts: StableDiffusion3Parts) -> int:
        return parts.transformer.config.joint_attention_dim

    def prediction_type(self, parts: StableDiffusion3Parts) -> str:
        return "flow_prediction"

    def sampling_defaults(self, parts: StableDiffusion3Parts) -> SamplingDefaults:
        return self.sampling

    def resolution_multiple(self, parts: StableDiffusion3Parts) -> int:
        return parts.vae_scale_factor * parts.transformer.config.patch_size

    def native_resolution(self, parts: StableDiffusion3Parts) -> int:
        return parts.transformer.config.sample_size * parts.vae_scale_factor

    def micro_conditioning(self, resolution: int) -> None:
        return None

    def tokenize(self, tokenizers: list, prompts: list[str]) -> tuple[torch.Tensor, ...]:
        """CLIP ids padded to their context (77), T5 ids to 256, as the pipeline pads them; no T5 tokenizer: an
        empty id tensor in its place. Shape: -> (B, 77), (B, 77), (B, 256) or (B, 0)"""
        clip = [t(prompts, padding="max_length", max_length=t.model_max_length, truncation=True,
                  return_tensors="pt").input_ids for t in tokenizers[:2]]
        if tokenizers[2] is None:
            return (*clip, torch.zeros(len(prompts), 0, dtype=torch.int64))
        t5 = tokenizers[2](prompts, padding="max_length", max_length=T5_LENGTH, truncation=True,
                           add_special_tokens=True, return_tensors="pt").input_ids
        return (*clip, t5)

    def encode_text(self, encoders: list[nn.Module], token_ids: tuple[torch.Tensor, ...]) -> Conditioning:
        """Shape: -> {"embeds": (B, 77 + 256, D_joint), "pooled": (B, P_L + P_G)}; without T5, D_joint is the
        CLIPs' width D_L + D_G (`denoise` pads it to the transformer's)"""
        hidden, pooled = [], []
        for ids, encoder in zip(token_ids[:2], encoders[:2], strict=True):
            output = encoder(ids.to(device_of(encoder)), output_hidden_states=True)
            hidden.append(output.hidden_states[-2])
            pooled.append(output[0])
        clip = torch.cat(hidden, dim=-1)
        if encoders[2] is None:  # the pipeline's zeros in T5's place (its _get_t5_prompt_embeds)
            t5 = clip.new_zeros(clip.shape[0], T5_LENGTH, clip.shape[-1])
        else:
            t5 = encoders[2](token_ids[2].to(device_of(encoders[2])))[0]
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))  # as the pipeline: zeros up to T5's width
        return Conditioning({"embeds": torch.cat([clip, t5.to(clip.dtype)], dim=-2),
                             "pooled": torch.cat(pooled, dim=-1)})

    def lora_state_dict(self, component: str, peft_state: dict) -> dict:
        """peft's names as they are, as diffusers' train_dreambooth_lora_sd3.py saves them (converting them
        gives a file that mixes peft's and the old diffusers names)."""
        return peft_state

    def stock_conditioning(self, pipeline, prompts: list[str]) -> Conditioning:
        embeds, _, pooled, _ = pipeline.encode_prompt(prompts, None, None, device="cpu", num_images_per_prompt=1,
                                                      do_classifier_free_guidance=False,
                                                      max_sequence_length=T5_LENGTH)
        return Conditioning({"embeds": embeds, "pooled": pooled})

    def pipeline_text_inputs(self, pipeline, prompts: list[str], guidance_scale: float,
                             device: torch.device) -> dict:
        # __call__'s own arguments: max_sequence_length 256 (T5_LENGTH), guidance when the scale is above 1.
        embeds, negative, pooled, negative_pooled = pipeline.encode_prompt(
            prompts, None, None, device=device, num_images_per_prompt=1,
            do_classifier_free_guidance=guidance_scale > 1, max_sequence_length=T5_LENGTH)
        return without_none(prompt_embeds=embeds, negative_prompt_embeds=negative, pooled_prompt_embeds=pooled,
                            negative_pooled_prompt_embeds=negative_pooled)

    def denoise(self, denoiser: nn.Module, x_t: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning,
                encoders: list[nn.Module] | None = None,
                micro: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The velocity v̂ at time 1000σ, and the joint text embedding. Shape: x_t (B, C, h, w), timesteps (B,)
        -> (B, C, h, w), (B, 77 + 256, D_joint)"""
        if conditioning.token_ids:
            conditioning = self.encode_text(encoders, conditioning.token_ids)
        embeds = conditioning.embeds["embeds"]
        embeds = F.pad(embeds, (0, denoiser.config.joint_attention_dim - embeds.shape[-1]))  # no T5: see above
        action = denoiser(hidden_states=x_t, timestep=timesteps, encoder_hidden_states=embeds,
                          pooled_projections=conditioning.embeds["pooled"], return_dict=False)[0]
        return action, embeds

    def pipeline(self, parts: StableDiffusion3Parts) -> StableDiffusion3Pipeline:
        return StableDiffusion3Pipeline(
            transformer=parts.transformer, scheduler=parts.scheduler, vae=parts.vae,
            text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, text_encoder_2=parts.text_encoder_2,
            tokenizer_2=parts.tokenizer_2, text_encoder_3=parts.text_encoder_3, tokenizer_3=parts.tokenizer_3)

    def parts_from_pipeline(self, pipeline, source: str) -> StableDiffusion3Parts:
        return StableDiffusion3Parts(
            transformer=pipeline.transformer, vae=pipeline.vae, text_encoder=pipeline.text_encoder,
            text_encoder_2=pipeline.text_encoder_2, text_encoder_3=pipeline.text_encoder_3,
            tokenizer=pipeline.tokenizer, tokenizer_2=pipeline.tokenizer_2, tokenizer_3=pipeline.tokenizer_3,
            scheduler=pipeline.scheduler, source=source, family_name=self.name)


families.register(StableDiffusion3.name)(StableDiffusion3())
