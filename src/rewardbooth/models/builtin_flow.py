"""The flow families' built-ins, offline and in code: `tiny-sd3` and `tiny-flux` (the configs of diffusers'
own StableDiffusion3Pipeline / FluxPipeline fast tests, with an in-memory byte-level CLIPTokenizer and `ByT5Tokenizer()` in
the T5 slot). Every component is built in eval mode and T5 with dropout 0: modules built in code start in
train mode, and a reloaded pipeline would otherwise draw other images than the one that saved it."""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
)
from torch import nn
from transformers import (
    ByT5Tokenizer,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
)

from rewardbooth.core.config import ModelConfig
from rewardbooth.models.flux import Flux, FluxParts
from rewardbooth.models.loaders import loaders
from rewardbooth.models.sd3 import StableDiffusion3, StableDiffusion3Parts
from rewardbooth.models.tokenizers import make_character_tokenizer

# VAE factor 4 (three levels): a 64 px image is a 4x16x16 latent, 2x2-patched into 64 tokens.
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                layers_per_block=1, norm_num_groups=8, sample_size=64, use_quant_conv=False,
                use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)  # SD3's VAE: shift, scale
TEXT_WIDTH = 32  # T5's d_model = the transformer's joint attention width; the CLIPs are 16 + 16 = 32 wide


def _clip(tokenizer, width: int, model_class: type = CLIPTextModelWithProjection) -> nn.Module:
    return model_class(CLIPTextConfig(
        vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, hidden_size=width,
        intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=2, projection_dim=width))


def _t5(tokenizer: ByT5Tokenizer) -> T5EncoderModel:
    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=TEXT_WIDTH, d_kv=8, d_ff=37, num_layers=2,
                                   num_heads=4, dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id))


@loaders.register("tiny-sd3")
def load_tiny_sd3(config: ModelConfig, seed: int = 0) -> StableDiffusion3Parts:
    """~0.3 M parameters: SD3's wiring (MMDiT, CLIP-L/G + T5, rectified flow with shift 3), random weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # every process (and every resumed run) builds bit-identical weights
        tokenizer, tokenizer_2, tokenizer_3 = make_character_tokenizer(), make_character_tokenizer(), ByT5Tokenizer()
        transformer = SD3Transformer2DModel(
            sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
            num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=TEXT_WIDTH,
            pooled_projection_dim=TEXT_WIDTH, pos_embed_max_size=32)
        modules = dict(transformer=transformer, vae=AutoencoderKL(**TINY_VAE),
                       text_encoder=_clip(tokenizer, TEXT_WIDTH // 2), text_encoder_2=_clip(tokenizer_2, TEXT_WIDTH // 2),
                       text_encoder_3=_t5(tokenizer_3))
    for module in modules.values():
        module.eval()
    with torch.device("cpu"):
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)  # SD3's config
    return StableDiffusion3Parts(**modules, tokenizer=tokenizer, tokenizer_2=tokenizer_2, tokenizer_3=tokenizer_3,
                                 scheduler=scheduler, source="tiny-sd3", family_name=StableDiffusion3.name)


@loaders.register("tiny-flux")
def load_tiny_flux(config: ModelConfig, seed: int = 0) -> FluxParts:
    """FLUX.1-dev's wiring (packed MMDiT with guidance embedding, CLIP-L pooled + T5, rectified flow with
    dynamic shift at inference) at a tiny size: a 64 px image is a 4x16x16 latent, 64 packed tokens."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer, tokenizer_2 = make_character_tokenizer(), ByT5Tokenizer()
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=TEXT_WIDTH, pooled_projection_dim=TEXT_WIDTH,
            guidance_embeds=True, axes_dims_rope=(4, 4, 8))
        modules = dict(transformer=transformer, vae=AutoencoderKL(**TINY_VAE),
                       text_encoder=_clip(tokenizer, TEXT_WIDTH, CLIPTextModel), text_encoder_2=_t5(tokenizer_2))
    for module in modules.values():
        module.eval()
    with torch.device("cpu"):  # FLUX.1-dev's scheduler config
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                    base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                    max_image_seq_len=4096)
    return FluxParts(**modules, tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler=scheduler,
                     source="tiny-flux", family_name=Flux.name)
