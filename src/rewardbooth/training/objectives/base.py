"""What every objective shares: the registry, the typed interface, the policy record and the loss record.

An objective turns one micro-batch into its loss terms (`Objective.losses`). It declares what the run must
build for it (`Needs`): a reward, the reward's gradient (a differentiable reward), a critic. Setup reads the
declaration (before any slow work, from the class) and builds exactly that; the loop never asks which
objective it runs. A new objective is a class registered here (`@objectives.register("name")`) or given as
`objective.name=pkg.mod:Class`; the shared contract (tests/contract/test_objective_contract.py) enrols it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from rewardbooth.core.config import Config
from rewardbooth.core.errors import UserError
from rewardbooth.core.registry import Registry
from rewardbooth.maths import dpg
from rewardbooth.models.families import Process
from rewardbooth.rewards import Reward, RewardOutput
from rewardbooth.training.batches import Batch
from rewardbooth.training.objectives.sampling import prompt_only_states

objectives = Registry("objective")


@dataclass(frozen=True)
class Needs:
    """What an objective needs built: `reward` (objective.reward, per concept), `reward_gradient` (the reward
    must be differentiable: it is backpropagated), `critic` (critic.*, with its optimizer)."""

    reward: bool = False
    reward_gradient: bool = False
    critic: bool = False


@dataclass
class Policy:
    """The modules one step touches; `critic` is the (possibly DDP-wrapped) one the critic loss trains."""

    family: object  # the model family (rewardbooth.models.families): it calls the denoiser
    denoiser: nn.Module
    text_encoders: list[nn.Module] | None  # set only when they train (batches then carry token ids)
    micro_conditioning: torch.Tensor | None  # the family's extra ids (SDXL's size/crop ids)
    critic: nn.Module | None
    critic_module: nn.Module | None  # the same critic unwrapped, evaluated with frozen weights for the actor
    vae: nn.Module  # frozen; decodes x0_hat for rewards that score images
    latent_space: object  # the family's (rewardbooth.models.families.LatentSpace): denoiser latents -> the VAE's
    objective: Objective
    diagnostic_reward: Reward | None = None  # a differentiable reward (or a black box's twin) for diagnostics

    def size_ids(self, batch: Batch) -> torch.Tensor | None:
        """The family's extra ids for the batch's images: SDXL's size ids of the step's aspect bucket, the run's
        (data.resolution square) without buckets; None for families without any."""
        if batch.size is None or self.micro_conditioning is None:
            return self.micro_conditioning
        return self.family.micro_conditioning(batch.size)


@dataclass
class Losses:
    """What one micro-batch contributes: loss terms (scalars; "loss" and "critic_loss" are backpropagated, all
    are logged) and, on scoring steps, the critic's fit: (Q(s, a_taken) before its update, r), per sample."""

    terms: dict[str, torch.Tensor]
    fit: tuple[torch.Tensor, torch.Tensor] | None = None


class Objective(Protocol):
    """One micro-batch's losses. `needs` is read from the class before it is built (factory(config))."""

    needs: ClassVar[Needs]

    def losses(self, policy: Policy, batch: Batch, process: Process, config: Config,
               reward: Reward | None, score: bool = True, diagnose: bool = False) -> Losses:
        """`score`: a scoring step (objective.reward_every); `diagnose`: measure the critic this step."""


@dataclass
class Denoised:
    """The denoising half every objective starts from. Instance samples are [:n], prior samples [n:]."""

    x_t: torch.Tensor  # (B, C, h, w)
    action: torch.Tensor  # (B, C, h, w): the denoiser's output, the deterministic policy's action
    text: torch.Tensor  # the text embedding the critic sees
    mse: torch.Tensor  # (B,) per-sample denoising loss in the model's own parameterization; 0 on prompt-only rows
    prior_mse: torch.Tensor | None  # mse[n:], when the batch carries prior samples
    timesteps: torch.Tensor  # (B,) the states' time values (a prompt-only state's is its sampler grid time)


def denoise(policy: Policy, batch: Batch, process: Process, scene_steps: int | None = None) -> Denoised:
    """Diffuse, act, and the DreamBooth losses of one micro-batch. With `scene_steps`, prompt-only rows act
    at states the policy samples (`sampling.prompt_only_states`); they have no photo, hence no mse."""
    # Forward diffusion, as the model family defines it (DDPM: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps).
    x_t, timesteps = process.diffuse(batch.x0, batch.noise, batch.timesteps), batch.timesteps
    if batch.scene is not None and scene_steps is not None:
        x_t, timesteps = prompt_only_states(policy, batch, process, x_t, timesteps, scene_steps)
    # The deterministic policy's action is the denoiser's output, conditioned as the family conditions it.
    action, text = policy.family.denoise(policy.denoiser, x_t, timesteps, batch.conditioning,
                                         policy.text_encoders, policy.size_ids(batch))
    target = process.target(batch.x0, batch.noise, timesteps)
    mse = dpg.per_sample_mse(action, target)
    n = batch.num_instance
    if batch.scene is not None:  # a prompt-only row's x0 is not its image: no denoising loss there
        mse = torch.cat([torch.where(batch.scene, torch.zeros_like(mse[:n]), mse[:n]), mse[n:]])
    return Denoised(x_t, action, text, mse, mse[n:] if len(mse) > n else None, timesteps)


def loss_weights(config: Config) -> dict[str, float]:
    """The keyword weights of `maths.dpg.actor_loss`, from objective.*."""
    objective = config.objective
    return dict(instance_weight=objective.instance_weight, prior_weight=objective.prior_weight,
                critic_weight=objective.critic_weight, gamma=objective.gamma)


def reward_terms(output: RewardOutput) -> dict[str, torch.Tensor]:
    """The batch means of the reward and of its diagnostics, for the logs."""
    return {"reward": output.scores.detach().float().mean(),
            **{f"reward/{key}": value.detach().float().mean() for key, value in output.diagnostics.items()}}


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Evaluate a module without recording gradients for its parameters (gradients still reach its inputs)."""
    module.requires_grad_(False)
    try:
        yield module
    finally:
        module.requires_grad_(True)


def needs_of(factory: Any, name: str) -> Needs:
    """The declared needs of an objective class (or a built objective)."""
    needs = getattr(factory, "needs", None)
    if not isinstance(needs, Needs):
        raise UserError(f"objective {name!r} declares no `needs = Needs(...)`: see "
                        f"rewardbooth.training.objectives.base for the interface")
    return needs


def build_objective_component(config: Config) -> Objective:
    """The configured objective, built (objective.name: a registered name or 'pkg.mod:Class')."""
    return objectives.get(config.objective.name)(config)


def gradient_free_names() -> str:
    """The registered objectives that do not backpropagate the reward, for error messages."""
    return ", ".join(name for name in objectives.names() if not objectives.get(name).needs.reward_gradient)
