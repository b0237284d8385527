"""Model families: what differs between Stable Diffusion 1.x/2.x, SDXL, SD3 and FLUX, asked of one registered
object instead of tested for across the code (k-diffusion's `external.py` is the model: outside `models/`,
code sees the `Family` and `Process` protocols below, never a raw scheduler, UNet config or encoder list).

One module per family: rewardbooth.models.stable_diffusion (SD, SDXL: DDPM, rewardbooth.models.ddpm),
rewardbooth.models.sd3 and rewardbooth.models.flux (flow matching, rewardbooth.models.flow). The loop, batches, bench and methods ask
`parts.family`; tests/contract/test_family_contract.py runs every registered family on its tiny model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple, Protocol

import torch
from torch import nn

from rewardbooth.core.errors import UserError
from rewardbooth.core.registry import Registry

families = Registry("model family")


class Process(Protocol):
    """The training-time forward process of a family and its denoiser's parameterization.

    `timesteps` are the denoiser's own time values on a 0..1000 scale: DDPM int64 t in {0..T-1}, flow
    matching float32 1000σ. They are what the critic embeds and what dpg.discount raises γ to."""

    def sample_timesteps(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """Shape: -> (count,) on the CPU"""

    def noise_level(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The noise's coefficient in x_t, in [0, 1] (DDPM sqrt(1 - ᾱ_t), flow σ). Shape: (B,) -> (B,) float32"""

    def diffuse(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t. Shape: x0, noise (B, C, h, w); timesteps (B,) -> (B, C, h, w)"""

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the action should equal. Shape: (B, C, h, w) -> (B, C, h, w)"""

    def look_forward(self, x_t: torch.Tensor, action: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x̂0 implied by the action in one jump. Shape: (B, C, h, w) -> (B, C, h, w)"""

    def to(self, device: torch.device | str) -> Process: ...


class RolloutProcess(Process, Protocol):
    """A process that can also sample stochastically, step by step, with each step's log-probability: what
    rollout objectives (grpo) need. The DDPM families have it (DDIM with η > 0, models/ddpm.py), the flow
    families too (Flow-GRPO's SDE step, models/flow.py); grpo refuses a family without it in one line."""

    def sampling_timesteps(self, num_steps: int, latent_size: tuple[int, int] | None = None) -> torch.Tensor:
        """The family's sampler's S time values, descending, for (h, w) latents (a resolution-dependent
        schedule, FLUX's dynamic shift, needs them). Shape: -> (S,) on the CPU"""

    def stochastic_step(self, x_t: torch.Tensor, action: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
                        noise_scale: float, generator: torch.Generator | None = None,
                        x_next: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x_next and its log-probability (B,); with `x_next` given, only its log-probability."""


def device_of(module: nn.Module) -> torch.device:
    """Where a module's weights are (text ids are moved there before encoding)."""
    return next(module.parameters()).device


@dataclass(frozen=True)
class LatentSpace:
    """The denoiser's latents from the VAE's: z = (z_vae - shift) * scale (SD: scale 0.18215, no shift; SD3 and
    FLUX shift too). Read from the VAE's own config, as diffusers' pipelines do."""

    scaling_factor: float
    shift_factor: float = 0.0

    @classmethod
    def of(cls, vae) -> LatentSpace:
        return cls(vae.config.scaling_factor, vae.config.get("shift_factor") or 0.0)

    def from_vae(self, latents: torch.Tensor) -> torch.Tensor:
        """Shape: (B, C, h, w) -> (B, C, h, w)"""
        return (latents - self.shift_factor) * self.scaling_factor

    def to_vae(self, latents: torch.Tensor) -> torch.Tensor:
        """Shape: (B, C, h, w) -> (B, C, h, w)"""
        return latents / self.scaling_factor + self.shift_factor


@dataclass(frozen=True)
class Conditioning:
    """A batch's text conditioning, made and read by its family: `embeds` (name -> (B, ...), e.g. SD's
    {"embeds"}, SDXL's {"embeds", "pooled"}) for what frozen encoders computed once, and `token_ids` (one
    (B, L_e) tensor per trained encoder, in the family's order; lengths may differ: CLIP 77, T5 256) for
    encoders that train and must run in each step."""

    embeds: dict[str, torch.Tensor] = field(default_factory=dict)
    token_ids: tuple[torch.Tensor, ...] = ()

    def to(self, device: torch.device | str) -> Conditioning:
        return Conditioning({k: v.to(device) for k, v in self.embeds.items()},
                            tuple(ids.to(device) for ids in self.token_ids))

    def select(self, index: torch.Tensor | slice) -> Conditioning:
        """The rows `index` of every tensor (e.g. one prompt's rows repeated for a group of rollouts)."""
        return Conditioning({key: value[index] for key, value in self.embeds.items()},
                            tuple(ids[index] for ids in self.token_ids))

    @staticmethod
    def cat(items: list[Conditioning]) -> Conditioning:
        """One batch from per-prompt rows, in order."""
        first = items[0]
        return Conditioning({key: torch.cat([item.embeds[key] for item in items]) for key in first.embeds},
                            tuple(torch.cat([item.token_ids[i] for item in items])
                                  for i in range(len(first.token_ids))))


@dataclass(frozen=True)
class TrainingOptions:
    """The user's overrides of a family's training-time process (the model.* keys named in KEYS); None keeps
    the family's own. Carried on the loaded parts (`ModelParts.training`), read by the family that
    `ModelParts.family` hands out (`Family.with_training`): no global state."""

    density: str | None = None  # "uniform", "logit_normal" or "mode": the σ density of flow families
    logit_mean: float | None = None
    logit_std: float | None = None
    mode_scale: float | None = None
    shift: float | None = None  # static shift s of the training σ: s σ / (1 + (s - 1) σ)
    guidance: float | None = None  # FLUX-dev's guidance-embedding value in training

    KEYS: ClassVar[dict[str, str]] = {
        "density": "model.timestep_density", "logit_mean": "model.logit_mean", "logit_std": "model.logit_std",
        "mode_scale": "model.mode_scale", "shift": "model.timestep_shift", "guidance": "model.training_guidance"}

    @classmethod
    def of(cls, model_config) -> TrainingOptions:
        """From a ModelConfig (rewardbooth.core.config): its keys named in KEYS."""
        return cls(**{name: getattr(model_config, key.split(".")[1]) for name, key in cls.KEYS.items()})

    def given(self) -> dict[str, float | str]:
        """The options the user set, by their config key."""
        return {self.KEYS[name]: value for name, value in vars(self).items() if value is not None}

    def refuse(self, names: tuple[str, ...], family: str, why: str) -> None:
        """One line naming the first of `names` (TrainingOptions fields) the user set, which `family` lacks."""
        for name in names:
            if getattr(self, name) is not None:
                raise UserError(f"{self.KEYS[name]}={getattr(self, name)!r}: the {family} family {why}; "
                                f"remove {self.KEYS[name]}")


NO_OPTIONS = TrainingOptions()


class SamplingDefaults(NamedTuple):
    """What a family samples with unless the user says otherwise (steps, classifier-free or embedded guidance)."""

    num_inference_steps: int
    guidance_scale: float


class Family(Protocol):
    """Everything family-specific, asked of one object (each family's module implements it)."""

    name: ClassVar[str]
    pipeline_class: ClassVar[type]
    pipeline_class_names: ClassVar[tuple[str, ...]]  # model_index.json `_class_name`s it loads, exactly
    load_options: ClassVar[dict]  # for from_pretrained
    lora_targets: ClassVar[dict[str, tuple[str, ...]]]  # "denoiser" and each trainable encoder -> layer names
    trainable_text_encoders: ClassVar[tuple[str, ...]]  # encoders `train_text_encoder` trains (never T5)
    mixed_precisions: ClassVar[tuple[str, ...]]  # train.mixed_precision values it trains under ("no" always)

    def matches(self, pipeline_class_name: str) -> bool: ...
    def with_training(self, parts, options: TrainingOptions) -> Family:
        """This family training with the user's `options` (read by `process` and `denoise`); raises UserError,
        one line naming the key, for an option the family (or this model of it) has no use for."""
    def process(self, parts) -> Process: ...
    def latent_space(self, parts) -> LatentSpace: ...
    def latent_channels(self, parts) -> int:
        """C of the unpacked (B, C, h, w) latents the loop, critic and rewards see."""
    def text_embedding_dim(self, parts) -> int:
        """D of the (B, L, D) text embedding `denoise` returns (what a text-conditioned critic pools)."""
    def prediction_type(self, parts) -> str: ...
    def sampling_defaults(self, parts) -> SamplingDefaults: ...
    def resolution_multiple(self, parts) -> int: ...
    def native_resolution(self, parts) -> int: ...
    def micro_conditioning(self, resolution: int | tuple[int, int]) -> torch.Tensor | None:
        """Extra ids for images of `resolution` px (a side, or an aspect bucket's (height, width))."""
    def tokenize(self, tokenizers: list, prompts: list[str]) -> tuple[torch.Tensor, ...]: ...
    def encode_text(self, encoders: list[nn.Module], token_ids: tuple[torch.Tensor, ...]) -> Conditioning: ...
    def lora_state_dict(self, component: str, peft_state: dict) -> dict:
        """A component's peft adapter state as the pipeline's `save_lora_weights` takes it."""
    def stock_conditioning(self, pipeline, prompts: list[str]) -> Conditioning:
        """The same conditioning from the stock pipeline's own `encode_prompt` (the contract tests' oracle)."""
    def pipeline_text_inputs(self, pipeline, prompts: list[str], guidance_scale: float,
                             device: torch.device) -> dict:
        """The pipeline's keyword arguments in place of `prompt=prompts` (prompt_embeds, pooled_prompt_embeds,
        negative_*: what its `__call__` takes), computed by its own `encode_prompt` as `__call__` would at this
        guidance scale, so that sampling from them draws the very same images without the text encoders."""
    def denoise(self, denoiser: nn.Module, x_t: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning,
                encoders: list[nn.Module] | None = None, micro: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The action and the (B, L, D) text embedding. Shape: x_t (B, C, h, w), timesteps (B,) -> (B, C, h, w), ..."""
    def pipeline(self, parts): ...
    def parts_from_pipeline(self, pipeline, source: str): ...


def conditioning_of_prompts(parts, prompts: list[str], trained: tuple[str, ...]) -> dict[str, Conditioning]:
    """Each prompt's conditioning: token ids for the encoders named in `trained` (they run each step), and the
    embeddings of the frozen ones, computed once here."""
    family = parts.family
    rows = {}
    for prompt in prompts:
        token_ids = family.tokenize(parts.tokenizers, [prompt])
        if trained:
            rows[prompt] = Conditioning(token_ids=token_ids)
            continue
        with torch.no_grad():
            embeds = family.encode_text(parts.text_encoders, token_ids).embeds
        rows[prompt] = Conditioning({key: value.float().cpu() for key, value in embeds.items()})
    return rows


def without_none(**inputs) -> dict:
    """Keyword arguments minus those `encode_prompt` left None (no negatives without guidance)."""
    return {key: value for key, value in inputs.items() if value is not None}


def move_inputs(inputs: dict, device: torch.device | str) -> dict:
    """Pipeline keyword arguments (tensors, or lists of tensors as Z-Image's) moved to `device`, unchanged."""
    return {key: [item.to(device) for item in value] if isinstance(value, list) else value.to(device)
            for key, value in inputs.items()}


def family_for_pipeline(pipeline_class_name: str):
    """The registered family whose pipeline class a diffusers folder names (model_index.json), or None."""
    for name in families.names():
        family = families.get(name)
        if family.matches(pipeline_class_name):
            return family
    return None
