"""The training loop: DreamBooth-style fine-tuning with an optional deterministic-policy-gradient critic.

One optimizer step, read top to bottom (``compute_losses`` then ``train``):
  batch -> x_t -> action a = denoiser(x_t, t, c) (the family calls it) -> x0_hat (look forward) -> r(x0_hat)
  -> actor loss  w_inst*mse_inst + w_prior*mse_prior - lambda*gamma^t*Q(s, a)   (Q's weights frozen)
  -> critic loss (Q(s, a.detach()) - r)^2                                        (policy untouched)
  -> clip, step both optimizers -> log / validate / checkpoint.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file
from torch import nn

from rewardbooth.core.config import Config, TrainConfig, save_config
from rewardbooth.core.errors import UserError
from rewardbooth.core.progress import progress
from rewardbooth.core.storage import disk_errors
from rewardbooth.data.concepts import concepts_of
from rewardbooth.evaluation.plots import make_grid
from rewardbooth.maths import dpg
from rewardbooth.methods.base import after_step
from rewardbooth.models.families import Process
from rewardbooth.rewards import Reward, RewardContext, RewardOutput, as_output
from rewardbooth.training.batches import Batch, decode_latents
from rewardbooth.training.checkpoints import (
    check_output_dir,
    load_checkpoint,
    prepare_output_dir,
    publish_result,
    save_checkpoint,
)
from rewardbooth.training.critic_diagnostics import FitWindow, alignment_terms
from rewardbooth.training.monitoring import MetricsLog, plot_metrics, render_samples, validation_prompts
from rewardbooth.training.selection import Selection
from rewardbooth.training.setup import RunSetup, build_run

logger = logging.getLogger(__name__)


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


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Evaluate a module without recording gradients for its parameters (gradients still reach its inputs)."""
    module.requires_grad_(False)
    try:
        yield module
    finally:
        module.requires_grad_(True)


@dataclass
class Losses:
    """What one micro-batch contributes: loss terms (scalars; "loss" and "critic_loss" are backpropagated, all
    are logged) and, on scoring steps, the critic's fit: (Q(s, a_taken) before its update, r), per sample."""

    terms: dict[str, torch.Tensor]
    fit: tuple[torch.Tensor, torch.Tensor] | None = None


def compute_losses(policy: Policy, batch: Batch, process: Process, config: Config, reward_fn: Reward | None, score: bool = True, diagnose: bool = False) -> Losses:
    """Every loss of one micro-batch. Instance samples are batch[:n], prior samples batch[n:].

    With `score` false (steps between `objective.reward_every`), DPG skips the reward and the critic update;
    the policy still climbs the critic. With `diagnose`, a DPG scoring step also measures how well dQ/da
    matches the reward's gradient (rewardbooth.training.critic_diagnostics).
    """
    objective, n = config.objective, batch.num_instance
    # 1. Forward diffusion, as the model family defines it (DDPM: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps).
    x_t = process.diffuse(batch.x0, batch.noise, batch.timesteps)
    # 2. Act: the deterministic policy's action is the denoiser's output, conditioned as the family conditions it.
    action, text = policy.family.denoise(policy.denoiser, x_t, batch.timesteps, batch.conditioning,
                                         policy.text_encoders, policy.micro_conditioning)
    # 3. Denoising losses (the DreamBooth objective), in the model's own parameterization.
    target = process.target(batch.x0, batch.noise, batch.timesteps)
    mse = dpg.per_sample_mse(action, target)
    prior_mse = mse[n:] if len(mse) > n else None
    weights = dict(instance_weight=objective.instance_weight, prior_weight=objective.prior_weight,
                   critic_weight=objective.critic_weight, gamma=objective.gamma)
    if objective.name == "baseline":
        return Losses(dpg.actor_loss(mse[:n], prior_mse, None, batch.timesteps[:n], **weights))
    # 4. Look forward to x0_hat.
    x_t, action, x0, timesteps = x_t[:n], action[:n], batch.x0[:n], batch.timesteps[:n]
    x0_hat = process.look_forward(x_t, action, timesteps)
    context = RewardContext(x0=x0.float(), prompts=batch.prompts[:n],
                            decode=partial(decode_latents, policy.vae, policy.latent_space,
                                           size=objective.reward_resolution))
    if objective.name == "direct":
        # The reward itself in place of Q: its gradient flows through x0_hat (and the VAE decoder, for an
        # image reward) into the policy.
        output = as_output(reward_fn(x0_hat.float(), context))
        return Losses({**dpg.actor_loss(mse[:n], prior_mse, output.scores, timesteps, **weights),
                       **reward_terms(output)})
    # 5. Actor: climb Q through dQ/da with the critic's weights frozen (deterministic policy gradient).
    features = dpg.critic_features(config.critic.input, x_t, action, x0_hat, x0)
    critic_text = text[:n].detach()
    with frozen(policy.critic_module) as critic:
        q_policy = critic(features, timesteps, critic_text)
    terms = dpg.actor_loss(mse[:n], prior_mse, q_policy, timesteps, **weights)
    if not score:
        return Losses(terms)
    # 6. Score x0_hat (a regression target, never differentiated: no graph through the VAE or a backbone) and
    # regress Q(s, a_taken) on it, with the action detached so theta is untouched.
    with torch.no_grad():
        output = as_output(reward_fn(x0_hat.detach().float(), context))
    q_taken = policy.critic(features.detach(), timesteps, critic_text)
    terms["critic_loss"] = dpg.critic_loss(q_taken, output.scores)
    terms["q"] = q_taken.detach().mean()
    if diagnose and reward_fn.differentiable:
        terms.update(critic_alignment(policy.critic_module, reward_fn, config, process, x_t, action, x0, timesteps,
                                      critic_text, context))
    return Losses({**terms, **reward_terms(output)}, fit=(q_taken.detach().float(), output.scores.detach().float()))


