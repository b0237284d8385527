"""Everything a run needs before its first step, built in the order that fails early and writes nothing.

User input is checked (config values, subject photos, identifier, model, resolution) before any file is
written; then models are placed, optimizers built and everything stateful handed to accelerate.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import cast_training_params
from torch import nn

from rewardbooth.core.config import Config, check_values, flat_dict
from rewardbooth.core.errors import UserError
from rewardbooth.data.concepts import concepts_of
from rewardbooth.maths.dpg import critic_input_channels
from rewardbooth.methods import Method, make_method, methods
from rewardbooth.models import ModelParts, load_model
from rewardbooth.models.families import Process
from rewardbooth.models.parts import check_precision, check_resolution
from rewardbooth.models.quantization import check_quantize, is_quantized, keep_trained_state_only
from rewardbooth.rewards import (
    ByRowKind,
    Reward,
    RewardSetup,
    build_reward,
    differentiable_twin,
    reward_weights,
    rewards,
)
from rewardbooth.rewards.concepts import build_concept_reward
from rewardbooth.training.batches import TrainingData, image_decoder
from rewardbooth.training.critic import CriticSpec, check_critic, make_critic, make_critic_optimizer
from rewardbooth.training.frozen_text import (
    PromptInputs,
    check_offload,
    encode_validation_prompts,
    release_text_encoders,
)
from rewardbooth.training.objectives import (
    Objective,
    build_objective_component,
    gradient_free_names,
    needs_of,
    objectives,
)
from rewardbooth.training.prompt_only import check_prompt_only
from rewardbooth.training.sharding import check_sharded_run, is_sharded, warn_if_fsdp_ignored
from rewardbooth.training.subjects import build_training_data, load_subjects, run_buckets

logger = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class RunSetup:
    accelerator: Accelerator
    parts: ModelParts  # unwrapped modules; the UNet / text encoder here are the ones being trained
    method: Method
    data: TrainingData
    process: Process  # the family's forward process, on the accelerator's device
    denoiser: nn.Module  # the UNet, prepared (DDP-wrapped when distributed)
    text_encoders: list[nn.Module] | None  # prepared, when they train (SDXL: both)
    critic: nn.Module | None  # when the objective needs a critic (dpg): prepared, except under FSDP
    reward: Reward | None  # when the objective needs one
    objective: Objective
    diagnostic_reward: Reward | None  # the reward, if differentiable, or its twin: for critic diagnostics
    optimizer: torch.optim.Optimizer
    critic_optimizer: torch.optim.Optimizer | None
    lr_scheduler: object
    policy_parameters: list[nn.Parameter]
    autocast_dtype: torch.dtype | None
    effective_batch_size: int
    concept_images: list[torch.Tensor]  # per concept (N_k, 3, R, R) in [0, 1]: the photos, for image rewards
    micro_conditioning: torch.Tensor | None  # the family's extra ids (SDXL's (1, 6) size ids); None for SD
    validation_inputs: PromptInputs | None  # validation's text embeddings, when the encoders are frozen

    @property
    def stateful(self) -> dict[str, object]:
        """What a checkpoint saves besides accelerate's prepared models and optimizer, by file name."""
        extra = {"lr_schedule": self.lr_scheduler}
        if self.critic_optimizer is not None:
            extra["critic_optimizer"] = self.critic_optimizer
        if self.critic is not None and not self.critic_prepared:
            extra["critic"] = self.critic  # not prepared (FSDP), so not in accelerate's save_state
        return extra

    @property
    def critic_prepared(self) -> bool:
        """Whether accelerate prepared the critic (DDP-wrapped when distributed); under FSDP it did not."""
        return not is_sharded(self.accelerator)

    @property
    def trained_models(self) -> list[nn.Module]:
        critic = self.critic if self.critic_prepared else None  # an unprepared critic syncs by hand
        return [m for m in (self.denoiser, *(self.text_encoders or []), critic) if m is not None]

    def start_trackers(self, config: Config) -> None:
        flat = {key: value if isinstance(value, (int, float, str, bool)) else str(value)
                for key, value in flat_dict(config).items()}
        self.accelerator.init_trackers("rewardbooth", config=flat)


