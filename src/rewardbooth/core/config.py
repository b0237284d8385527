"""One frozen config tree: loaded from a YAML/TOML file or a shipped preset, then `section.key=value` overrides.

Every field's ``help`` is its documentation (shown by ``rewardbooth train --help-config``). Numbers that follow
from others (effective batch size, steps per epoch) are computed and logged by the trainer, not stored here.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rewardbooth.core import config_parsing
from rewardbooth.core.config_parsing import (
    build_dataclass,
    leaf_values,
    lookup,
    parse_override,
    set_key,
    text_override,
)
from rewardbooth.core.config_parsing import config_field as _field
from rewardbooth.core.data_config import ConceptConfig as ConceptConfig  # re-exported: its home until now
from rewardbooth.core.data_config import DataConfig
from rewardbooth.core.errors import UserError

PRESET_DIR = Path(__file__).parents[1] / "presets"


@dataclass(frozen=True)
class ModelConfig:
    pretrained: str | None = _field(None, "diffusers folder or hub id (SD, SDXL, SD3, FLUX.1, Z-Image), or a built-in: "
                                          "'toy', 'tiny', 'tiny-sdxl', 'tiny-sd3', 'tiny-flux', 'tiny-zimage', "
                                          "'sd15-random', 'sdxl-random', 'flux-random', 'sd35m-random'")
    revision: str | None = _field(None, "hub revision (branch, tag or commit)")
    variant: str | None = _field(None, "weight variant to load, e.g. 'fp16'")
    # The flow families' training process (docs/presets.md): None keeps the family's; SD and SDXL refuse them.
    timestep_density: Literal["uniform", "logit_normal", "mode"] | None = _field(
        None, "flow families: density of the training σ (default: the family's: FLUX uniform, as diffusers' "
              "train_dreambooth_lora_flux.py; SD3 and Z-Image logit_normal, Esser et al. 2024)")
    logit_mean: float | None = _field(None, "timestep_density=logit_normal: mean of the logit of σ (default 0)")
    logit_std: float | None = _field(None, "timestep_density=logit_normal: std of the logit of σ (default 1)")
    mode_scale: float | None = _field(None, "timestep_density=mode: its scale (default 1.29, Esser et al. 2024)")
    timestep_shift: float | None = _field(
        None, "flow families: static shift s of the training σ, σ' = s σ / (1 + (s - 1) σ) (default: the "
              "scheduler's: SD3 3, FLUX-dev none in training, it shifts by resolution at inference only)")
    training_guidance: float | None = _field(
        None, "FLUX-dev: the guidance-embedding value the transformer gets in training (default: the family's "
              "3.5, diffusers' train_dreambooth_lora_flux.py; ai-toolkit-style trainers use 1.0)")
    quantize: Literal["none", "nf4", "int8", "fp8"] = _field(
        "none", "method.name=lora: keep the frozen denoiser quantized (QLoRA): 'nf4' (bitsandbytes 4-bit, CUDA), "
                "'int8' or 'fp8' (torchao weight-only, CPU too); the saved LoRA applies to the unquantized base")


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = _field(4, "rank r of every adapter")
    alpha: float | None = _field(None, "scale alpha (the update is alpha / r * B A); default r")
    denoiser_modules: tuple[str, ...] | None = _field(
        None, "denoiser (UNet) layers that get adapters (default: the model family's, the attention projections)")
    text_encoder_modules: tuple[str, ...] | None = _field(
        None, "text-encoder layers that get adapters (default: the model family's)")


@dataclass(frozen=True)
class CustomDiffusionConfig:
    params: Literal["kv", "crossattn"] = _field(
        "kv", "'kv' = cross-attention key/value projections (the paper's default); 'crossattn' = all "
              "cross-attention projections")
    initializer_token: str = _field("ktn", "words whose mean embedding starts the new token (data.identifier, "
                                           "e.g. '<new1>')")


@dataclass(frozen=True)
class MethodConfig:
    name: str = _field("dreambooth", "base method: 'dreambooth' (all UNet weights), 'lora' (adapters) or "
                                        "'custom_diffusion' (cross-attention K/V + new tokens)")
    train_text_encoder: bool = _field(False, "also fine-tune the text encoder (lora: adapters on it too)")
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    custom_diffusion: CustomDiffusionConfig = field(default_factory=CustomDiffusionConfig)


@dataclass(frozen=True)
class GRPOConfig:
    """Rollout policy gradients (objective.name=grpo): groups sampled from the current policy, scored, and
    the sampler's steps reinforced by their group-normalised advantage (docs/architecture.md)."""

    group_size: int = _field(4, "images sampled per prompt (the group whose rewards normalise each other)")
    num_steps: int = _field(10, "stochastic sampler steps per image (DDIM with eta > 0, or Flow-GRPO's SDE)")
    trained_steps: int = _field(2, "sampler steps per image whose log-probability is trained, drawn at random")
    eta: float = _field(1.0, "the rollouts' noise: DDIM eta (1 = the DDPM posterior's), or Flow-GRPO's noise "
                            "level a for flow families (their paper: 0.7); > 0 for a log-probability")
    clip_range: float = _field(1e-4, "PPO ratio clip: the ratio is clipped to [1 - c, 1 + c] (DDPO's 1e-4)")
    advantage_clip: float = _field(5.0, "advantages are clipped to [-c, c] (DDPO's 5)")
    kl_weight: float = _field(0.0, "beta: weight of the KL anchor to the base model, which is the denoiser with "
                                   "its adapters off (method.name=lora; Flow-GRPO uses 0.04); 0 = no anchor")