def critic_alignment(critic: nn.Module, reward_fn: Reward, config: Config, process: Process,
                     x_t: torch.Tensor, action: torch.Tensor, x0: torch.Tensor, timesteps: torch.Tensor,
                     text: torch.Tensor, context: RewardContext) -> dict[str, torch.Tensor]:
    """cos(dQ/da, dr/da) and the norm ratio at the actions taken, through the same look-forward step."""
    x_t = x_t.detach()

    def look_forward(a: torch.Tensor) -> torch.Tensor:
        return process.look_forward(x_t, a, timesteps)

    def q_of(a: torch.Tensor) -> torch.Tensor:
        return critic(dpg.critic_features(config.critic.input, x_t, a, look_forward(a), x0), timesteps, text)

    def reward_of(a: torch.Tensor) -> torch.Tensor:
        return as_output(reward_fn(look_forward(a).float(), context)).scores

    weights = dpg.discount(timesteps, config.objective.gamma).to(action.device)
    return alignment_terms(q_of, reward_of, action, weights)


def reward_terms(output: RewardOutput) -> dict[str, torch.Tensor]:
    """The batch means of the reward and of its diagnostics, for the logs."""
    return {"reward": output.scores.detach().float().mean(),
            **{f"reward/{key}": value.detach().float().mean() for key, value in output.diagnostics.items()}}


def record_fit(accelerator: Accelerator, window: FitWindow, fit: tuple[torch.Tensor, torch.Tensor] | None) -> dict:
    """Add every process's (Q, r) pairs of this step to the window; the windowed R^2 to log, once defined."""
    if fit is None:
        return {}
    window.add(*(accelerator.gather(values) for values in fit))
    r2 = window.r2()
    return {} if r2 is None else {"critic/r2": r2}


def all_finite(accelerator: Accelerator, terms: dict[str, torch.Tensor]) -> bool:
    """True iff the losses are finite on every process, so that all of them skip a bad step together."""
    losses = torch.stack([terms[k].float() for k in ("loss", "critic_loss") if k in terms])
    finite = torch.isfinite(losses).all().float().reshape(1)
    return bool(accelerator.gather(finite).min() > 0)


