"""Objectives as a registry: `baseline` (DreamBooth's loss), `direct` (backpropagate a differentiable reward),
`dpg` (climb a critic that learns any reward), `grpo` (rollout policy gradients). Importing this package
registers them."""

from rewardbooth.training.objectives import baseline, direct, dpg, grpo  # noqa: F401  (registration)
from rewardbooth.training.objectives.base import (
    Losses,
    Needs,
    Objective,
    Policy,
    build_objective_component,
    frozen,
    gradient_free_names,
    needs_of,
    objectives,
)

__all__ = ["Losses", "Needs", "Objective", "Policy", "build_objective_component", "frozen", "gradient_free_names",
           "needs_of", "objectives"]
