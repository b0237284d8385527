"""Architectures built in code with random weights: `tiny`, `tiny-sdxl` and `tiny-sd3` for tests and smoke
runs, `sd15-random` and `sdxl-random` for timing.

Random weights of the SD-1.5 architecture time exactly like the real ones, so `bench step --model sd15-random`
gives real-scale step costs on a machine with no access to the weights.
"""

from __future__ import annotations

import dataclasses

import torch
from diffusers import AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from rewardbooth.core.config import ModelConfig
from rewardbooth.models.builtin_flow import load_tiny_sd3  # noqa: F401  (registers the flow families' built-ins)
from rewardbooth.models.loaders import loaders
from rewardbooth.models.stable_diffusion import StableDiffusion, StableDiffusionParts, StableDiffusionXL
from rewardbooth.models.tokenizers import make_character_tokenizer

# SD-1.x noise schedule ("scaled_linear", Rombach et al. 2022, configs/stable-diffusion/v1-inference.yaml).
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                   clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def _text_config(tokenizer: CLIPTokenizer, **sizes) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=77,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, **sizes)


def _build(unet_kwargs: dict, vae_kwargs: dict, text_sizes: dict, source: str, seed: int = 0,
           text_sizes_2: dict | None = None):
    """With `text_sizes_2`: an SDXL model (second text encoder with projection, Euler sampler as SDXL ships)."""
    # A fixed seed makes every process (and every resumed run) build bit-identical weights.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = make_character_tokenizer()
        unet = UNet2DConditionModel(**unet_kwargs)
        vae = AutoencoderKL(**vae_kwargs)
        text_encoder = CLIPTextModel(_text_config(tokenizer, **text_sizes))
        second = {}
        if text_sizes_2 is not None:
            second = dict(text_encoder_2=CLIPTextModelWithProjection(_text_config(tokenizer, **text_sizes_2)),
                          tokenizer_2=make_character_tokenizer())
    with torch.device("cpu"):  # a scheduler's tables are data, even when the weights are built on "meta"
        if text_sizes_2 is not None:
            schedule = {k: v for k, v in SD_SCHEDULE.items() if k not in ("clip_sample", "set_alpha_to_one")}
            scheduler = EulerDiscreteScheduler(**schedule, timestep_spacing="leading")
        else:
            scheduler = DDIMScheduler(**SD_SCHEDULE)
    family = StableDiffusionXL.name if text_sizes_2 is not None else StableDiffusion.name
    return StableDiffusionParts(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                scheduler=scheduler, source=source, family_name=family, **second)


@loaders.register("tiny")
def load_tiny(config: ModelConfig) -> StableDiffusionParts:
    """~0.5 M parameters, VAE factor 4: a 64 px image is a 4x16x16 latent. Random weights, for tests."""
    unet = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    vae = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
               down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
               layers_per_block=1, norm_num_groups=8, sample_size=64)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    return _build(unet, vae, text, source="tiny")


@loaders.register("sd15-random")
def load_sd15_random(config: ModelConfig) -> StableDiffusionParts:
    """The Stable Diffusion 1.5 architecture (860 M UNet, ViT-L/14 text tower, f=8 VAE), random weights."""
    unet = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # the rest are SD-1.5 defaults
    vae = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
               layers_per_block=2, sample_size=512, scaling_factor=0.18215)
    text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                projection_dim=768, hidden_act="quick_gelu")
    return _build(unet, vae, text, source="sd15-random")


@loaders.register("tiny-sdxl")
def load_tiny_sdxl(config: ModelConfig) -> StableDiffusionParts:
    """The SDXL wiring at `tiny`'s size: two text encoders (32 + 32 = 64-dim context), the second's pooled
    projection and the six size/crop ids feed the UNet's added "text_time" embedding."""
    pooled, time_embedding = 32, 8
    unet = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
                attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8,
                addition_embed_type="text_time", addition_time_embed_dim=time_embedding,
                projection_class_embeddings_input_dim=6 * time_embedding + pooled)
    vae = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
               down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
               layers_per_block=1, norm_num_groups=8, sample_size=64, scaling_factor=0.13025)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    return _build(unet, vae, text, source="tiny-sdxl", text_sizes_2={**text, "projection_dim": pooled})


@loaders.register("sdxl-random")
def load_sdxl_random(config: ModelConfig) -> StableDiffusionParts:
    """SDXL 1.0 base's architecture (2.6 B UNet, CLIP ViT-L + OpenCLIP bigG text towers), random weights."""
    unet = dict(sample_size=128, block_out_channels=(320, 640, 1280),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816)
    vae = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
               layers_per_block=2, sample_size=1024, scaling_factor=0.13025)
    text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                projection_dim=768, hidden_act="quick_gelu")
    text_2 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                  projection_dim=1280, hidden_act="gelu")
    return _build(unet, vae, text, source="sdxl-random", text_sizes_2=text_2)


@loaders.register("toy")
def load_toy(config: ModelConfig) -> StableDiffusionParts:
    """The toy world's pretrained base model (32 px, 2.7 M UNet), shipped with the package."""
    from rewardbooth.models.loaders import load_diffusers
    from rewardbooth.toyworld.assets import BASE_MODEL_DIR, require

    folder = require(BASE_MODEL_DIR, "model_index.json", "rewardbooth.experiments.toyworld.pretrain")
    return load_diffusers(dataclasses.replace(config, pretrained=str(folder)))