def mean_over_processes(accelerator: Accelerator, logged: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """Every logged value averaged over processes, in one collective."""
    keys = sorted(logged)
    stacked = torch.stack([torch.as_tensor(logged[k], dtype=torch.float32, device=accelerator.device).reshape(())
                           for k in keys])
    return dict(zip(keys, accelerator.reduce(stacked, "mean").tolist()))


def train(config: Config) -> Path:
    """Run one personalization; returns the output folder (a stock diffusers pipeline folder)."""
    resume_from = check_output_dir(config)  # every process checks before any of them writes
    run = build_run(config)
    accelerator, train_config = run.accelerator, config.train
    if accelerator.is_main_process:
        output_dir = prepare_output_dir(config, resuming=resume_from is not None)
        save_config(config, output_dir / "config.yaml")
    accelerator.wait_for_everyone()
    output_dir = Path(train_config.output_dir)
    run.start_trackers(config)
    metrics = MetricsLog(output_dir / "metrics.jsonl", enabled=accelerator.is_main_process)

    start_step = 0
    fit_window = FitWindow(config.critic.r2_window)  # on-policy R^2 of the critic (DPG)
    if resume_from is not None:
        start_step, state = load_checkpoint(accelerator, resume_from, run.stateful)
        fit_window.load_state_dict(state.get("critic_fit", fit_window.state_dict()))
        metrics.truncate_after(start_step)
        if accelerator.is_main_process:
            logger.info("resumed from %s at step %d", resume_from, start_step)
    if accelerator.is_main_process:
        logger.info("effective batch %d (= %d per process x %d processes x %d accumulation), %d steps",
                    run.effective_batch_size, train_config.batch_size, accelerator.num_processes,
                    train_config.gradient_accumulation_steps, train_config.max_steps)

    policy = make_policy(run)
    bar = progress(total=train_config.max_steps, initial=start_step, desc="train",
                    disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    selection = Selection(run, config, output_dir, metrics) if config.validation.reward is not None else None
    finished, stopped = start_step, False
    for step in range(start_step, train_config.max_steps):
        if _due(step, config.validation.every) and validate_everywhere(run, config, step, output_dir, selection):
            stopped = True
            break
        terms, fit = accumulate_gradients(run, policy, config, step)
        skipped = not all_finite(accelerator, terms)
        logged = {**terms, **apply_update(run, train_config, skipped, step)}
        logged.update(record_fit(accelerator, fit_window, None if skipped else fit))
        done = step + 1
        if done % train_config.log_every == 0 or done == train_config.max_steps:
            values = mean_over_processes(accelerator, logged)
            accelerator.log(values, step=done)
            metrics.write(done, values)
            bar.set_postfix({k: f"{values[k]:.4g}" for k in ("loss", "critic_loss", "reward") if k in values})
        bar.update(1)
        if train_config.checkpoint_every and done % train_config.checkpoint_every == 0:
            save_checkpoint(accelerator, output_dir, done, train_config.checkpoints_total_limit, run.stateful,
                            state={"critic_fit": fit_window.state_dict()})
        finished = done
    bar.close()

    accelerator.wait_for_everyone()
    failure = finish(run, config, finished, stopped, output_dir, selection) if accelerator.is_main_process else None
    # DDP's reducers hold the process group. Freed only when train() returns, after end_training destroyed the
    # group, one rank could hang in their destructors (seen in CI, reproduced under load: the other rank done,
    # this one stuck past train()). So every rank frees them first, then all tear the group down together.
    del run, policy, selection
    accelerator.free_memory()
    gc.collect()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if failure is not None:
        raise failure
    return output_dir


def accumulate_gradients(run: RunSetup, policy: Policy, config: Config, step: int
                         ) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
    """Backpropagate every micro-step of one optimizer step; DDP all-reduces only on the last one.

    Returns the mean of each loss term over the micro-steps (detached, still on the device: no sync here) and
    this process's critic fit (Q, r) over all of them (None when the step did not score).
    """
    accelerator, train_config = run.accelerator, config.train
    accumulation = train_config.gradient_accumulation_steps
    score = step % config.objective.reward_every == 0
    diagnose = score and config.critic.diagnostics_every > 0 and step % config.critic.diagnostics_every == 0
    totals: dict[str, torch.Tensor] = {}
    fits: list[tuple[torch.Tensor, torch.Tensor]] = []
    for micro in range(accumulation):
        batch = run.data.draw(step, micro, train_config.batch_size, accelerator.process_index,
                              accelerator.num_processes, accumulation).to(accelerator.device)
        with no_sync(accelerator, run.trained_models, enabled=micro < accumulation - 1):
            losses = compute_losses(policy, batch, run.process, config, run.reward,
                                    score=score, diagnose=diagnose)
            accelerator.backward(losses.terms["loss"] / accumulation)
            if "critic_loss" in losses.terms:
                (losses.terms["critic_loss"] / accumulation).backward()  # fp32 critic: no loss scaling needed
        for key, value in losses.terms.items():
            totals[key] = totals.get(key, 0) + value.detach().float() / accumulation
        if losses.fit is not None:
            fits.append(losses.fit)
    fit = (torch.cat([q for q, _ in fits]), torch.cat([r for _, r in fits])) if fits else None
    return totals, fit


def apply_update(run: RunSetup, train_config: TrainConfig, skipped: bool, step: int) -> dict:
    """Clip and step both optimizers, then advance the LR schedule.

    A skipped step (non-finite loss: its gradients are non-finite too, identically on every process after
    the all-reduce) only discards the gradients.
    """
    logged = {"skipped": float(skipped)}
    if skipped:
        if run.accelerator.is_main_process:
            logger.warning("step %d: non-finite loss, skipped this step (no weights changed)", step)
    else:
        if train_config.max_grad_norm > 0:
            logged["grad_norm"] = run.accelerator.clip_grad_norm_(run.policy_parameters,
                                                                  train_config.max_grad_norm)
        run.optimizer.step()
        after_step(run.method)
        if run.critic_optimizer is not None:
            run.critic_optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.critic_optimizer is not None:
        run.critic_optimizer.zero_grad(set_to_none=True)
    run.lr_scheduler.step()
    logged["lr"] = run.lr_scheduler.get_last_lr()[0]
    return logged


def make_policy(run: RunSetup) -> Policy:
    critic_module = run.accelerator.unwrap_model(run.critic) if run.critic is not None else None
    return Policy(family=run.parts.family, denoiser=run.denoiser, text_encoders=run.text_encoders,
                  micro_conditioning=run.micro_conditioning, critic=run.critic, critic_module=critic_module,
                  vae=run.parts.vae, latent_space=run.parts.latent_space)


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def no_sync(accelerator: Accelerator, models: list[nn.Module], enabled: bool) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    if enabled:
        for model in models:
            stack.enter_context(accelerator.no_sync(model))
    return stack


def validate_everywhere(run: RunSetup, config: Config, step: int, output_dir: Path,
                        selection: Selection | None) -> bool:
    """The main process validates; True, on every process, when the run should stop early."""
    if run.accelerator.is_main_process:
        validate(run, config, step, output_dir, selection)
    if selection is None or not selection.stop_agreed(run.accelerator):
        return False
    logger.info("step %d: no better validation score in %d validations: stopping early (best: step %s)", step,
                config.validation.patience, selection.tracker.best_step)
    return True


def validate(run: RunSetup, config: Config, step: int, output_dir: Path, selection: Selection | None) -> None:
    """The sample grid of this step; with a validation reward, its score, and the best model kept."""
    prompts = validation_prompts(config.validation, [c.instance_prompt for c in concepts_of(config.data)])
    images = render_samples(run.parts, prompts, config.validation, config.data.resolution, run.accelerator.device,
                            autocast_dtype=run.autocast_dtype)
    samples = output_dir / "samples"
    samples.mkdir(exist_ok=True)
    make_grid(images, columns=config.validation.num_images).save(samples / f"step_{step:06d}.png")
    if selection is not None:
        selection.score(step, images, [p for p in prompts for _ in range(config.validation.num_images)])


def finish(run: RunSetup, config: Config, step: int, stopped: bool, output_dir: Path,
           selection: Selection | None) -> UserError | None:
    """Save the result, then the last samples and metrics.png (main process). A failed write (a full disk)
    comes back as the error to raise once every process has let go of the process group."""
    try:
        save_result(run, output_dir)  # first: a full disk must not cost the trained weights
        with disk_errors("the last samples and metrics.png", output_dir, "the trained model is saved"):
            if config.validation.every and not stopped:  # a stopped run was just validated
                validate(run, config, step, output_dir, selection)
            plot_metrics(output_dir / "metrics.jsonl", output_dir / "metrics.png")
    except UserError as error:
        return error
    return None


def save_result(run: RunSetup, output_dir: Path) -> None:
    """The trained model (as the base method saves it) and the critic, written whole or not at all."""

    def write(folder: Path) -> None:
        run.method.save(run.parts, folder)
        if run.critic is not None:
            critic = run.accelerator.unwrap_model(run.critic)
            save_file({k: v.detach().float().cpu().contiguous() for k, v in critic.state_dict().items()},
                      str(folder / "critic.safetensors"))

    publish_result(output_dir, write)
    logger.info("saved the result to %s", output_dir)
