"""The flow families' built-ins, offline and in code: `toy-flow` (the toy world's shipped SD3-architecture base
model, rewardbooth.experiments.toyworld.pretrain_flow), `tiny-sd3`, `tiny-flux` and `tiny-zimage` (the configs of
diffusers' own StableDiffusion3Pipeline / FluxPipeline / ZImagePipeline fast tests, with an in-memory byte-level
CLIPTokenizer, `ByT5Tokenizer()` in the T5 slot, and an in-memory byte-level Qwen2Tokenizer with Qwen3's chat template). Every component is built in eval mode and T5 with dropout 0: modules built in code start in
train mode, and a reloaded pipeline would otherwise draw other images than the one that saved it."""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    ZImageTransformer2DModel,
)
from tokenizers import AddedToken
from torch import nn
from transformers import (
    ByT5Tokenizer,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    Qwen2Tokenizer,
    Qwen3Config,
    Qwen3Model,
    T5Config,
    T5EncoderModel,
)

from rewardbooth.core.config import ModelConfig
from rewardbooth.models.flux import Flux, FluxParts
from rewardbooth.models.loaders import loaders
from rewardbooth.models.sd3 import StableDiffusion3, StableDiffusion3Parts
from rewardbooth.models.tokenizers import bytes_to_unicode, make_character_tokenizer
from rewardbooth.models.zimage import TEXT_LENGTH, ZImage, ZImageParts

# VAE factor 4 (three levels): a 64 px image is a 4x16x16 latent, 2x2-patched into 64 tokens.
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                layers_per_block=1, norm_num_groups=8, sample_size=64, use_quant_conv=False,
                use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)  # SD3's VAE: shift, scale
FLUX_DEV_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                          max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)  # FLUX.1-dev's config
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


@loaders.register("toy-flow")
def load_toy_flow(config: ModelConfig) -> StableDiffusion3Parts:
    """The toy world's base model as a rectified-flow transformer (32 px, 3.5 M MMDiT), shipped with the package."""
    from rewardbooth.models.loaders import load_diffusers
    from rewardbooth.toyworld.assets import BASE_FLOW_MODEL_DIR, require

    folder = require(BASE_FLOW_MODEL_DIR, "model_index.json", "rewardbooth.experiments.toyworld.pretrain_flow")
    return load_diffusers(dataclasses.replace(config, pretrained=str(folder)))


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
    with torch.device("cpu"):
        scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER)
    return FluxParts(**modules, tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler=scheduler,
                     source="tiny-flux", family_name=Flux.name)


# Qwen3's chat template, as far as ZImagePipeline.encode_prompt uses it (a user turn, the assistant's opening;
# enable_thinking=False would add an empty think block).
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}")


def make_qwen_tokenizer() -> Qwen2Tokenizer:
    """A byte-level Qwen2Tokenizer with no merges (every byte a token) and Qwen's special tokens."""
    vocab = {symbol: index for index, symbol in enumerate(bytes_to_unicode().values())}
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        vocab[special] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], chat_template=QWEN3_CHAT_TEMPLATE,
                               model_max_length=TEXT_LENGTH)
    tokenizer.add_tokens([AddedToken(special, special=True) for special in ("<|im_start|>", "<|im_end|>")])
    return tokenizer


