"""The base-method registry and the interface its entries implement."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from diffusers import DiffusionPipeline
from torch import nn

from rewardbooth.core.config import Config
from rewardbooth.core.errors import UserError
from rewardbooth.core.registry import Registry
from rewardbooth.models import ModelParts

methods = Registry("base method")


class Method(Protocol):
    trainable: dict[str, nn.Module]
    """Component name ("unet", "text_encoder") -> module whose parameters the policy optimizer updates."""

    def save(self, parts: ModelParts, output_dir: Path) -> None:
        """Write the trained result into output_dir in a format stock diffusers loads."""

    @staticmethod
    def load_result(pipeline: DiffusionPipeline, output_dir: Path) -> DiffusionPipeline:
        """Apply a saved result to a pipeline of the base model, with stock diffusers calls."""

    @staticmethod
    def loading_code(base: str, result_dir: Path) -> str:
        """The same stock calls as Python source for the model card: with `DiffusionPipeline` imported, they
        build `pipeline` from the base model `base` and the result in the folder whose path the variable `here`
        holds (`result_dir` is that folder as saved, to name its files)."""


def make_method(parts: ModelParts, config: Config) -> Method:
    """Methods see the whole config: Custom Diffusion's new token is the data's identifier."""
    return methods.get(config.method.name)(parts, config)


def check_text_encoder_training(parts: ModelParts, config: Config) -> None:
    """`method.train_text_encoder` means the family's trainable encoders; a family with none refuses it."""
    if config.method.train_text_encoder and not parts.family.trainable_text_encoders:
        raise UserError(f"method.train_text_encoder=true is not supported for this {parts.family.name} model (its "
                        f"transformer trains; T5 never does): set method.train_text_encoder=false")


def after_step(method: Method) -> None:
    """The method's bookkeeping after each optimizer step, if it has any."""
    hook = getattr(method, "after_step", None)
    if hook is not None:
        hook()
