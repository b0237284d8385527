"""Z-Image (Tongyi-MAI 2025; base and Turbo): a single-stream rectified-flow DiT conditioned by one LLM
(Qwen3), exactly as diffusers' ZImagePipeline conditions it.

- Text: each prompt wrapped in Qwen3's chat template (a user turn and the assistant's opening), padded to
  512 tokens; the encoder's second-to-last hidden states at the real tokens only. The pipeline hands the
  transformer a list of variable-length embeddings; here a batch is the padded (B, 512, D) embedding with
  zeros at the padding and its (B, 512) mask, and `denoise` cuts each row back to its real tokens.
  The tokenizer's attention mask travels inside the ids: padding positions are -1 (the `Family.tokenize`
  contract is one id tensor per tokenizer), and `encode_text` reads the mask back from them.
- Time: Lumina2's convention. The transformer takes t = 1 − σ (0 is noise, 1 the image) and predicts the
  velocity towards the image, x0 − ε = −v: `denoise` feeds (1000 − 1000σ) / 1000 and negates the output, as
  the pipeline does, so the process, critic and rewards see the same v = ε − x0 as for SD3 and FLUX.
- Latents: (z − shift) · scale from the VAE config (FLUX.1's VAE); 2x2 patches are made inside the transformer,
  which takes a list of (C, 1, h, w) frames.
- σ in training: logit-normal with the scheduler's static shift (Z-Image's config: 3), as SD3's script draws
  it (diffusers ships no Z-Image training script). Sampling defaults are the pipeline's (50 steps, guidance 5);
  Turbo is distilled for 8-9 steps at guidance 0, which users set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from diffusers import AutoencoderKL, ZImagePipeline, ZImageTransformer2DModel
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

TEXT_LENGTH = 512  # ZImagePipeline's max_sequence_length default: training must see what sampling does
PADDING = -1  # the id that marks padding in `tokenize`'s ids (no real id is negative)


@dataclass
class ZImageParts(ModelParts):
    """The components of a Z-Image model: the transformer, the VAE, the Qwen3 text encoder and its tokenizer."""

    transformer: ZImageTransformer2DModel
    vae: AutoencoderKL
    text_encoder: nn.Module
    tokenizer: object
    scheduler: SchedulerMixin
    source: str
    family_name: str

    denoiser_name: ClassVar[str] = "transformer"

    @property
    def named_text_encoders(self) -> dict:
        return {"text_encoder": self.text_encoder}

    @property
    def tokenizers(self) -> list:
        return [self.tokenizer]


class ZImage:
    """Z-Image / Z-Image-Turbo: single-stream DiT, rectified flow fed 1 − σ with output −v, Qwen3 text."""

    name = "z-image"
    pipeline_class = ZImagePipeline
    pipeline_class_names = ("ZImagePipeline",)
    load_options: ClassVar[dict] = {}
    # The attention projections of every block (one stream: image and text tokens share them).
    lora_targets: ClassVar[dict] = {"denoiser": ("attention.to_q", "attention.to_k", "attention.to_v",
                                                 "attention.to_out.0")}
    trainable_text_encoders: ClassVar[tuple] = ()
    mixed_precisions: ClassVar[tuple] = ("no", "bf16")  # Z-Image ships and runs in bf16, as FLUX does
    sampling = SamplingDefaults(num_inference_steps=50, guidance_scale=5.0)  # the pipeline's own defaults

    def matches(self, pipeline_class_name: str) -> bool:
        return pipeline_class_name in self.pipeline_class_names

    training: TrainingOptions = NO_OPTIONS  # the user's (model.timestep_density, ...): `with_training`

    def with_training(self, parts: ZImageParts, options: TrainingOptions) -> ZImage:
        options.refuse(("guidance",), self.name, "has no guidance embedding (it samples with classifier-free guidance)")
        return with_training(self, options)

    def process(self, parts: ZImageParts) -> FlowProcess:
        # ZImagePipeline samples at σ = linspace(1, 1/S, S), shifted as its scheduler config says (grpo's rollouts).
        return FlowProcess.for_family(parts.scheduler.config, self.training, "logit_normal",
                                      linear_sampling_sigmas=True)

    def latent_space(self, parts: ZImageParts) -> LatentSpace:
        return LatentSpace.of(parts.vae)

    def latent_channels(self, parts: ZImageParts) -> int:
        return parts.transformer.config.in_channels

    def text_embedding_dim(self, parts: ZImageParts) -> int:
        return parts.transformer.config.cap_feat_dim

    def prediction_type(self, parts: ZImageParts) -> str:
        return "flow_prediction"

    def sampling_defaults(self, parts: ZImageParts) -> SamplingDefaults:
        return self.sampling

    def resolution_multiple(self, parts: ZImageParts) -> int:
        return parts.vae_scale_factor * parts.transformer.config.all_patch_size[0]

    def native_resolution(self, parts: ZImageParts) -> int:
        return parts.vae.config.sample_size  # the transformer has no sample size; its VAE says 1024

    def micro_conditioning(self, resolution: int) -> None:
        return None

    def tokenize(self, tokenizers: list, prompts: list[str]) -> tuple[torch.Tensor, ...]:
        """The pipeline's chat-templated, padded ids, with PADDING where its attention mask is 0.
        Shape: -> (B, 512)"""
        tokenizer = tokenizers[0]
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                               add_generation_prompt=True, enable_thinking=True) for prompt in prompts]
        tokens = tokenizer(texts, padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt")
        return (tokens.input_ids.masked_fill(tokens.attention_mask == 0, PADDING),)

    def encode_text(self, encoders: list[nn.Module], token_ids: tuple[torch.Tensor, ...]) -> Conditioning:
        """Second-to-last hidden states, zero at the padding. Shape: -> {"embeds": (B, 512, D), "mask": (B, 512)}"""
        encoder = encoders[0]
        ids = token_ids[0].to(device_of(encoder))
        mask = ids != PADDING
        # Right padding under a causal mask: what stands at the padding never reaches a real token.
        hidden = encoder(input_ids=ids.clamp(min=0), attention_mask=mask, output_hidden_states=True).hidden_states[-2]
        return Conditioning({"embeds": hidden * mask.unsqueeze(-1), "mask": mask.to(hidden.dtype)})

    def lora_state_dict(self, component: str, peft_state: dict) -> dict:
        return peft_state  # peft's names, which ZImagePipeline.load_lora_weights reads as they are

    def stock_conditioning(self, pipeline, prompts: list[str]) -> Conditioning:
        # encode_prompt rewrites the list it is given in place (the chat template): hand it a copy.
        rows, _ = pipeline.encode_prompt(list(prompts), device="cpu", do_classifier_free_guidance=False,
                                         max_sequence_length=TEXT_LENGTH)
        embeds = rows[0].new_zeros(len(rows), TEXT_LENGTH, rows[0].shape[-1])
        mask = rows[0].new_zeros(len(rows), TEXT_LENGTH)
        for index, row in enumerate(rows):
            embeds[index, :len(row)], mask[index, :len(row)] = row, 1
        return Conditioning({"embeds": embeds, "mask": mask})

    def pipeline_text_inputs(self, pipeline, prompts: list[str], guidance_scale: float,
                             device: torch.device) -> dict:
        # ZImagePipeline guides at any scale above 0, and takes one (L_i, D) tensor per prompt.
        embeds, negative = pipeline.encode_prompt(list(prompts), device=device,
                                                  do_classifier_free_guidance=guidance_scale > 0,
                                                  max_sequence_length=TEXT_LENGTH)
        return {"prompt_embeds": embeds, **({"negative_prompt_embeds": negative} if negative else {})}

    def denoise(self, denoiser: nn.Module, x_t: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning,
                encoders: list[nn.Module] | None = None,
                micro: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The velocity v̂ = −(the transformer's output at 1 − σ), and the padded text embedding.
        Shape: x_t (B, C, h, w), timesteps (B,) 1000σ -> (B, C, h, w), (B, 512, D)"""
        if conditioning.token_ids:
            conditioning = self.encode_text(encoders, conditioning.token_ids)
        embeds, mask = conditioning.embeds["embeds"], conditioning.embeds["mask"] > 0
        captions = [row[keep] for row, keep in zip(embeds, mask, strict=True)]
        frames = list(x_t.unsqueeze(2).unbind(dim=0))  # (C, 1, h, w) each: one frame per image
        time = (1000 - timesteps.float()) / 1000  # float32, as the pipeline feeds it
        outputs = denoiser(frames, time, captions, return_dict=False)[0]
        return -torch.stack(outputs).squeeze(2), embeds

    def pipeline(self, parts: ZImageParts) -> ZImagePipeline:
        return ZImagePipeline(scheduler=parts.scheduler, vae=parts.vae, text_encoder=parts.text_encoder,
                              tokenizer=parts.tokenizer, transformer=parts.transformer)

    def parts_from_pipeline(self, pipeline, source: str) -> ZImageParts:
        return ZImageParts(transformer=pipeline.transformer, vae=pipeline.vae, text_encoder=pipeline.text_encoder,
                           tokenizer=pipeline.tokenizer, scheduler=pipeline.scheduler, source=source,
                           family_name=self.name)


families.register(ZImage.name)(ZImage())
