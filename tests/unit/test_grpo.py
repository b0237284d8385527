"""GRPO's wiring on the tiny model: the ratio starts at 1 (the rollout's log-probabilities are the ones
recomputed), the loss's gradient is -mean(A * grad log pi) (the advantage's sign), and the anchor pulls the
adapters back toward the base (adapters switched off), recomputed here by an independent route."""

import contextlib

import pytest
import torch

from helpers import TINY_RUN
from rewardbooth.core.config import load_config
from rewardbooth.core.errors import UserError
from rewardbooth.training.loop import make_policy
from rewardbooth.training.objectives.grpo import rollout_generator
from rewardbooth.training.setup import build_run

SMALL = ["objective.name=grpo", "objective.grpo.group_size=3", "objective.grpo.num_steps=2",
         "objective.grpo.trained_steps=2", "objective.instance_weight=0", "objective.reward_resolution=32",
         "data.prior_preservation=false"]


@contextlib.contextmanager
def tiny_run(subject_dir, tmp_path, *overrides):
    from accelerate.state import AcceleratorState, GradientState

    config = load_config("default", [*TINY_RUN, f"data.instance_dir={subject_dir}", "validation.every=0",
                                     f"train.output_dir={tmp_path / 'run'}", *SMALL, *overrides])
    try:
        yield build_run(config), config
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def policy_gradient(run):
    grads = [p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in run.policy_parameters]
    run.optimizer.zero_grad(set_to_none=True)
    return torch.cat(grads)


def test_the_loss_is_the_advantage_weighted_log_prob_at_ratio_one(subject_dir, tmp_path):
    with tiny_run(subject_dir, tmp_path, "objective.reward=look_forward") as (run, config):
        policy, objective = make_policy(run), run.objective
        batch = run.data.draw(0, 0, 1, 0, 1)
        losses = objective.losses(policy, batch, run.process, config, run.reward)
        assert losses.terms["grpo/ratio"] == pytest.approx(1, abs=1e-4)  # on-policy: the same log-probs
        losses.terms["loss"].backward()
        actual = policy_gradient(run)
        # Independently: the same rollouts (same seed), every step trained, -mean(A * exp(log pi - old)).
        with torch.no_grad():
            rollouts, _ = objective.sample(policy, batch, run.process, run.reward, config, rollout_generator(batch))
        assert rollouts.advantages.abs().sum() > 0
        surrogate = 0
        for s in range(len(rollouts.times)):
            t = rollouts.times[s].expand(len(rollouts.advantages))
            action = run.denoiser(rollouts.states[s], t, rollouts.conditioning.embeds["embeds"]).sample
            _, log_prob = run.process.stochastic_step(rollouts.states[s], action, t,
                                                      rollouts.next_times[s].expand(len(t)), 1.0,
                                                      x_next=rollouts.next_states[s])
            surrogate = surrogate - (rollouts.advantages * (log_prob - rollouts.log_probs[s]).exp()).mean()
        (surrogate / len(rollouts.times)).backward()
        expected = policy_gradient(run)
        assert expected.norm() > 0
        torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item())


def test_the_anchor_pulls_lora_back_to_the_base(subject_dir, tmp_path):
    """With the reward constant, advantages are 0 and only beta * KL(pi || base) acts: 0 while the adapters
    are 0, positive once they moved, and descending it shrinks it."""
    with tiny_run(subject_dir, tmp_path, "method.name=lora", "objective.grpo.kl_weight=1",
                  "objective.reward=objective_probes:Constant") as (run, config):
        policy = make_policy(run)
        batch = run.data.draw(0, 0, 1, 0, 1)
        at_base = run.objective.losses(policy, batch, run.process, config, run.reward)
        assert at_base.terms["grpo/kl"] == pytest.approx(0, abs=1e-6)
        run.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for parameter in run.policy_parameters:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
        moved = run.objective.losses(policy, batch, run.process, config, run.reward)
        assert moved.terms["grpo/kl"] > 0
        moved.terms["loss"].backward()
        with torch.no_grad():
            for parameter in run.policy_parameters:
                parameter.sub_(1e-2 * parameter.grad / policy_gradient_norm(run))
        assert run.objective.losses(policy, batch, run.process, config, run.reward).terms["grpo/kl"] \
            < moved.terms["grpo/kl"]


def policy_gradient_norm(run):
    return torch.cat([p.grad.flatten() for p in run.policy_parameters if p.grad is not None]).norm()


def test_the_anchor_needs_adapters(subject_dir, tmp_path):
    with pytest.raises(UserError, match="method.name=lora, or objective.grpo.kl_weight=0"):
        with tiny_run(subject_dir, tmp_path, "objective.grpo.kl_weight=0.04"):
            pass


def test_a_process_without_a_stochastic_step_is_refused_in_one_line(subject_dir, tmp_path):
    """A third-party family whose process has no `stochastic_step` (not a RolloutProcess)."""

    class NoRollouts:
        def __init__(self, process):
            self.process = process

        def __getattr__(self, name):
            if name in ("sampling_timesteps", "stochastic_step"):
                raise AttributeError(name)
            return getattr(self.process, name)

    with tiny_run(subject_dir, tmp_path, "objective.reward=look_forward") as (run, config):
        batch = run.data.draw(0, 0, 1, 0, 1)
        with pytest.raises(UserError, match="use objective.name=dpg or direct there") as refused:
            run.objective.losses(make_policy(run), batch, NoRollouts(run.process), config, run.reward)
        assert len(str(refused.value).splitlines()) == 1
