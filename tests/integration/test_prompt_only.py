"""Prompts without photos in the loop, on the tiny model: a prompt-only row acts at a state the policy sampled,
gets no DreamBooth mse, shows the reward no reference latent, and the anchor pulls the policy back toward the
base model on it. Each test fails when its line is cut (tools/mutants.py: prompt-only-*, anchor-*)."""

import contextlib
import dataclasses
import json
import math

import pytest
import torch

from helpers import TINY_RUN, run_cli, tiny_args
from rewardbooth.core.config import load_config
from rewardbooth.core.errors import UserError
from rewardbooth.rewards import RewardContext, RewardSetup, make_reward
from rewardbooth.toyworld import subjects
from rewardbooth.training.loop import make_policy
from rewardbooth.training.objectives.base import Denoised, denoise
from rewardbooth.training.objectives.prompt_only import anchor_terms
from rewardbooth.training.objectives.sampling import SCENE_ETA, grid_index, rollout_generator
from rewardbooth.training.prompt_only import check_prompt_only
from rewardbooth.training.setup import build_run

SCENES = ["objective.scene_share=0.5", "data.scene_prompts=live", "train.batch_size=4",
          "data.prior_preservation=false", "critic.input=prediction"]


def config_of(subject_dir, tmp_path, *overrides):
    return load_config("default", [*TINY_RUN, f"data.instance_dir={subject_dir}", f"train.output_dir={tmp_path / 'run'}",
                                   "validation.every=0", *SCENES, *overrides])


@contextlib.contextmanager
def tiny_run(config):
    from accelerate.state import AcceleratorState, GradientState

    try:
        yield build_run(config)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


@pytest.fixture(scope="module")
def direct_run(subject_dir, tmp_path_factory):
    """One `direct` run shared by the tests that only read it (building one costs seconds)."""
    config = config_of(subject_dir, tmp_path_factory.mktemp("direct"), "objective.name=direct",
                       "objective.reward=wiring_rewards:Contexts")
    with tiny_run(config) as run:
        yield run, config


def mixed_batch(run, config):
    """The first step's batch with two prompt-only rows and two reference rows, and those rows."""
    for step in range(50):
        batch = run.data.draw(step, 0, config.train.batch_size, 0, 1)
        if batch.scene.sum() == 2:
            run.step = step
            return batch, batch.scene.nonzero().flatten().tolist(), (~batch.scene).nonzero().flatten().tolist()
    raise AssertionError("no mixed batch in 50 steps")


@pytest.mark.parametrize("objective", ["direct", "dpg"])
def test_prompt_only_rows_never_carry_a_reference_latent_into_the_reward(objective, direct_run, subject_dir, tmp_path):
    config = config_of(subject_dir, tmp_path, "objective.name=dpg", "objective.reward=wiring_rewards:Contexts")
    with contextlib.nullcontext(direct_run) if objective == "direct" else tiny_run(config) as run:
        if objective == "direct":
            run, config = run
        batch, scene_rows, reference_rows = mixed_batch(run, config)
        policy = make_policy(run)
        run.reward.seen.clear()
        policy.objective.losses(policy, batch, run.process, config, run.reward)
        seen = {tuple(context.prompts): context for context in run.reward.seen}
    scene = seen.pop(tuple(batch.prompts[row] for row in scene_rows))
    assert scene.x0 is None and all("photo" not in prompt for prompt in scene.prompts)
    reference = seen.pop(tuple(batch.prompts[row] for row in reference_rows))
    assert torch.equal(reference.x0, batch.x0[reference_rows].float())


def test_the_look_forward_reward_cannot_score_a_state_without_a_reference():
    reward = make_reward("look_forward", RewardSetup(torch.rand(1, 3, 8, 8), "sks", torch.device("cpu")))
    with pytest.raises(ValueError, match="prompt-only states do not have"):
        reward(torch.zeros(1, 4, 2, 2), RewardContext(x0=None, prompts=["a sks dog at a picnic"]))


@pytest.mark.parametrize("overrides, message", [
    (["objective.reward=look_forward"], "objective.reward 'look_forward' compares x0_hat with the reference latent"),
    (["critic.input=residual", "objective.reward=wiring_rewards:Bright"], "critic.input=residual compares"),
    (["data.scene_prompts=null"], "needs prompts without photos"),
    (["objective.name=baseline"], "which objective.name=baseline has none of"),
    (["objective.anchor_weight=1", "objective.reward=wiring_rewards:Bright"], "but method.name=dreambooth trains"),
    (["objective.anchor_weight=1", "objective.scene_share=0", "method.name=lora"], "acts on prompt-only states"),
    (["data.scene_prompts=nowhere.txt", "objective.reward=wiring_rewards:Bright"], "is neither objects, live, toy"),
    (["objective.name=direct", "objective.scene_reward=look_forward"], "objective.scene_reward 'look_forward' compares"),
    (["objective.scene_reward=wiring_rewards:Bright", "objective.reward=wiring_rewards:Bright"],
     "one critic cannot learn beside it"),
    (["objective.name=direct", "objective.scene_share=0", "objective.scene_reward=wiring_rewards:Bright"],
     "scores prompt-only rows: set objective.scene_share"),
])
def test_what_prompt_only_states_cannot_honour_is_refused_in_one_line(overrides, message, subject_dir, tmp_path):
    with pytest.raises(UserError, match=message):
        check_prompt_only(config_of(subject_dir, tmp_path, *overrides))