@dataclass(frozen=True)
class ObjectiveConfig:
    name: str = _field(
        "dpg", "objective (see docs/architecture.md): 'baseline' = plain denoising loss; 'dpg' = the policy climbs "
        "a critic that learns the reward; 'direct' = backpropagate a differentiable reward itself (for "
        "comparison); or 'pkg.mod:Class'")
    reward: str | dict[str, float] = _field(
        "look_forward", "reward that scores the look-forward prediction x0_hat (see `rewardbooth rewards`), "
        "or several as {name: weight}, e.g. {look_forward: 1, dino: 0.5}: their weighted sum")
    reward_options: dict[str, dict] | None = _field(
        None, "keyword arguments per reward, e.g. {dino: {model: /models/dino-vits16}}")
    reward_every: int = _field(1, "score x0_hat and train the critic every k steps (the policy climbs the "
                                  "critic every step): divides the cost of slow rewards by k")
    reward_resolution: int | None = _field(
        None, "pixels at which x0_hat is decoded for image rewards (latents resized first; default: the "
              "training resolution). 256 suits DINO and CLIP, which look at 224 px")
    decoder_checkpointing: bool = _field(
        False, "when an image reward is differentiated (objective.name=direct, critic diagnostics): recompute "
               "the VAE decoder's activations in the backward pass instead of keeping them (less memory, slower)")
    instance_weight: float = _field(1.0, "w_inst: weight of the instance denoising loss")
    prior_weight: float = _field(1.0, "w_prior: weight of the prior-preservation loss")
    critic_weight: float = _field(1.0, "lambda: weight of the -Q(s, a) policy term")
    gamma: float = _field(1.0, "discount: the policy term at timestep t is weighted by gamma**t")
    scene_share: float = _field(0.0, "share of instance samples replaced by prompt-only states: a data.scene_prompts "
                                     "prompt, state sampled by the policy from noise (no mse, no reference latent)")
    scene_steps: int = _field(10, "sampler steps of the grid the prompt-only states are sampled on (no gradient)")
    scene_reward: str | dict[str, float] | None = _field(
        None, "reward of the prompt-only rows instead of objective.reward (which then scores the photo rows only), "
              "e.g. {clip_text: 1} beside objective.reward={dino: 1}: identity where there is a photo, the prompt "
              "where there is none (direct, grpo); options in objective.reward_options")
    anchor_weight: float = _field(0.0, "weight of mean |a_policy - a_base|^2 on prompt-only states (LoRA: adapters off)")
    grpo: GRPOConfig = field(default_factory=GRPOConfig)


