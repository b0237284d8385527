"""LoRA (Hu et al. 2022) through peft: low-rank adapters on the UNet's attention projections (optionally on
the text encoder's, both of SDXL's), everything else frozen. Which layers get adapters is the model family's
choice (`family.lora_targets`) unless `method.lora.denoiser_modules` / `text_encoder_modules` name them. Saved as
`pytorch_lora_weights.safetensors`, the file stock diffusers loads with `pipeline.load_lora_weights(folder)`
(SD and SDXL pipelines alike), and for SD, SDXL, SD3 and FLUX the same adapters in the kohya layout
(`pytorch_lora_weights_kohya.safetensors`, rewardbooth.models.kohya), the file ComfyUI and kohya-style loaders read.
"""

from __future__ import annotations

import logging
from pathlib import Path

from diffusers import DiffusionPipeline
from torch import nn

from rewardbooth.core.config import Config, LoRAConfig
from rewardbooth.methods.base import check_text_encoder_training, methods
from rewardbooth.models import ModelParts
from rewardbooth.models.kohya import KOHYA_WEIGHT_NAME, PORTABLE_FAMILIES, NotPortable, kohya_state_dict

logger = logging.getLogger(__name__)

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
        peft_states = {"denoiser": (get_peft_model_state_dict(parts.denoiser), self.denoiser_config.lora_alpha)}
        layers = {f"{name}_lora_layers": family.lora_state_dict(name, peft_states["denoiser"][0]),
                  f"{name}_lora_adapter_metadata": self.denoiser_config.to_dict()}
        for name, encoder_config in self.text_encoder_configs.items():
            peft_states[name] = (get_peft_model_state_dict(parts.named_text_encoders[name]), encoder_config.lora_alpha)
            layers[f"{name}_lora_layers"] = family.lora_state_dict(name, peft_states[name][0])
            layers[f"{name}_lora_adapter_metadata"] = encoder_config.to_dict()
        parts.pipeline_class.save_lora_weights(output_dir, weight_name=WEIGHT_NAME, **layers)
        save_kohya(parts, peft_states, output_dir)

    @staticmethod
    def load_result(pipeline: DiffusionPipeline, output_dir: Path) -> DiffusionPipeline:
        pipeline.load_lora_weights(str(output_dir), weight_name=WEIGHT_NAME)
        return pipeline

    @staticmethod
    def loading_code(base: str, result_dir: Path) -> str:
        kohya = (f"\n# ComfyUI (its loras folder) and kohya-style loaders: {KOHYA_WEIGHT_NAME} is the same LoRA"
                 if (result_dir / KOHYA_WEIGHT_NAME).is_file() else "")
        return (f"pipeline = DiffusionPipeline.from_pretrained({base!r})\n"
                f"pipeline.load_lora_weights(here, weight_name={WEIGHT_NAME!r}){kohya}")


def save_kohya(parts: ModelParts, peft_states: dict[str, tuple[dict, float]], output_dir: Path) -> None:
    """The kohya-layout copy, for the families that have one; adapters it has no name for (custom targets
    outside the original checkpoint's layout) leave it out with one warning, the diffusers file stays whole."""
    from safetensors.torch import save_file

    if parts.family.name not in PORTABLE_FAMILIES:
        return
    try:
        state = kohya_state_dict(parts.family.name, peft_states, parts.denoiser)
    except NotPortable as error:
        logger.warning("no %s written (for ComfyUI / kohya loaders): %s; %s holds the whole LoRA",
                       KOHYA_WEIGHT_NAME, error, WEIGHT_NAME)
        return
    save_file(state, str(output_dir / KOHYA_WEIGHT_NAME), metadata={"format": "pt"})