def test_the_scene_reward_scores_the_prompt_only_rows_and_the_reward_the_photo_rows(subject_dir, tmp_path):
    # objective.reward may then compare with the reference latent: only photo rows reach it.
    check_prompt_only(config_of(subject_dir, tmp_path, "objective.name=direct", "objective.reward=look_forward",
                                "objective.scene_reward=wiring_rewards:Bright"))
    config = config_of(subject_dir, tmp_path, "objective.name=direct", "objective.reward=wiring_rewards:Contexts",
                       "objective.scene_reward=wiring_rewards:Contexts")
    with tiny_run(config) as run:
        batch, scene_rows, reference_rows = mixed_batch(run, config)
        policy = make_policy(run)
        policy.objective.losses(policy, batch, run.process, config, run.reward)
    photo, scene = run.reward.photo.seen, run.reward.scene.seen
    assert [context.prompts for context in scene] == [[batch.prompts[row] for row in scene_rows]]
    assert [context.prompts for context in photo] == [[batch.prompts[row] for row in reference_rows]]
    assert scene[0].x0 is None and photo[0].x0 is not None


def with_reward_options(config, options):
    """The config with objective.reward_options set in code (a dotted reward name is no YAML mapping key)."""
    return dataclasses.replace(config, objective=dataclasses.replace(config.objective, reward_options=options))


def test_reward_options_reach_the_reward_and_the_scene_reward_that_use_them(subject_dir, tmp_path):
    config = config_of(subject_dir, tmp_path, "objective.name=direct", "objective.reward=wiring_rewards:Scaled",
                       "objective.scene_reward=wiring_rewards:OtherScaled")
    config = with_reward_options(config, {"wiring_rewards:Scaled": {"gain": 2.0},
                                          "wiring_rewards:OtherScaled": {"gain": 3.0}})
    with tiny_run(config) as run:
        assert (run.reward.photo.gain, run.reward.scene.gain) == (2.0, 3.0)
    config = with_reward_options(config, {"wiring_rewards:Scaled": {"gain": 2.0}, "clip_text": {"model": "x"}})
    with pytest.raises(UserError, match="options for 'clip_text', which neither objective.reward nor"), \
            tiny_run(config):
        pass


def test_prompt_only_rows_add_no_denoising_loss_and_reference_rows_keep_theirs(direct_run):
    run, config = direct_run
    with torch.no_grad():
        policy, (batch, scene, reference) = make_policy(run), mixed_batch(run, config)
        mixed = denoise(policy, batch, run.process, config.objective.scene_steps)
        run.data.scene_share = 0.0  # the same draws without prompt-only rows (they are drawn last)
        plain = denoise(policy, run.data.draw(run.step, 0, config.train.batch_size, 0, 1), run.process)
        run.data.scene_share = config.objective.scene_share
        losses = policy.objective.losses(policy, batch, run.process, config, run.reward)
    assert torch.equal(mixed.mse[scene], torch.zeros(2)) and plain.mse[scene].min() > 0
    torch.testing.assert_close(mixed.mse[reference], plain.mse[reference])
    torch.testing.assert_close(losses.terms["instance_loss"], plain.mse[reference].sum() / 4)


def test_grid_index_counts_the_sampler_steps_before_the_state():
    grid = torch.tensor([901, 801, 701, 601, 501, 401, 301, 201, 101, 1])
    assert grid_index(grid, torch.tensor([999, 901, 900, 450, 1, 0])).tolist() == [0, 0, 1, 5, 9, 9]


