"""The loop's gradient wiring on the tiny model: which loss reaches which parameters, computed on which samples.

Each test recomputes its expectation by an independent route (the scheduler's own forward process and
`pred_original_sample`, the VAE called directly) and fails if the corresponding line of the loop is broken:
a detached policy term, the critic trained by the actor loss or the policy by the critic loss, a noise level
read at the wrong index, prior samples leaking into the instance term, `direct` on a detached x0_hat or a
decoder without gradient, micro-steps that do not add up to the larger batch.
"""

import contextlib
import dataclasses
import json

import pytest
import torch
from diffusers import DDPMScheduler

from helpers import TINY_RUN
from rewardbooth.core.config import load_config
from rewardbooth.maths import dpg
from rewardbooth.training.loop import accumulate_gradients, make_policy
from rewardbooth.training.setup import build_run

SPY = "wiring_rewards:Spy"


@contextlib.contextmanager
def tiny_run(subject_dir, tmp_path, *overrides, model="tiny"):
    from accelerate.state import AcceleratorState, GradientState

    config = load_config("default", [*TINY_RUN, f"model.pretrained={model}", f"data.instance_dir={subject_dir}",
                                     f"train.output_dir={tmp_path / 'run'}", "validation.every=0", *overrides])
    try:
        run = build_run(config)
        yield run, config
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def first_batch(run, config, step=0):
    return run.data.draw(step, 0, config.train.batch_size, 0, 1).to(run.accelerator.device)


def losses_of(run, config, batch, **kwargs):
    policy = make_policy(run)
    return policy.objective.losses(policy, batch, run.process, config, run.reward, **kwargs)


def gradients(module):
    return {name: p.grad.detach().clone() if p.grad is not None else None for name, p in module.named_parameters()}


def zero_grad(*modules):
    for module in modules:
        module.zero_grad(set_to_none=True)


def assert_same_gradient(a, b, name, tolerance=1e-5):
    """Equal up to float summation order: the difference is tiny next to the gradient itself."""
    assert (a is None) == (b is None), name
    if a is not None:
        assert (a - b).norm() <= tolerance * max(a.norm(), b.norm(), 1e-12), \
            f"{name}: |difference| {(a - b).norm():.3g} vs |gradient| {a.norm():.3g}"


def policy_term_gradient(run, config, batch):
    """The loop's update with lambda = 1 minus the one with lambda = 0: the policy term's gradient alone."""
    losses_of(run, config, batch, score=False).terms["loss"].backward()
    with_policy = gradients(run.denoiser)
    zero_grad(run.denoiser)
    silent = dataclasses.replace(config, objective=dataclasses.replace(config.objective, critic_weight=0.0))
    losses_of(run, silent, batch, score=False).terms["loss"].backward()
    without_policy = gradients(run.denoiser)
    zero_grad(run.denoiser, run.critic)
    return {name: None if grad is None else grad - without_policy[name] for name, grad in with_policy.items()}


def assert_policy_term(policy_term, by_hand):
    """The loop's policy-term gradient is non-zero and equals the one computed by hand."""
    assert max(d.abs().max() for d in policy_term.values() if d is not None) > 0, \
        "the policy term does not change the update"
    for name, gradient in policy_term.items():
        if gradient is not None:
            assert_same_gradient(gradient, by_hand[name], name, tolerance=1e-4)


def reference_action(run, batch):
    """x_t by the scheduler's own forward process, then the UNet on the batch's text embedding, as diffusers'
    SD pipeline calls it (the tiny model is SD 1.x): the loop, through the family, must agree with this."""
    x_t = DDPMScheduler.from_config(run.parts.scheduler.config).add_noise(batch.x0, batch.noise, batch.timesteps)
    return x_t, run.denoiser(x_t, batch.timesteps, batch.conditioning.embeds["embeds"]).sample


