"""What objectives sample from the policy itself: rollouts' randomness, the base model (LoRA adapters off), and
the states of prompts without photos.

A prompt-only row (objective.scene_share, data.scene_prompts) has no photo to noise, so its state comes from the
model: the current policy samples it from noise without gradients, on the family's own sampler grid
(`process.sampling_timesteps(objective.scene_steps)`) with its own stochastic step (`process.stochastic_step`,
at noise scale `SCENE_ETA` = 1: DDIM with eta = 1 is the DDPM posterior, an ancestral sampler whose states are
distributed as the model's own marginals at each step; for the flow families Flow-GRPO's SDE step at a = 1).
Where it stops is the row's own drawn time (the family's training timestep density) snapped to the grid: the
state is the sample at the first grid time not above it, k = #{grid times > t} steps in, so a prompt-only state
is as noisy as the reference states around it (k = 0: pure noise). Then the objective acts there with
gradients and looks forward to x0_hat as for any state. The current policy (not the base) samples, so the
states are the ones the policy will meet; cost: at most scene_steps - 1 denoiser forwards without a graph on
the prompt-only rows, per micro-batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from rewardbooth.core.errors import UserError
from rewardbooth.models.families import Process
from rewardbooth.training.batches import Batch

if TYPE_CHECKING:
    from rewardbooth.training.objectives.base import Policy

SCENE_ETA = 1.0


def rollout_generator(batch: Batch) -> torch.Generator:
    """The rollouts' randomness, seeded by the batch's own noise: the batch is drawn from (seed, step, micro,
    process), so a resumed or repeated run samples the same groups."""
    bits = batch.noise.flatten()[:16].detach().double().cpu()
    return torch.Generator().manual_seed(int((bits * 1e6).round().abs().sum().item()) % (2 ** 62))


@contextlib.contextmanager
def adapters_off(denoiser: nn.Module) -> Iterator[None]:
    """The base model, for LoRA: the same denoiser with its adapters disabled (diffusers' peft integration)."""
    module = getattr(denoiser, "module", denoiser)  # unwrap DDP
    module.disable_adapters()
    try:
        yield
    finally:
        module.enable_adapters()


def grid_index(grid: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """How many sampler steps to take before acting: #{grid times > t}, at most S - 1.

    Shape: grid (S,) descending, timesteps (B,) -> (B,) int64
    """
    return (grid.view(1, -1) > timesteps.view(-1, 1).to(grid.dtype)).sum(dim=1).clamp(max=len(grid) - 1)


@torch.no_grad()
def prompt_only_states(policy: Policy, batch: Batch, process: Process, x_t: torch.Tensor, timesteps: torch.Tensor,
                       num_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t and timesteps with each prompt-only row's replaced by a state the policy samples from its noise.

    Shape: x_t (B, C, h, w), timesteps (B,) -> the same
    """
    rows = batch.scene.nonzero().flatten()
    if len(rows) == 0:
        return x_t, timesteps
    if not hasattr(process, "stochastic_step"):  # not a RolloutProcess
        raise UserError(f"objective.scene_share samples prompt-only states with a stochastic step, which the "
                        f"{policy.family.name} family's process does not have: use objective.scene_share=0")
    grid = process.sampling_timesteps(num_steps, tuple(x_t.shape[-2:])).to(x_t.device)
    stops = grid_index(grid, timesteps[rows])
    conditioning, generator = batch.conditioning.select(rows), rollout_generator(batch)
    x = batch.noise[rows].float()
    for j in range(int(stops.max())):
        t, t_next = grid[j].expand(len(rows)), grid[j + 1].expand(len(rows))
        action, _ = policy.family.denoise(policy.denoiser, x.to(x_t.dtype), t, conditioning, policy.text_encoders,
                                          policy.size_ids(batch))
        moved, _ = process.stochastic_step(x, action.float(), t, t_next, SCENE_ETA, generator)
        x = torch.where((stops > j).view(-1, *[1] * (x.dim() - 1)), moved, x)  # rows already there stay
    return x_t.index_put((rows,), x.to(x_t.dtype)), timesteps.index_put((rows,), grid[stops].to(timesteps.dtype))