@dataclass(frozen=True)
class CriticConfig:
    name: str = _field("pooled", "critic architecture: 'released' (the paper code's, all-positive init), 'pooled' "
                               "(per-channel statistics; starts at the look-forward reward with the residual "
                               "input), 'conv', or 'pkg.mod:factory'")
    input: Literal["state_action", "residual", "prediction"] = _field(
        "residual", "'state_action' = [x_t, a]; 'residual' = (x0_hat - x0)^2 as in the released code; "
                    "'prediction' = x0_hat, which every image reward scores"
    )
    residual_prior: bool = _field(
        True, "conv and pooled critics with the residual input: start Q as the look-forward reward "
              "-mean((x0_hat - x0)^2) (exact gradient from step 0; false: start at Q = 0)")
    hidden_channels: int = _field(64, "width of the critic's conv trunk")
    num_layers: int = _field(3, "conv layers in the critic's trunk")
    condition_on_text: bool = _field(False, "also feed the pooled text embedding to the critic")
    optimizer: Literal["adamw", "sgd"] = _field("adamw", "critic optimizer")
    lr: float = _field(1e-4, "critic learning rate")
    weight_decay: float = _field(0.0, "critic weight decay")
    diagnostics_every: int = _field(
        10, "log critic/grad_cosine = cos(dQ/da, dr/da) and critic/grad_ratio = |dQ/da| / |dr/da| every N steps "
            "when the reward is differentiable (0 = never); critic/r2 is logged on every scoring step")
    r2_window: int = _field(64, "samples over which the on-policy R^2 of Q against the reward is computed")
    encoder: str = _field(
        "dinov2", "critic.name=feature: the frozen image encoder Q reads, by what the reward measures: 'dinov2' "
                  "or 'dino' (identity), 'clip' or 'siglip' (content), 'toy_encoder' (toy world), or "
                  "'pkg.mod:factory' (docs/critic.md)")
    encoder_model: str | None = _field(
        None, "critic.name=feature: a local folder or hub id replacing the encoder's default checkpoint")
    replay_size: int = _field(1024, "critic.name=feature: (features, reward) samples kept for replay")
    replay_batch: int = _field(64, "critic.name=feature: samples per critic update (this step's, then replayed)")
    probe_step: float = _field(
        0.1, "critic.name=feature: each scoring step scores x0_hat moved by +-probe_step*|x0_hat| along the "
             "critic's gradient; whether the reward rises there sets the trust the policy gives Q (0 = no check)")


@dataclass(frozen=True)
class TrainConfig:
    output_dir: str = _field("outputs/run", "where the pipeline, critic, samples, logs and checkpoints go")
    overwrite: bool = _field(False, "allow writing into a non-empty output folder (deletes its contents)")
    resume: str | None = _field(None, "'latest' or a checkpoint folder to continue from")
    seed: int = _field(0, "seed for every random draw of the run")
    max_steps: int = _field(400, "optimizer steps")
    batch_size: int = _field(1, "instance images per process per micro-step")
    gradient_accumulation_steps: int = _field(1, "micro-steps per optimizer step")
    lr: float = _field(5e-6, "policy (UNet / text encoder) learning rate")
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                          "polynomial"] = _field("constant", "diffusers LR schedule (get_scheduler's name)")
    lr_warmup_steps: int = _field(0, "warm-up steps of the LR schedule")
    adam_beta1: float = _field(0.9, "AdamW beta1")
    adam_beta2: float = _field(0.999, "AdamW beta2")
    adam_weight_decay: float = _field(1e-2, "AdamW weight decay")
    adam_epsilon: float = _field(1e-8, "AdamW epsilon")
    use_8bit_adam: bool = _field(False, "bitsandbytes AdamW8bit for the policy (needs CUDA)")
    max_grad_norm: float = _field(1.0, "gradient clipping of the policy")
    mixed_precision: Literal["no", "fp16", "bf16"] = _field("no", "autocast precision; trainable weights stay fp32")
    gradient_checkpointing: bool = _field(False, "trade compute for memory in the UNet / text encoder")
    cache_latents: bool = _field(True, "encode the training images with the VAE once, not every step")
    offload_text_encoders: Literal["cpu", "free", "none"] = _field(
        "cpu", "frozen text encoders, once setup has encoded every prompt of the run (nothing runs them after): "
               "'cpu' moves them off the accelerator (T5-XXL: 9.5 GB in bf16; a no-op on a CPU run), 'free' drops "
               "their weights (lora only: its result holds adapters, not the encoders), 'none' keeps them")
    checkpoint_every: int = _field(200, "save a resumable checkpoint every N steps (0 = never)")
    checkpoints_total_limit: int = _field(2, "keep at most this many checkpoints")
    max_skipped_steps: int = _field(
        5, "stop the run (nothing published, checkpoints kept) after this many consecutive steps skipped for a "
           "non-finite loss, a diverged critic or policy (0 = never stop)")
    log_every: int = _field(1, "log metrics every N steps")
    report_to: Literal["auto", "tensorboard", "none"] = _field("auto", "tracker ('auto' = tensorboard if installed)")


