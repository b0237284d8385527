"""A quantized frozen denoiser under LoRA (QLoRA, Dettmers et al. 2023): `model.quantize` stores the base
transformer / UNet in 4 or 8 bits, quantized at load through diffusers' own `quantization_config=`, and peft's
adapters train in fp32 on top of it. The backends, chosen by what runs where:

- `nf4`: bitsandbytes' 4-bit NormalFloat with double quantization and the run's compute dtype, the recipe of
  QLoRA and of diffusers' FLUX QLoRA example (research_projects/flux_lora_quantization). CUDA only: diffusers'
  bitsandbytes quantizer refuses a machine without a GPU.
- `int8`, `fp8`: torchao's weight-only `Int8WeightOnlyConfig` / `Float8WeightOnlyConfig` (8-bit weights, one
  scale per output channel, dequantized in each matmul). They run on a CPU too, which is how the tests train
  tiny-flux on a quantized base.

Only the denoiser is quantized: it holds nearly all the weights (FLUX.1: 11.9 B of 16.9 B; T5 runs once at setup
and is offloaded, `train.offload_text_encoders`), and the VAE may carry a gradient into an image reward. The
adapters wrap the same module names as over the unquantized model, so the saved LoRA is the same file and
applies to the unquantized base (docs/presets.md).
"""

from __future__ import annotations

import importlib.util
import tempfile
from dataclasses import replace

import torch

from rewardbooth.core.errors import UserError
from rewardbooth.models.parts import ModelParts

BACKENDS = {"nf4": "bitsandbytes", "int8": "torchao", "fp8": "torchao"}
BITS = {"nf4": 4, "int8": 8, "fp8": 8}


def check_quantize(quantize: str, method: str, adapters_only: bool, cuda: bool) -> None:
    """Refuse, before anything loads, a quantized base under a method that trains the base's own weights, a
    CUDA-only backend without CUDA, and a backend that is not installed."""
    if quantize == "none":
        return
    if not adapters_only:
        raise UserError(f"model.quantize={quantize} freezes the denoiser in {BITS[quantize]} bits, but "
                        f"method.name={method} trains its weights; use method.name=lora (or model.quantize=none)")
    if quantize == "nf4" and not cuda:
        raise UserError("model.quantize=nf4 (bitsandbytes 4-bit) needs a CUDA GPU; without one use "
                        "model.quantize=int8 or model.quantize=fp8 (torchao)")
    package = BACKENDS[quantize]
    if importlib.util.find_spec(package) is None:
        raise UserError(f"model.quantize={quantize} needs the {package} package, which is not installed: "
                        f"pip install 'rewardbooth[quantize]' (or set model.quantize=none)")


def quantization_config(quantize: str, compute_dtype: torch.dtype):
    """diffusers' quantization config of one model for `quantize` ('nf4', 'int8', 'fp8')."""
    if quantize == "nf4":
        from diffusers import BitsAndBytesConfig

        # QLoRA's storage: NF4 with the quantization constants quantized too (~0.4 bit per weight saved).
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    from diffusers import TorchAoConfig
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

    return TorchAoConfig(Int8WeightOnlyConfig() if quantize == "int8" else Float8WeightOnlyConfig())


def pipeline_options(quantize: str, denoiser_name: str, compute_dtype: torch.dtype) -> dict:
    """`DiffusionPipeline.from_pretrained` keywords that quantize the denoiser alone as it loads. Its layers left
    unquantized (norms, embedders) load in the compute dtype (torchao would pick bf16 for them otherwise); the
    other components load in fp32 as without quantization."""
    from diffusers import PipelineQuantizationConfig

    config = PipelineQuantizationConfig(quant_mapping={denoiser_name: quantization_config(quantize, compute_dtype)})
    return {"quantization_config": config, "torch_dtype": {denoiser_name: compute_dtype, "default": torch.float32}}


def quantize_denoiser(parts: ModelParts, quantize: str, compute_dtype: torch.dtype) -> ModelParts:
    """The parts with their in-memory denoiser (a built-in's, a user factory's) quantized the way a diffusers
    folder's is: saved to a temporary folder and read back by `from_pretrained(quantization_config=...)`."""
    denoiser = parts.denoiser
    with tempfile.TemporaryDirectory(prefix="rewardbooth-quantize-") as folder:
        denoiser.save_pretrained(folder)
        quantized = type(denoiser).from_pretrained(
            folder, quantization_config=quantization_config(quantize, compute_dtype), torch_dtype=compute_dtype)
    quantized.eval()  # as every loaded model is; from_pretrained does, a built model is set by its builder
    return replace(parts, **{parts.denoiser_name: quantized})


def is_quantized(module: torch.nn.Module) -> bool:
    """Whether diffusers loaded `module` quantized (its `.to(dtype)` is then refused or meaningless)."""
    return bool(getattr(module, "is_quantized", False))


def keep_trained_state_only(module: torch.nn.Module) -> None:
    """From now on `module.state_dict()` holds only the parameters that train now (the adapters), and loading
    a state dict expects only those: what a checkpoint (accelerate's `save_state` / `load_state`) must hold of
    a quantized base, whose frozen weights safetensors cannot write (torchao's tensor types) and which
    resuming reloads from the model anyway. Names are read once, here, after the method added its adapters."""
    trained = {name for name, parameter in module.named_parameters() if parameter.requires_grad}

    def drop_frozen(module, state_dict, prefix, local_metadata) -> None:
        for key in [key for key in state_dict if key.removeprefix(prefix) not in trained]:
            del state_dict[key]

    def forgive_frozen(module, incompatible_keys) -> None:
        incompatible_keys.missing_keys[:] = [key for key in incompatible_keys.missing_keys if key in trained]

    module.register_state_dict_post_hook(drop_frozen)
    module.register_load_state_dict_post_hook(forgive_frozen)