def make_accelerator(config: Config) -> Accelerator:
    report_to = config.train.report_to
    if report_to == "auto":
        report_to = "tensorboard" if importlib.util.find_spec("tensorboard") else "none"
    output_dir = Path(config.train.output_dir)
    # Launched as several processes (torchrun, `accelerate launch --multi_gpu`) on a machine without CUDA:
    # accelerate uses gloo on CPU only when told `cpu=True`, otherwise every process trains alone.
    cpu_processes = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return Accelerator(cpu=cpu_processes, mixed_precision=config.train.mixed_precision,
                       log_with=None if report_to == "none" else report_to,
                       project_config=ProjectConfiguration(project_dir=str(output_dir),
                                                           logging_dir=str(output_dir / "logs")))


def check_component_names(config: Config) -> None:
    """Resolve every registry name (importing dotted paths) before any slow work, so typos fail at once."""
    methods.get(config.method.name)
    name = config.objective.name
    needs = needs_of(objectives.get(name), name)  # an unknown objective fails here, naming the registered ones
    if needs.reward:
        for reward in reward_weights(config.objective.reward):
            factory = rewards.get(reward)  # an unknown name fails here, before any slow work
            # A reward class tells its differentiability before it is built.
            if needs.reward_gradient and getattr(factory, "differentiable", True) is False:
                raise not_differentiable(name, reward)
    if needs.critic:
        check_critic(config)
    check_prompt_only(config)
    for name in reward_weights(config.validation.reward) if config.validation.reward is not None else ():
        rewards.get(name)  # scored at the first validation, after the model and class images: check it now


def not_differentiable(objective: str, reward: object) -> UserError:
    return UserError(f"objective.name={objective} backpropagates the reward, but {reward!r} is not "
                     f"differentiable: use an objective that learns it from its values ({gradient_free_names()})")


