"""Frozen text encoders: every prompt the run will encode is encoded once at setup, then the encoders leave the
accelerator (`train.offload_text_encoders`).

A run encodes prompts in two places: the training batches (instance and class prompts, GRPO's rollouts:
`conditioning_of_prompts` in rewardbooth.models.families) and the validation samples (the validation prompts
and, with classifier-free guidance, the empty prompt). Both are computed here before the encoders move, the
validation's by the stock pipeline's own `encode_prompt` on exactly the batches validation draws, so the
samples are bitwise those a pipeline given the prompts would draw. The encoders stay in host memory: the final
save (a whole pipeline folder for dreambooth) writes them from there.
"""

from __future__ import annotations

import logging

import torch

from rewardbooth.core.config import Config
from rewardbooth.core.errors import UserError
from rewardbooth.data.concepts import concepts_of
from rewardbooth.methods import methods
from rewardbooth.models import ModelParts
from rewardbooth.models.families import move_inputs
from rewardbooth.training.monitoring import sampling_settings, validation_jobs, validation_prompts

logger = logging.getLogger(__name__)

PromptInputs = dict[tuple[str, ...], dict]  # a sampling batch's prompts -> the pipeline's embedding arguments


@torch.no_grad()
def encode_validation_prompts(parts: ModelParts, config: Config, device: torch.device,
                              autocast_dtype: torch.dtype | None) -> PromptInputs:
    """Each validation batch's embedding arguments (on the CPU), computed as `render_samples` would compute
    them from its prompts: on `device`, under the same autocast, one batch at a time."""
    prompts = validation_prompts(config.validation, [c.instance_prompt for c in concepts_of(config.data)])
    _, guidance = sampling_settings(parts, config.validation)
    pipeline = parts.pipeline().to(device)
    inputs: PromptInputs = {}
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        for batch in validation_jobs(prompts, config.validation):
            batch_prompts = [prompt for prompt, _ in batch]
            encoded = parts.family.pipeline_text_inputs(pipeline, batch_prompts, guidance, device)
            inputs[tuple(batch_prompts)] = move_inputs(encoded, "cpu")
    return inputs


def check_offload(config: Config) -> None:
    """'free' only where the result needs no text encoder weights (an adapter method), before any slow work."""
    method = config.method.name
    if config.train.offload_text_encoders == "free" and not getattr(methods.get(method), "adapters_only", False):
        raise UserError(f"train.offload_text_encoders=free drops the text encoders, but method.name={method} saves "
                        f"them in its result; use train.offload_text_encoders=cpu (or method.name=lora)")


def release_text_encoders(parts: ModelParts, mode: str) -> None:
    """Move the frozen text encoders off the accelerator ('cpu'), drop their weights ('free': the modules
    stay, on the meta device, holding no memory), or leave them ('none')."""
    if mode == "none":
        return
    for encoder in parts.text_encoders:
        encoder.to("cpu" if mode == "cpu" else "meta")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # hand the freed blocks back, for the caching allocator keeps them otherwise
    logger.info("every prompt is encoded: text encoders %s (train.offload_text_encoders=%s)",
                "moved to the CPU" if mode == "cpu" else "dropped", mode)
