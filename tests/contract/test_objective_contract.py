"""One contract every registered objective passes: registering an objective enrols it here.

Nothing here knows any one objective: each check reads only what the objective declares (`needs`) and what a
step of the tiny model does with it. A step gives a finite scalar 'loss' whose gradient reaches the policy;
what the objective declares is built and nothing else (no reward, no critic unless asked); a reward it does
not declare is never called; a reward whose gradient it does not declare is never differentiated (a black box
trains); a reward whose gradient it declares is differentiated, and a black box is refused before any work.
"""

import contextlib

import pytest
import torch

from helpers import TINY_RUN
from objective_probes import CALLS
from rewardbooth.core.config import load_config
from rewardbooth.core.errors import UserError
from rewardbooth.training.loop import make_policy, train_step
from rewardbooth.training.objectives import needs_of, objectives
from rewardbooth.training.setup import build_run, check_component_names

PROBE, BLACK = "objective_probes:Probe", "objective_probes:BlackProbe"
USER = "objective_probes:ScaledBaseline"
# Every objective's own options at their cheapest (options an objective does not read change nothing).
SMALLEST = ["objective.grpo.group_size=2", "objective.grpo.num_steps=2", "objective.grpo.trained_steps=1"]


@pytest.fixture(params=[*objectives.names(), USER])
def name(request):
    return request.param


@contextlib.contextmanager
def tiny_run(subject_dir, tmp_path, name, *overrides):
    from accelerate.state import AcceleratorState, GradientState

    config = load_config("default", [*TINY_RUN, f"data.instance_dir={subject_dir}", "validation.every=0",
                                     f"train.output_dir={tmp_path / 'run'}", f"objective.name={name}",
                                     "critic.diagnostics_every=1", "critic.residual_prior=false", *SMALLEST, *overrides])
    CALLS.clear()
    try:
        yield build_run(config), config
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def needs(name):
    return needs_of(objectives.get(name), name)


def one_micro_batch(run, config, reward):
    """The objective's losses of the first micro-batch, backpropagated as the loop does."""
    policy = make_policy(run)
    batch = run.data.draw(0, 0, config.train.batch_size, 0, 1).to(run.accelerator.device)
    losses = policy.objective.losses(policy, batch, run.process, config, reward, score=True, diagnose=True)
    losses.terms["loss"].backward()
    return losses


def test_a_step_trains_the_policy_and_builds_and_uses_what_it_declares(name, subject_dir, tmp_path):
    declared = needs(name)
    with tiny_run(subject_dir, tmp_path, name, f"objective.reward={PROBE}") as (run, config):
        assert (run.reward is not None) == declared.reward
        assert (run.critic is not None) == declared.critic == (run.critic_optimizer is not None)
        losses = one_micro_batch(run, config, run.reward)
        loss = losses.terms["loss"]
        assert loss.shape == () and torch.isfinite(loss)
        grads = [p.grad for p in run.policy_parameters if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), "the loss's gradient must reach the policy"
        if declared.reward:
            assert CALLS, "a declared reward must be called on a scoring step"
        if declared.reward_gradient:  # its gradient reached x0_hat, which carries the policy's graph
            assert any(call["grad"] is not None and call["grad"].abs().sum() > 0 for call in CALLS)
        run.optimizer.zero_grad(set_to_none=True)
        before = {k: v.clone() for k, v in run.critic.state_dict().items()} if declared.critic else {}
        logged, _ = train_step(run, make_policy(run), config, 0)
        assert logged["skipped"] == 0.0
        if declared.critic:  # the critic it asked for is trained by the step
            assert any(not torch.equal(before[k], v) for k, v in run.critic.state_dict().items())


def test_a_reward_it_does_not_declare_is_never_called(name, subject_dir, tmp_path):
    if needs(name).reward:
        pytest.skip("declares a reward")
    with tiny_run(subject_dir, tmp_path, name) as (run, config):
        from objective_probes import Probe

        one_micro_batch(run, config, Probe(None))  # offered one anyway
        assert CALLS == []


def test_a_black_box_trains_unless_the_gradient_is_declared(name, subject_dir, tmp_path):
    declared = needs(name)
    if not declared.reward:
        pytest.skip("declares no reward")
    if declared.reward_gradient:
        with pytest.raises(UserError, match="not differentiable"):
            with tiny_run(subject_dir, tmp_path, name, f"objective.reward={BLACK}"):
                pass
        return
    with tiny_run(subject_dir, tmp_path, name, f"objective.reward={BLACK}") as (run, config):
        logged, _ = train_step(run, make_policy(run), config, 0)
        assert logged["skipped"] == 0.0 and torch.isfinite(torch.as_tensor(logged["loss"]))
        assert CALLS and not any(call["requires_grad"] for call in CALLS)  # scored, never differentiated


def test_an_unknown_objective_fails_in_one_line_naming_the_registered_ones():
    """Checked against the registry before any slow work (the config holds any string, as for methods)."""
    config = load_config("default", ["objective.name=ppo"])
    with pytest.raises(UserError) as error:
        check_component_names(config)
    assert str(error.value) == (f"unknown objective 'ppo': choose one of {', '.join(objectives.names())} or give "
                                f"your own as 'package.module:factory'")