def build_run(config: Config) -> RunSetup:
    check_values(config)
    check_component_names(config)
    check_offload(config)
    accelerator = make_accelerator(config)
    check_quantize(config.model.quantize, config.method.name,
                   getattr(methods.get(config.method.name), "adapters_only", False), accelerator.device.type == "cuda")
    sharded = is_sharded(accelerator)
    if sharded:
        check_sharded_run(config)
    warn_if_fsdp_ignored(accelerator)
    set_seed(config.train.seed)  # for user components that draw from the global generators
    subjects = load_subjects(config)  # photos, captions and identifiers checked before the model loads
    concept_images = [subject.squares(config.data) for subject in subjects]
    device, autocast_dtype = accelerator.device, AUTOCAST_DTYPES[config.train.mixed_precision]
    parts = load_model(config.model, compute_dtype=autocast_dtype)
    check_resolution(config.data.resolution, parts)
    run_buckets(config, parts)  # a bad data.aspect_buckets size fails before anything slow or written
    check_precision(config.train.mixed_precision, parts)
    method = make_method(parts, config)
    if is_quantized(parts.denoiser):
        keep_trained_state_only(parts.denoiser)  # checkpoints hold its adapters, not its quantized base
    train_text_encoder = any(name in method.trainable for name in parts.named_text_encoders)
    place_models(parts, method, device, autocast_dtype, train_text_encoder)

    trained_encoders = tuple(name for name in parts.named_text_encoders if name in method.trainable)
    data = build_training_data(config, parts, subjects, concept_images, trained_encoders, accelerator)
    validation_inputs = None
    if not trained_encoders:  # frozen: every prompt is encoded now (training data above, validation here)
        if config.validation.every:
            validation_inputs = encode_validation_prompts(parts, config, device, autocast_dtype)
        release_text_encoders(parts, config.train.offload_text_encoders)
    built = build_objective(config, parts, concept_images, device)

    if config.objective.decoder_checkpointing:
        parts.vae.enable_gradient_checkpointing()
    if config.train.gradient_checkpointing:
        parts.denoiser.enable_gradient_checkpointing()
        if train_text_encoder:
            for encoder in parts.text_encoders:
                encoder.gradient_checkpointing_enable()
    policy_parameters = [p for module in method.trainable.values() for p in module.parameters() if p.requires_grad]
    optimizer = make_policy_optimizer(policy_parameters, config)
    lr_scheduler = get_scheduler(config.train.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=config.train.lr_warmup_steps,
                                 num_training_steps=config.train.max_steps)

    # The LR schedule and the critic optimizer are stepped by hand once per optimizer step (accelerate would
    # step a prepared scheduler once per process); checkpoints save them as plain tensors (RunSetup.stateful),
    # not through accelerate's registration, whose pickles are loaded with weights_only=False.
    # Under FSDP the critic stays whole on every process (rewardbooth.training.sharding says why).
    critic = built.critic
    prepared_critic = critic is not None and not sharded
    modules = list(method.trainable.values()) + ([critic] if prepared_critic else [])
    prepared = accelerator.prepare(*modules, optimizer)
    *prepared_modules, optimizer = prepared
    named = dict(zip(list(method.trainable) + (["critic"] if prepared_critic else []), prepared_modules))
    if critic is not None and not prepared_critic:
        named["critic"] = critic
    # FSDP replaces the parameters it shards (DTensors): clip and step the prepared modules' own.
    policy_parameters = [p for name in method.trainable for p in named[name].parameters() if p.requires_grad]
    text_encoders = [named[name] for name in parts.named_text_encoders if name in named]
    num_processes = accelerator.num_processes
    return RunSetup(
        accelerator=accelerator, parts=parts, method=method, data=data,
        process=parts.process.to(accelerator.device), denoiser=named[parts.denoiser_name], text_encoders=text_encoders or None,
        critic=named.get("critic"), reward=built.reward, objective=built.objective,
        diagnostic_reward=built.diagnostic_reward, optimizer=optimizer, critic_optimizer=built.critic_optimizer,
        lr_scheduler=lr_scheduler, policy_parameters=policy_parameters, autocast_dtype=autocast_dtype,
        effective_batch_size=config.train.batch_size * num_processes * config.train.gradient_accumulation_steps,
        concept_images=concept_images, micro_conditioning=parts.family.micro_conditioning(config.data.resolution),
        validation_inputs=validation_inputs,
    )


def place_models(parts: ModelParts, method: Method, device: torch.device,
                 autocast_dtype: torch.dtype | None, train_text_encoder: bool) -> None:
    """Frozen parts only run forward: keep them in the autocast dtype to save memory (trainable stay fp32)."""
    frozen_dtype = autocast_dtype or torch.float32
    # As the stock pipelines do: a VAE marked force_upcast (SDXL's overflows in fp16) stays fp32 under fp16.
    upcast = frozen_dtype == torch.float16 and parts.vae.config.get("force_upcast", False)
    parts.vae.to(device, torch.float32 if upcast else frozen_dtype)
    if getattr(method, "adapters_only", False):
        # Adapter methods: the base weights are frozen too; only the adapters are kept in fp32. A quantized
        # denoiser loaded its other layers in the autocast dtype already, and diffusers refuses to cast it.
        for module in (parts.denoiser, *parts.text_encoders):
            if is_quantized(module):
                module.to(device)
            else:
                module.to(device, frozen_dtype)
        cast_training_params([parts.denoiser, *parts.text_encoders], dtype=torch.float32)
        return
    for encoder in parts.text_encoders:
        encoder.to(device, torch.float32 if train_text_encoder else frozen_dtype)
    parts.denoiser.to(device)


@dataclass
class ObjectiveParts:
    """The objective and what it declared it needs (`Needs`); what it does not need is None."""

    objective: Objective
    reward: Reward | None
    diagnostic_reward: Reward | None
    critic: nn.Module | None
    critic_optimizer: torch.optim.Optimizer | None