@loaders.register("tiny-zimage")
def load_tiny_zimage(config: ModelConfig, seed: int = 0) -> ZImageParts:
    """Z-Image's wiring (single-stream DiT with noise and context refiners, Qwen3 text encoder, rectified flow
    with shift 3) at a tiny size: a 64 px image is a 4x16x16 latent, 64 patches."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = make_qwen_tokenizer()
        transformer = ZImageTransformer2DModel(
            all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32, n_layers=2, n_refiner_layers=1,
            n_heads=2, n_kv_heads=2, cap_feat_dim=TEXT_WIDTH // 2, axes_dims=[8, 4, 4], axes_lens=[1024, 64, 64])
        text_encoder = Qwen3Model(Qwen3Config(
            vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH // 2, intermediate_size=TEXT_WIDTH, head_dim=8,
            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=TEXT_LENGTH,
            pad_token_id=tokenizer.pad_token_id))
        vae = AutoencoderKL(**{**TINY_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159})  # FLUX.1's VAE
        modules = dict(transformer=transformer, vae=vae, text_encoder=text_encoder)
    for module in modules.values():
        module.eval()
    with torch.device("cpu"):  # Z-Image's scheduler config
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return ZImageParts(**modules, tokenizer=tokenizer, scheduler=scheduler, source="tiny-zimage",
                       family_name=ZImage.name)


# Real-size architectures with random weights, for `rewardbooth bench step` (a random model times and fills
# memory exactly like a trained one). T5-XXL (4.7 B) sits in both; tokenizers stay the in-memory ones (the
# sequence lengths, not the vocabularies, set the cost).
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", dropout_rate=0.0)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              projection_dim=768, hidden_act="quick_gelu")
CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              projection_dim=1280, hidden_act="gelu")
VAE_16 = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
              layers_per_block=2, sample_size=1024, use_quant_conv=False, use_post_quant_conv=False)


def _real_size() -> contextlib.AbstractContextManager:
    """Where a real-size model is built: as asked (e.g. on "meta" to read its sizes), else on the GPU in bf16
    when there is one (FLUX's 12 B transformer and T5-XXL take 68 GB in fp32, 34 GB in bf16), else here."""
    if torch.get_default_device().type != "cpu" or not torch.cuda.is_available():
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.device("cuda"))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    stack.callback(torch.set_default_dtype, previous)
    return stack


def _real_clip(tokenizer, sizes: dict, model_class: type) -> nn.Module:
    return model_class(CLIPTextConfig(vocab_size=max(len(tokenizer), 49408), max_position_embeddings=77,
                                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id, **sizes))


def _real_t5(tokenizer: ByT5Tokenizer) -> T5EncoderModel:
    return T5EncoderModel(T5Config(**T5_XXL, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id))


@loaders.register("flux-random")
def load_flux_random(config: ModelConfig) -> FluxParts:
    """FLUX.1-dev's architecture (11.9 B MMDiT: 19 double-stream + 38 single-stream blocks, CLIP-L + T5-XXL,
    16-channel VAE), random weights."""
    with torch.random.fork_rng(devices=[]), _real_size():
        torch.manual_seed(0)
        tokenizer, tokenizer_2 = make_character_tokenizer(), ByT5Tokenizer()
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
            axes_dims_rope=(16, 56, 56))
        modules = dict(transformer=transformer, vae=AutoencoderKL(**VAE_16, scaling_factor=0.3611, shift_factor=0.1159),
                       text_encoder=_real_clip(tokenizer, CLIP_L, CLIPTextModel), text_encoder_2=_real_t5(tokenizer_2))
    for module in modules.values():
        module.eval()
    with torch.device("cpu"):
        scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER)
    return FluxParts(**modules, tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler=scheduler,
                     source="flux-random", family_name=Flux.name)


@loaders.register("sd35m-random")
def load_sd35m_random(config: ModelConfig) -> StableDiffusion3Parts:
    """SD3.5-medium's architecture (2.5 B MMDiT-X: 24 blocks, dual attention in the first 13, QK RMS norm;
    CLIP-L + CLIP-G + T5-XXL; 16-channel VAE), random weights."""
    with torch.random.fork_rng(devices=[]), _real_size():
        torch.manual_seed(0)
        tokenizer, tokenizer_2, tokenizer_3 = make_character_tokenizer(), make_character_tokenizer(), ByT5Tokenizer()
        transformer = SD3Transformer2DModel(
            sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
            num_attention_heads=24, caption_projection_dim=1536, joint_attention_dim=4096,
            pooled_projection_dim=2048, pos_embed_max_size=384, dual_attention_layers=tuple(range(13)),
            qk_norm="rms_norm")
        modules = dict(transformer=transformer, vae=AutoencoderKL(**VAE_16, scaling_factor=1.5305, shift_factor=0.0609),
                       text_encoder=_real_clip(tokenizer, CLIP_L, CLIPTextModelWithProjection),
                       text_encoder_2=_real_clip(tokenizer_2, CLIP_G, CLIPTextModelWithProjection),
                       text_encoder_3=_real_t5(tokenizer_3))
    for module in modules.values():
        module.eval()
    with torch.device("cpu"):
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return StableDiffusion3Parts(**modules, tokenizer=tokenizer, tokenizer_2=tokenizer_2, tokenizer_3=tokenizer_3,
                                 scheduler=scheduler, source="sd35m-random", family_name=StableDiffusion3.name)
