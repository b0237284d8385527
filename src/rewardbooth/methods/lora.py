"""LoRA (Hu et al. 2022) through peft: low-rank adapters on the UNet's attention projections (optionally on
the text encoder's, both of SDXL's), everything else frozen. Which layers get adapters is the model family's
choice (`family.lora_targets`) unless `method.lora.denoiser_modules` / `text_encoder_modules` name them. Saved as
`pytorch_lora_weights.safetensors`, the file stock diffusers loads with `pipeline.load_lora_weights(folder)`
(SD and SDXL pipelines alike).
"""

from __future__ import annotations

from pathlib import Path

from diffusers import DiffusionPipeline
from torch import nn

from rewardbooth.core.config import Config, LoRAConfig
from rewardbooth.methods.base import check_text_encoder_training, methods
from rewardbooth.models import ModelParts

WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def lora_config(config: LoRAConfig, target_modules: tuple[str, ...]):
    from peft import LoraConfig

    # "gaussian" draws A from N(0, 1/r) and sets B = 0: training starts exactly at the base model.
    return LoraConfig(r=config.rank, lora_alpha=config.alpha or config.rank,
                      init_lora_weights="gaussian", target_modules=list(target_modules))


def target_modules(parts: ModelParts, config: LoRAConfig, component: str) -> tuple[str, ...]:
    """The layers of `component` ("denoiser", or a text encoder's pipeline name) that get adapters: the
    config's, else the family's for that very component (CLIP's names are not T5's)."""
    chosen = config.denoiser_modules if component == "denoiser" else config.text_encoder_modules
    return tuple(chosen) if chosen is not None else tuple(parts.family.lora_targets[component])


def trained_text_encoders(parts: ModelParts) -> dict:
    """The text encoders `method.train_text_encoder` trains: the family's choice (never SD3's or FLUX's T5)."""
    return {name: encoder for name, encoder in parts.named_text_encoders.items()
            if name in parts.family.trainable_text_encoders}


@methods.register("lora")
class LoRA:
    """Adapters only: the optimizer sees the LoRA A/B matrices and nothing else."""

    adapters_only = True

    def __init__(self, parts: ModelParts, full_config: Config):
        from peft import inject_adapter_in_model

        config = full_config.method
        check_text_encoder_training(parts, full_config)
        for module in (parts.vae, parts.denoiser, *parts.text_encoders):
            module.requires_grad_(False)
        self.denoiser_config = lora_config(config.lora, target_modules(parts, config.lora, "denoiser"))
        parts.denoiser.add_adapter(self.denoiser_config)  # diffusers' peft integration
        self.trainable: dict[str, nn.Module] = {parts.denoiser_name: parts.denoiser}
        self.text_encoder_configs = {}
        if config.train_text_encoder:
            for name, encoder in trained_text_encoders(parts).items():
                # peft directly: transformers' own add_adapter demands a newer peft than this stack resolves.
                self.text_encoder_configs[name] = lora_config(config.lora, target_modules(parts, config.lora, name))
                inject_adapter_in_model(self.text_encoder_configs[name], encoder)
                self.trainable[name] = encoder

    def save(self, parts: ModelParts, output_dir: Path) -> None:
        """`pytorch_lora_weights.safetensors` with the adapter configs (rank, alpha) in its metadata, so that
        `load_lora_weights` rebuilds the very same scaling."""
        from peft.utils import get_peft_model_state_dict

        name = parts.denoiser_name  # save_lora_weights takes unet_lora_layers, transformer_lora_layers, ...
        family = parts.family  # it knows the names its pipeline's loader reads
        layers = {f"{name}_lora_layers": family.lora_state_dict(name, get_peft_model_state_dict(parts.denoiser)),
                  f"{name}_lora_adapter_metadata": self.denoiser_config.to_dict()}
        for name, encoder_config in self.text_encoder_configs.items():
            encoder = parts.named_text_encoders[name]
            layers[f"{name}_lora_layers"] = family.lora_state_dict(name, get_peft_model_state_dict(encoder))
            layers[f"{name}_lora_adapter_metadata"] = encoder_config.to_dict()
        parts.pipeline_class.save_lora_weights(output_dir, weight_name=WEIGHT_NAME, **layers)

    @staticmethod
    def load_result(pipeline: DiffusionPipeline, output_dir: Path) -> DiffusionPipeline:
        pipeline.load_lora_weights(str(output_dir), weight_name=WEIGHT_NAME)
        return pipeline