def build_objective(config: Config, parts: ModelParts, concept_images: list[torch.Tensor],
                    device: torch.device) -> ObjectiveParts:
    """The objective, its reward (one per concept) and its critic with the critic's optimizer, on `device`:
    each only if the objective's `needs` say so."""
    objective = build_objective_component(config)
    needs = needs_of(objective, config.objective.name)
    reward, diagnostic, critic, critic_optimizer = None, None, None, None
    if needs.reward:
        reward = build_concept_reward(lambda setup: objective_reward(config, setup),
                                      reward_setups(config, concept_images, device))
        if needs.reward_gradient and not reward.differentiable:
            raise not_differentiable(config.objective.name, f"{config.objective.reward} (says the built reward)")
        if needs.critic and config.critic.diagnostics_every > 0:
            diagnostic = reward if reward.differentiable else build_twin(config, concept_images, device)
    if needs.critic:
        side = config.data.resolution // parts.vae_scale_factor
        # The family's unpacked channels (FLUX's transformer takes 2x2-packed 4C) and text width (not a sum).
        spec = CriticSpec(critic_input_channels(config.critic.input, parts.latent_channels), (side, side),
                          parts.text_embedding_dim, decode=image_decoder(parts.vae, parts.latent_space, config),
                          reference_images=concept_images[0].to(device))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.train.seed)  # the critic's initial weights are part of the run's seed
            critic = make_critic(spec, config.critic).to(device)
        critic_optimizer = make_critic_optimizer(critic, config.critic)
    return ObjectiveParts(objective, reward, diagnostic, critic, critic_optimizer)


def objective_reward(config: Config, setup: RewardSetup) -> Reward:
    """objective.reward, or with objective.scene_reward set, each on its own kind of row (photo, prompt-only)."""
    objective = config.objective
    if objective.scene_reward is None:
        return build_reward(objective.reward, objective.reward_options, setup)
    # objective.reward_options serves both sums: each is built with the options of its own parts.
    options = dict(objective.reward_options or {})
    photo, scene = reward_weights(objective.reward), reward_weights(objective.scene_reward)
    unknown = sorted(set(options) - set(photo) - set(scene))
    if unknown:
        raise UserError(f"objective.reward_options has options for {unknown[0]!r}, which neither objective.reward "
                        f"nor objective.scene_reward uses ({', '.join({**photo, **scene})}): fix the name or add "
                        f"the reward to one of them")
    return ByRowKind(
        build_reward(photo, {name: options[name] for name in photo if name in options}, setup),
        build_reward(scene, {name: options[name] for name in scene if name in options}, setup,
                     key="objective.scene_reward"))


def build_twin(config: Config, concept_images: list[torch.Tensor], device: torch.device) -> Reward | None:
    """A black-box reward's differentiable twin (each part that declares `twin`), for diagnostics only;
    None when some part has none."""
    twin = differentiable_twin(config.objective.reward, config.objective.reward_options)
    if twin is None:
        return None
    return build_concept_reward(lambda setup: build_reward(*twin, setup), reward_setups(config, concept_images, device))


def reward_setups(config: Config, concept_images: list[torch.Tensor], device: torch.device) -> list[RewardSetup]:
    """What each concept's reward is built from: its photos and its identifier."""
    return [RewardSetup(reference_images=images, identifier=concept.identifier, device=device)
            for concept, images in zip(concepts_of(config.data), concept_images, strict=True)]


def make_policy_optimizer(parameters: list[nn.Parameter], config: Config) -> torch.optim.Optimizer:
    train = config.train
    optimizer_class, extra = torch.optim.AdamW, {"fused": True}  # fused: one kernel, 5x faster on CPU too
    if train.use_8bit_adam:
        try:
            import bitsandbytes
        except ImportError:
            raise UserError("train.use_8bit_adam=true needs bitsandbytes: pip install 'rewardbooth[bnb]' "
                            "(CUDA only), or set train.use_8bit_adam=false") from None
        optimizer_class, extra = bitsandbytes.optim.AdamW8bit, {}
    return optimizer_class(parameters, lr=train.lr, betas=(train.adam_beta1, train.adam_beta2),
                           weight_decay=train.adam_weight_decay, eps=train.adam_epsilon, **extra)



