"""Fully sharded training (accelerate's FSDP, examples/accelerate/fsdp-*.yaml): what changes when the denoiser is
sharded across processes instead of replicated on each.

A 12 B FLUX transformer trained whole (method.name=dreambooth) does not fit one GPU: FSDP splits its weights,
gradients and AdamW moments across the processes and gathers one transformer block at a time for its forward
and backward. Three things a replicated (DDP) run takes for granted stop holding, and each is handled here:

- The critic stays out of FSDP. accelerate's transformer-based auto-wrap refuses a model that holds none of the
  listed block classes ("Could not find the transformer layer class ... in the model"), and a few-MB network
  gains nothing from sharding: every process keeps a whole copy, and its gradients are averaged by hand
  (`average_gradients`) once per optimizer step, where DDP would have all-reduced them.
- A sharded forward needs every process, so anything only the main process runs on the denoiser (validation
  samples, the keep-best copy) cannot run; `check_sharded_run` refuses those settings before anything is written.
- The saved result must be the whole model: `gathered_parts` collects the full state dict on the main process
  (accelerate's `get_state_dict`, a collective every process joins) into an unsharded copy of the denoiser,
  which the method saves as a stock pipeline folder.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace

from accelerate import Accelerator, init_empty_weights
from accelerate.utils import DistributedType
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from rewardbooth.core.config import Config
from rewardbooth.core.errors import UserError
from rewardbooth.models import ModelParts

logger = logging.getLogger(__name__)

SHARDED_METHODS = ("dreambooth",)  # adapters (lora, custom_diffusion) fit one GPU beside a bf16 base: no need


def is_sharded(accelerator: Accelerator) -> bool:
    """Whether accelerate shards the prepared models (an FSDP launch config on GPUs)."""
    return accelerator.distributed_type == DistributedType.FSDP


def check_sharded_run(config: Config) -> None:
    """Refuse, in one line and before anything is written, what a sharded run cannot do."""
    method, validation = config.method, config.validation
    if method.name not in SHARDED_METHODS:
        raise UserError(f"the FSDP launch config shards full fine-tunes (method.name=dreambooth), not "
                        f"method.name={method.name}, whose adapters fit one GPU: launch without the FSDP config")
    if method.train_text_encoder:
        # accelerate's transformer-based auto-wrap needs every listed block class in every prepared model.
        raise UserError("method.train_text_encoder=true cannot run under the FSDP launch config (the text encoder "
                        "holds none of the transformer block classes it wraps): set method.train_text_encoder=false")
    if validation.every:
        raise UserError("validation.every>0 cannot run under the FSDP launch config (validation samples on the "
                        "main process alone, and a sharded transformer needs every process for each step): set "
                        "validation.every=0 and sample the saved folder with `rewardbooth generate`")


def warn_if_fsdp_ignored(accelerator: Accelerator) -> None:
    """An FSDP launch config on CPU processes: accelerate 1.16 selects FSDP only for accelerator devices
    (AcceleratorState keeps MULTI_CPU), so the run is replicated (DDP), not sharded. Say so, once."""
    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if asked and not is_sharded(accelerator) and accelerator.is_main_process:
        logger.warning("the FSDP launch config is ignored by accelerate on %s processes (distributed type %s): "
                       "every process holds the whole model, as with DDP", accelerator.device.type,
                       accelerator.distributed_type)


def average_gradients(accelerator: Accelerator, module: nn.Module) -> None:
    """Replace each gradient of an unsharded, unwrapped module by its mean over processes, in one all-reduce
    (what DDP does for a prepared critic)."""
    if accelerator.num_processes == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = accelerator.reduce(_flatten_dense_tensors(grads), "mean")
    for grad, averaged in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
        grad.copy_(averaged)


def gathered_parts(accelerator: Accelerator, parts: ModelParts, denoiser: nn.Module) -> ModelParts | None:
    """The parts to save: under FSDP, every process joins the gather of the sharded denoiser and the main process
    gets the parts with a whole, unsharded copy of it (None on the others); otherwise `parts` as they are.

    The copy is built on the meta device and takes the gathered tensors as its own (no second allocation of a
    12 B model); its class is the denoiser's own diffusers class, so the pipeline folder loads in stock diffusers.
    """
    if not is_sharded(accelerator):
        return parts
    state = accelerator.get_state_dict(denoiser)  # a collective: the main process gets the full state dict
    if not accelerator.is_main_process:
        return None
    original = parts.denoiser
    with init_empty_weights():
        whole = stock_class(original).from_config(original.config)
    whole.load_state_dict(state, strict=True, assign=True)
    return replace(parts, **{parts.denoiser_name: whole.eval()})


def stock_class(module: nn.Module) -> type:
    """The diffusers class of a (possibly FSDP2-sharded) module: fully_shard swaps the instance's class for a
    generated `FSDP<Name>` subclass of it, which a pipeline folder must not name."""
    from torch.distributed.fsdp import FSDPModule

    cls = type(module)
    return next(base for base in cls.__mro__ if not issubclass(base, FSDPModule)) if issubclass(cls, FSDPModule) else cls