@dataclass(frozen=True)
class ValidationConfig:
    every: int = _field(100, "write a sample grid every N steps (and at steps 0 and last; 0 = never)")
    prompts: tuple[str, ...] = _field((), "validation prompts (default: the instance prompt)")
    num_images: int = _field(2, "images per prompt")
    num_inference_steps: int | None = _field(None, "sampler steps (default: the model family's: SD/SDXL 25, SD3/FLUX-dev 28)")
    guidance_scale: float | None = _field(
        None, "guidance scale (default: the model family's: SD 7.5, SDXL 5, SD3 7, FLUX-dev 3.5 embedded)")
    seed: int = _field(1234, "seed of the validation samples (fixed across steps)")
    reward: str | dict[str, float] | None = _field(
        None, "image reward(s) scoring the validation samples, e.g. {dino: 1, clip_text: 1}; enables keep-best")
    reward_options: dict[str, dict] | None = _field(None, "keyword arguments per validation reward")
    mix: Literal["weighted", "harmonic"] = _field(
        "weighted", "how several validation rewards combine: weighted sum or weighted harmonic mean")
    keep_best: bool = _field(True, "with a validation reward: keep the best step's model in best/")
    patience: int = _field(0, "with a validation reward: stop after this many validations without a new best "
                              "(0 = never)")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


# Keys renamed in 0.1.0: old full key -> new one (an old key fails with one line naming the new).
RENAMED = {
    "method.lora_rank": "method.lora.rank",
    "method.lora_alpha": "method.lora.alpha",
    "method.lora_unet_modules": "method.lora.denoiser_modules",
    "method.lora_text_encoder_modules": "method.lora.text_encoder_modules",
    "method.custom_diffusion_params": "method.custom_diffusion.params",
    "method.initializer_token": "method.custom_diffusion.initializer_token",
    "data.class_generation_steps": "data.class_num_inference_steps",
}


def preset_names() -> list[str]:
    return sorted(path.stem for path in PRESET_DIR.glob("*.yaml"))


