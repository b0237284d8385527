"""The toy benchmark's claims are scored by a judge no reward and no critic encoder shares a weight with."""

from pathlib import Path

import pytest
import torch

from helpers import reachable_tensors
from rewardbooth.core.config import load_config
from rewardbooth.experiments.toyworld.experiment import OBJECTIVES, Setting, load_judges, training_overrides
from rewardbooth.rewards import RewardSetup, build_reward
from rewardbooth.rewards.base import reward_weights, rewards
from rewardbooth.rewards.encoders import make_encoder
from rewardbooth.toyworld import subjects


def shares_weights(network_tensors, tensors):
    return any(a.shape == b.shape and a.numel() > 8 and torch.equal(a, b)
               for a in network_tensors for b in tensors)


def networks_used(objective, tmp_path):
    """The rewards and critic encoder a benchmark objective's run builds."""
    subject = subjects.make_subject(100)
    config = load_config("default", training_overrides(subject, objective, 0, tmp_path, tmp_path / "class",
                                                       Setting()))
    setup = RewardSetup(reference_images=torch.rand(3, 3, 32, 32), identifier="sks", device=torch.device("cpu"))
    built = []
    scored = [config.objective.reward] + ([config.objective.scene_reward] if config.objective.scene_reward else [])
    if config.objective.name != "baseline":
        built += [build_reward(reward, config.objective.reward_options, setup) for reward in scored]
        for name in [name for reward in scored for name in reward_weights(reward)]:  # and every declared twin
            twin = getattr(rewards.get(name), "twin", None)
            if twin:
                built.append(build_reward(twin, None, setup))
    if config.objective.name == "dpg" and config.critic.name == "feature":
        built.append(make_encoder(config.critic.encoder, torch.device("cpu"), config.critic.encoder_model))
    return built


@pytest.mark.parametrize("objective", [name for name in OBJECTIVES if name != "base-model"])
def test_the_held_out_judge_shares_no_weight_with_any_reward_or_critic_encoder(objective, tmp_path):
    heldout = [*load_judges()["heldout"].parameters()]
    for network in networks_used(objective, tmp_path):
        assert not shares_weights(heldout, reachable_tensors(network)), (objective, network)


def test_the_walk_finds_a_judge_inside_a_reward():
    """The check can fail: the reward judge is found inside the reward it gives."""
    judge = [*load_judges()["judge"].parameters()]
    assert shares_weights(judge, reachable_tensors(networks_used("direct-toy-identity", Path("unused"))[0]))


def test_the_critic_encoder_is_neither_judge():
    encoder = reachable_tensors(make_encoder("toy_encoder", torch.device("cpu")))
    assert encoder and all(not shares_weights([*judge.parameters()], encoder) for judge in load_judges().values())


def test_the_alignment_reward_uses_the_reward_judge_never_the_held_out_one():
    setup = RewardSetup(reference_images=torch.rand(3, 3, 32, 32), identifier="sks", device=torch.device("cpu"))
    alignment = reachable_tensors(build_reward("toy_alignment", None, setup))
    judges = load_judges()
    assert shares_weights([*judges["judge"].parameters()], alignment)
    assert not shares_weights([*judges["heldout"].parameters()], alignment)
