"""The setup side of prompts without photos (objective.scene_share, data.scene_prompts, objective.anchor_weight):
what is refused before any work, and each concept's scene prompts.

A prompt-only row has no reference photo: its state is sampled by the policy itself (the objective side:
rewardbooth.training.objectives.prompt_only), it gets no DreamBooth mse and its reward sees no reference
latent. So a reward that compares x0_hat with the reference latent (`needs_reference`, e.g. look_forward), and a
critic whose input is that comparison (critic.input=residual), are refused when scene_share > 0: image rewards
(identity against the reference photos, agreement with the prompt) score both kinds of rows alike. A weighted
sum that applied look_forward to the reference rows only is not built: its value would mean a different
thing on each kind of row, and the critic learns one function.
"""

from __future__ import annotations

from rewardbooth.core.config import Config
from rewardbooth.core.errors import UserError
from rewardbooth.data.concepts import concepts_of
from rewardbooth.data.scene_prompts import held_out_contexts, scene_prompts_per_concept, scene_templates
from rewardbooth.methods import methods
from rewardbooth.rewards import reward_weights, rewards
from rewardbooth.toyworld.subjects import scene_templates as toy_templates
from rewardbooth.training.objectives import needs_of, objectives


def check_prompt_only(config: Config) -> None:
    """Refuse, in one line and before any slow work, a scene share or an anchor the run cannot honour."""
    objective = config.objective
    if objective.anchor_weight > 0:
        check_anchor(config)
    if objective.scene_reward is not None:
        check_scene_reward(config)
    if objective.scene_share == 0:
        return
    if not config.data.scene_prompts:
        raise UserError(f"objective.scene_share={objective.scene_share} needs prompts without photos: set "
                        f"data.scene_prompts to objects, live, toy or a file of prompts")
    if not needs_of(objectives.get(objective.name), objective.name).reward:
        raise UserError(f"objective.scene_share={objective.scene_share} trains prompt-only states by a reward, "
                        f"which objective.name={objective.name} has none of: use dpg, direct or grpo")
    # With objective.scene_reward, objective.reward scores the photo rows only: it may compare with their latent.
    field, scoring = (("reward", objective.reward) if objective.scene_reward is None
                      else ("scene_reward", objective.scene_reward))
    for name in reward_weights(scoring):
        if getattr(rewards.get(name), "needs_reference", False):
            raise UserError(f"objective.{field} {name!r} compares x0_hat with the reference latent, which prompt-only "
                            f"states (objective.scene_share>0) have none of: use image rewards, e.g. "
                            f"{{toy_identity: 1, toy_alignment: 1}}, or objective.scene_share=0")
    if needs_of(objectives.get(objective.name), objective.name).critic and config.critic.input == "residual":
        raise UserError("critic.input=residual compares x0_hat with the reference latent, which prompt-only states "
                        "(objective.scene_share>0) have none of: use critic.input=prediction")
    scene_prompts(config)  # a missing file or a prompt naming no concept fails here, before any slow work


def check_scene_reward(config: Config) -> None:
    """A reward for the prompt-only rows needs them, and an objective that scores rows without a critic: one
    critic learns one function of x0_hat, which two rewards on two kinds of rows would make two."""
    objective = config.objective
    if objective.scene_share == 0:
        raise UserError(f"objective.scene_reward={objective.scene_reward} scores prompt-only rows: set "
                        f"objective.scene_share > 0 (and data.scene_prompts), or remove objective.scene_reward")
    if needs_of(objectives.get(objective.name), objective.name).critic:
        raise UserError(f"objective.scene_reward gives prompt-only rows another reward than objective.reward, which "
                        f"one critic cannot learn beside it (objective.name={objective.name}): use objective.name="
                        f"direct or grpo, or put both in objective.reward")


def check_anchor(config: Config) -> None:
    """The anchor compares the policy with the base model on prompt-only states: it needs them, and the base."""
    objective = config.objective
    if objective.name == "grpo":
        raise UserError("objective.anchor_weight is for dpg and direct: grpo anchors to the base model by "
                        "objective.grpo.kl_weight")
    if objective.scene_share == 0:
        raise UserError(f"objective.anchor_weight={objective.anchor_weight} acts on prompt-only states: set "
                        f"objective.scene_share > 0 (and data.scene_prompts)")
    if not getattr(methods.get(config.method.name), "adapters_only", False):
        # A full fine-tune would need a frozen copy of the denoiser (its size again in memory): not built.
        raise UserError(f"objective.anchor_weight={objective.anchor_weight} compares with the base model by "
                        f"switching adapters off, but method.name={config.method.name} trains the base weights: "
                        f"use method.name=lora, or objective.anchor_weight=0")


def scene_prompts(config: Config) -> dict[str, list[str]]:
    """{instance prompt: its scene prompts} for every concept; empty when scene_share is 0."""
    if config.objective.scene_share == 0:
        return {}
    concepts = [(concept.instance_prompt, concept.identifier) for concept in concepts_of(config.data)]
    source = config.data.scene_prompts
    return scene_prompts_per_concept(scene_templates(source, toy_templates()), concepts, held_out_contexts(source))