def load_config(source: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Build a Config from a file or preset name, then apply ``section.key=value`` overrides (nested keys
    too: ``method.lora.rank=8``)."""
    tree = read_source(source) if source is not None else {}
    for override in overrides:
        key, value = parse_override(override)
        if "." not in key.strip("."):
            raise UserError(f"override {override!r}: keys look like 'section.key=value', e.g. 'train.max_steps=100'")
        set_key(tree, key, text_override(Config, key, override, value), override)
    return from_dict(tree)


def from_dict(tree: dict[str, Any]) -> Config:
    return build_dataclass(Config, tree, renamed=RENAMED)


def to_dict(config: Config) -> dict[str, Any]:
    """The config as plain YAML types: sections of keys (nested for method.lora, ...), lists for tuples."""
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value

    return plain(dataclasses.asdict(config))


def flat_dict(config: Config) -> dict[str, Any]:
    """Every key with its plain value, e.g. {'train.max_steps': 400, 'method.lora.rank': 4, ...}."""
    tree = to_dict(config)
    return {key: lookup(tree, key) for key in leaf_values(config)}


def save_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def read_source(source: str | Path) -> dict[str, Any]:
    """The mapping in a YAML/TOML file or a shipped preset, without its notes (`_why`, `_vram`: read by
    rewardbooth.core.presets for --help-config only)."""
    return config_parsing.split_notes(read_raw(source))[0]


def read_raw(source: str | Path) -> dict[str, Any]:
    """The mapping in a YAML/TOML file or a shipped preset, notes included."""
    return config_parsing.read_source(source, {name: PRESET_DIR / f"{name}.yaml" for name in preset_names()})


# (key, test, what the key must be): checked before a run touches anything.
_RANGES: list[tuple[str, typing.Callable[[Any], bool], str]] = [
    ("data.resolution", lambda v: v >= 8, "at least 8"),
    ("data.num_class_images", lambda v: v >= 1, "at least 1"),
    ("data.class_num_inference_steps", lambda v: v >= 1, "at least 1"),
    ("data.caption_dropout", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("objective.gamma", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("objective.instance_weight", lambda v: v >= 0, "non-negative"),
    ("objective.prior_weight", lambda v: v >= 0, "non-negative"),
    ("objective.critic_weight", lambda v: v >= 0, "non-negative"),
    ("objective.reward_every", lambda v: v >= 1, "at least 1"),
    ("objective.reward_resolution", lambda v: v is None or v >= 8, "at least 8 (or unset)"),
    ("objective.scene_share", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("objective.scene_steps", lambda v: v >= 2, "at least 2"),
    ("objective.anchor_weight", lambda v: v >= 0, "non-negative"),
    ("objective.grpo.group_size", lambda v: v >= 2, "at least 2 (advantages compare images of one prompt)"),
    ("objective.grpo.num_steps", lambda v: v >= 1, "at least 1"),
    ("objective.grpo.trained_steps", lambda v: v >= 1, "at least 1"),
    ("objective.grpo.eta", lambda v: v > 0, "positive (eta = 0 samples deterministically: no log-probability)"),
    ("objective.grpo.clip_range", lambda v: 0 < v < 1, "in (0, 1)"),
    ("objective.grpo.advantage_clip", lambda v: v > 0, "positive"),
    ("objective.grpo.kl_weight", lambda v: v >= 0, "non-negative"),
    ("model.logit_std", lambda v: v is None or v > 0, "positive (or unset: the family's)"),
    ("model.mode_scale", lambda v: v is None or v >= 0, "non-negative (or unset: the family's)"),
    ("model.timestep_shift", lambda v: v is None or v > 0, "positive (or unset: the scheduler's)"),
    ("model.training_guidance", lambda v: v is None or v >= 0, "non-negative (or unset: the family's)"),
    ("method.lora.rank", lambda v: v >= 1, "at least 1"),
    ("method.lora.alpha", lambda v: v is None or v > 0, "positive (or unset: the rank)"),
    ("critic.hidden_channels", lambda v: v >= 1, "at least 1"),
    ("critic.num_layers", lambda v: v >= 0, "non-negative"),
    ("critic.lr", lambda v: v > 0, "positive"),
    ("critic.diagnostics_every", lambda v: v >= 0, "non-negative (0 = never)"),
    ("critic.r2_window", lambda v: v >= 2, "at least 2"),
    ("critic.replay_size", lambda v: v >= 1, "at least 1"),
    ("critic.replay_batch", lambda v: v >= 1, "at least 1"),
    ("critic.probe_step", lambda v: v >= 0, "non-negative (0 = no check)"),
    ("train.max_steps", lambda v: v >= 1, "at least 1"),
    ("train.batch_size", lambda v: v >= 1, "at least 1"),
    ("train.gradient_accumulation_steps", lambda v: v >= 1, "at least 1"),
    ("train.lr", lambda v: v > 0, "positive"),
    ("train.lr_warmup_steps", lambda v: v >= 0, "non-negative"),
    ("train.checkpoint_every", lambda v: v >= 0, "non-negative (0 = never)"),
    ("train.checkpoints_total_limit", lambda v: v >= 1, "at least 1"),
    ("train.log_every", lambda v: v >= 1, "at least 1"),
    ("train.max_skipped_steps", lambda v: v >= 0, "non-negative (0 = never stop)"),
    ("validation.every", lambda v: v >= 0, "non-negative (0 = never)"),
    ("validation.num_images", lambda v: v >= 1, "at least 1"),
    ("validation.num_inference_steps", lambda v: v is None or v >= 1, "at least 1"),
    ("validation.patience", lambda v: v >= 0, "non-negative (0 = never stop early)"),
]


def check_values(config: Config) -> None:
    """Range checks a type cannot express; raises UserError naming the key and the allowed values."""
    for key, value in flat_dict(config).items():
        bad = config_parsing.non_finite(value)
        if bad is not None:
            raise UserError(f"bad value {bad!r} for {key}: every number of a config must be finite (not inf or nan)")
    for key, test, requirement in _RANGES:
        value = functools.reduce(getattr, key.split("."), config)
        if not test(value):
            raise UserError(f"bad value {value!r} for {key}: it must be {requirement}")
    if not config.model.pretrained:
        raise UserError("model.pretrained is not set: pass a diffusers folder or hub id, e.g. "
                        "model.pretrained=stable-diffusion-v1-5/stable-diffusion-v1-5 (or 'toy' for the toy world)")
    if config.validation.reward is not None and config.validation.every == 0:
        raise UserError("validation.reward needs validation.every > 0: the reward scores the validation samples")
    if config.validation.patience and config.validation.reward is None:
        raise UserError("validation.patience needs validation.reward: early stopping follows the validation score")
    if config.objective.grpo.trained_steps > config.objective.grpo.num_steps:
        raise UserError(f"objective.grpo.trained_steps={config.objective.grpo.trained_steps} exceeds "
                        f"objective.grpo.num_steps={config.objective.grpo.num_steps}: train at most every step")
    if not config.data.instance_dir:
        raise UserError("data.instance_dir is not set: pass data.instance_dir=PATH to a folder of 3-6 subject photos")