def scheduler_x0(run, x_t, action, timesteps):
    """DDPMScheduler.step's pred_original_sample, sample by sample (unclipped: the loop never clips)."""
    scheduler = DDPMScheduler.from_config(run.parts.scheduler.config, clip_sample=False, thresholding=False)
    return torch.cat([scheduler.step(action[i:i + 1], int(t), x_t[i:i + 1]).pred_original_sample
                      for i, t in enumerate(timesteps)])


PRIOR = ["data.prior_preservation=true", "train.batch_size=2"]
NONZERO_CRITIC = ["critic.name=pooled", "critic.input=residual"]  # Q = -mean residual at step 0: dQ/da != 0


def test_actor_loss_gives_the_critic_no_gradient_and_the_critic_loss_gives_the_policy_none(subject_dir, tmp_path):
    with tiny_run(subject_dir, tmp_path, *PRIOR, *NONZERO_CRITIC) as (run, config):
        losses = losses_of(run, config, first_batch(run, config))
        losses.terms["loss"].backward(retain_graph=True)
        assert all(g is None or not g.any() for g in gradients(run.critic).values()), "actor pass trained Q"
        assert any(g is not None and g.any() for g in gradients(run.denoiser).values())
        zero_grad(run.denoiser, run.critic)
        losses.terms["critic_loss"].backward()
        assert all(g is None for g in gradients(run.denoiser).values()), "the critic loss reached the policy"
        assert any(g is not None and g.any() for g in gradients(run.critic).values())


def test_the_policy_term_reaches_theta_through_dq_da(subject_dir, tmp_path):
    """The update with lambda = 1 minus the update with lambda = 0 is exactly -gamma^t dQ/dtheta through a."""
    with tiny_run(subject_dir, tmp_path, *PRIOR, *NONZERO_CRITIC) as (run, config):
        batch = first_batch(run, config)
        policy_term = policy_term_gradient(run, config, batch)
        # By hand: the policy term alone, through the scheduler's forward process and pred_original_sample.
        n = batch.num_instance
        x_t, action = reference_action(run, batch)
        x0_hat = scheduler_x0(run, x_t[:n], action[:n], batch.timesteps[:n])
        q = run.critic(dpg.critic_features("residual", x_t[:n], action[:n], x0_hat, batch.x0[:n]),
                       batch.timesteps[:n])
        (-(dpg.discount(batch.timesteps[:n], config.objective.gamma) * q).mean()).backward()
        assert_policy_term(policy_term, gradients(run.denoiser))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_x0_hat_in_the_loop_is_the_schedulers_pred_original_sample(prediction_type, subject_dir, tiny_folder,
                                                                     tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_folder, model)
    scheduler_file = model / "scheduler" / "scheduler_config.json"
    scheduler_file.write_text(json.dumps({**json.loads(scheduler_file.read_text()), "prediction_type": prediction_type}))
    with tiny_run(subject_dir, tmp_path, *PRIOR, f"objective.reward={SPY}", model=str(model)) as (run, config):
        assert run.process.prediction_type == prediction_type
        batch = first_batch(run, config)
        losses_of(run, config, batch)
        seen = run.reward.seen[-1]
        x_t, action = reference_action(run, batch)
        n = batch.num_instance
        expected = scheduler_x0(run, x_t[:n], action[:n], batch.timesteps[:n])
    torch.testing.assert_close(seen, expected.detach(), atol=1e-5, rtol=1e-5)