def test_prompt_only_states_are_sampled_by_the_policy_from_the_rows_noise(direct_run):
    run, config = direct_run
    with torch.no_grad():
        policy, (batch, (first, last), reference) = make_policy(run), mixed_batch(run, config)
        grid = run.process.sampling_timesteps(config.objective.scene_steps)
        # first: above the grid, no step (pure noise); last: one sampler step, grid[0] -> grid[1]
        batch.timesteps[[first, last, *reference]] = torch.tensor([999, int(grid[1]), 500, 500])
        step = denoise(policy, batch, run.process, config.objective.scene_steps)
        diffused = run.process.diffuse(batch.x0, batch.noise, batch.timesteps)
        # The same step by hand: the policy's action at (noise, grid[0]), the process's own stochastic step.
        rows, t = [first, last], grid[0].expand(2)
        action, _ = policy.family.denoise(policy.denoiser, batch.noise[rows], t, batch.conditioning.select(rows))
        by_hand, _ = run.process.stochastic_step(batch.noise[rows], action.float(), t, grid[1].expand(2), SCENE_ETA,
                                                 rollout_generator(batch))
    assert step.timesteps[[first, last, *reference]].tolist() == [int(grid[0]), int(grid[1]), 500, 500]
    assert torch.equal(step.x_t[first], batch.noise[first]) and torch.equal(step.x_t[reference], diffused[reference])
    torch.testing.assert_close(step.x_t[last], by_hand[1])


def lora_parameters(denoiser):
    return {name: p for name, p in denoiser.named_parameters() if "lora_" in name}


def test_the_anchor_is_zero_at_the_base_and_its_gradient_points_back_toward_it(subject_dir, tmp_path):
    config = config_of(subject_dir, tmp_path, "objective.name=direct", "objective.reward=wiring_rewards:Bright",
                       "method.name=lora", "objective.anchor_weight=1", "objective.scene_share=1")
    with tiny_run(config) as run:
        policy, batch = make_policy(run), run.data.draw(0, 0, config.train.batch_size, 0, 1)
        at_base = anchor_terms(policy, denoise(policy, batch, run.process, config.objective.scene_steps), batch, config)
        lora = lora_parameters(run.denoiser)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():  # theta away from theta_base: the adapters' B (zero at the base) moved
            for name, p in lora.items():
                if "lora_B" in name:
                    p.add_(0.05 * torch.randn(p.shape, generator=generator))
        step = denoise(policy, batch, run.process, config.objective.scene_steps)
        terms = anchor_terms(policy, step, batch, config)
        terms["anchor_term"].backward()
        with torch.no_grad():
            toward_base = sum((p.grad * p).sum() for name, p in lora.items() if "lora_B" in name)
            for p in lora.values():
                p.sub_(0.1 * p.grad)
            moved, _ = policy.family.denoise(policy.denoiser, step.x_t, step.timesteps, batch.conditioning)
            after = anchor_terms(policy, Denoised(step.x_t, moved, step.text, step.mse, None, step.timesteps),
                                 batch, config)
    assert at_base["anchor"] == 0
    assert terms["anchor"] > 0 and any(p.grad.abs().sum() > 0 for p in lora.values())
    assert toward_base > 0  # -gradient has a negative component along theta - theta_base
    assert after["anchor"] < terms["anchor"]


def read_metrics(output_dir):
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective", ["dpg", "direct"])
def test_a_run_with_prompt_only_states_trains_end_to_end(objective, subject_dir, tmp_path):
    out = tmp_path / objective
    assert run_cli(tiny_args(subject_dir, out, f"objective.name={objective}", "train.max_steps=2",
                             "validation.every=0", *SCENES, "train.batch_size=2",
                             "objective.reward=wiring_rewards:Bright", "objective.scene_steps=3")) == 0
    rows = read_metrics(out)
    assert len(rows) == 2 and all(row["skipped"] == 0 and math.isfinite(row["loss"]) for row in rows)
    assert all("scene/share" in row for row in rows) and any(row["scene/share"] > 0 for row in rows)
    assert (out / "model_index.json").is_file() or any(out.glob("*.safetensors"))


def test_the_toy_recipe_trains_identity_and_alignment_on_prompt_only_states_with_the_anchor(tmp_path):
    """The toy world end to end: LoRA, direct on {toy_identity, toy_alignment}, the toy scene prompts, the anchor."""
    subject = subjects.make_subject(100)
    subjects.write_subject(subject, tmp_path / "subject")
    out = tmp_path / "toy"
    assert run_cli(["train", "default", "model.pretrained=toy", f"data.instance_dir={tmp_path / 'subject'}",
                    f"data.instance_prompt={subjects.instance_prompt(subject)}", "data.resolution=32",
                    "data.prior_preservation=false", "data.scene_prompts=toy", "objective.scene_share=0.5",
                    "objective.name=direct", "objective.reward={toy_identity: 1, toy_alignment: 1}",
                    "method.name=lora", "objective.anchor_weight=1", "objective.scene_steps=4",
                    "train.batch_size=4", "train.max_steps=2", "train.report_to=none", "train.checkpoint_every=0",
                    "validation.every=0", f"train.output_dir={out}"]) == 0
    rows = read_metrics(out)
    assert all(math.isfinite(row["loss"]) and row["skipped"] == 0 for row in rows)
    scene_rows = [row for row in rows if "scene/reward" in row]
    assert scene_rows and all(0 <= row["scene/reward/toy_alignment"] <= 1 for row in scene_rows)
    assert all("anchor" in row for row in rows)