def test_instance_and_prior_terms_are_computed_on_their_own_samples(subject_dir, tmp_path):
    with tiny_run(subject_dir, tmp_path, *PRIOR, "objective.name=baseline") as (run, config):
        batch = first_batch(run, config)
        terms = losses_of(run, config, batch).terms
        _, action = reference_action(run, batch)
        n = batch.num_instance
        per_sample = (action.detach() - batch.noise).square().mean(dim=(1, 2, 3))
    assert n == 2 and len(per_sample) == 4
    torch.testing.assert_close(terms["instance_loss"], per_sample[:n].mean(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(terms["prior_loss"], per_sample[n:].mean(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(terms["loss"].detach(), per_sample[:n].mean() + per_sample[n:].mean(),
                               atol=1e-6, rtol=1e-5)


def test_direct_mode_backpropagates_through_the_decoder(subject_dir, tmp_path):
    """direct with an image reward: the UNet's gradient is the one through VAE decoder and reward."""
    from wiring_rewards import brightness

    with tiny_run(subject_dir, tmp_path, *PRIOR, "objective.name=direct",
                  "objective.reward=wiring_rewards:Bright") as (run, config):
        batch = first_batch(run, config)
        losses = losses_of(run, config, batch)
        losses.terms["loss"].backward()
        from_loop = gradients(run.denoiser)
        zero_grad(run.denoiser)
        n, vae = batch.num_instance, run.parts.vae
        x_t, action = reference_action(run, batch)
        x0_hat = scheduler_x0(run, x_t[:n], action[:n], batch.timesteps[:n])
        images = ((vae.decode(x0_hat / vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)
        mse = (action - batch.noise).square().mean(dim=(1, 2, 3))
        loss = mse[:n].mean() + mse[n:].mean() - (dpg.discount(batch.timesteps[:n], 1.0) * brightness(images)).mean()
        loss.backward()
        by_hand = gradients(run.denoiser)
    assert losses.terms["policy_term"] != 0
    for name in from_loop:
        assert_same_gradient(from_loop[name], by_hand[name], name)


def test_gradient_accumulation_equals_the_larger_batch(subject_dir, tmp_path):
    """k micro-steps of batch b give the gradient (policy and critic) of one step of batch k*b."""
    results = []
    for batch_size, accumulation in ((2, 1), (1, 2)):
        with tiny_run(subject_dir, tmp_path / f"{batch_size}x{accumulation}", "data.prior_preservation=true",
                      "critic.name=released", f"train.batch_size={batch_size}",
                      f"train.gradient_accumulation_steps={accumulation}") as (run, config):
            terms, fit = accumulate_gradients(run, make_policy(run), config, 0)
            results.append((gradients(run.denoiser), gradients(run.critic), terms, fit))
    (unet_a, critic_a, terms_a, fit_a), (unet_b, critic_b, terms_b, fit_b) = results
    for grads_a, grads_b in ((unet_a, unet_b), (critic_a, critic_b)):
        assert any(g is not None and g.any() for g in grads_a.values())
        for name in grads_a:
            assert_same_gradient(grads_a[name], grads_b[name], name)
    for key in ("loss", "critic_loss", "instance_loss", "prior_loss", "reward"):
        torch.testing.assert_close(terms_a[key], terms_b[key], atol=1e-6, rtol=1e-5, msg=key)
    torch.testing.assert_close(fit_a[1], fit_b[1])


FEATURE_CRITIC = ["critic.name=feature", "critic.input=prediction", "critic.encoder=toy_encoder",
                  "objective.reward=toy_identity_blackbox"]


def test_the_feature_critic_reaches_theta_only_through_x0_hat_decoded_and_encoded(subject_dir, tmp_path):
    """The policy term of the feature critic is -gamma^t Q(f(decode(x0_hat))): recomputed by hand through the
    scheduler's pred_original_sample, the VAE and the encoder, it gives the loop's gradient."""
    with tiny_run(subject_dir, tmp_path, *PRIOR, *FEATURE_CRITIC) as (run, config):
        torch.manual_seed(0)
        for parameter in run.critic.parameters():  # off the constant start, so dQ/da != 0
            torch.nn.init.normal_(parameter, std=0.3)
        batch = first_batch(run, config)
        policy_term = policy_term_gradient(run, config, batch)
        n, vae = batch.num_instance, run.parts.vae
        x_t, action = reference_action(run, batch)
        x0_hat = scheduler_x0(run, x_t[:n], action[:n], batch.timesteps[:n])
        images = ((vae.decode(x0_hat / vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)
        encoder, _ = run.critic._frozen
        q = run.critic.trust * run.critic.value(encoder(images))
        (-(dpg.discount(batch.timesteps[:n], config.objective.gamma) * q).mean()).backward()
        assert_policy_term(policy_term, gradients(run.denoiser))
