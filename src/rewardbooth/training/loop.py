"""The training loop: DreamBooth-style fine-tuning with a registered objective (baseline, direct, dpg, ...).

One optimizer step (``train_step``, which ``train`` and ``rewardbooth bench step`` both call):
  for each micro-batch, the objective's losses (rewardbooth.training.objectives; dpg's, for one:
  batch -> x_t -> action a -> x0_hat -> actor loss ... - lambda*gamma^t*Q(s, a), critic loss (Q(s, a.detach()) - r)^2)
  -> backward -> every process agrees the losses are finite -> clip and step both optimizers (or skip the step)
  -> (in ``train``) log / validate / checkpoint.
"""

from __future__ import annotations

import contextlib
import gc
import logging
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
from rewardbooth.methods.base import after_step
from rewardbooth.models import ModelParts
from rewardbooth.training.checkpoints import load_checkpoint, save_checkpoint
from rewardbooth.training.critic_diagnostics import FitWindow
from rewardbooth.training.model_card import write_model_card
from rewardbooth.training.monitoring import (
    MetricsLog,
    SkipCount,
    divergence_error,
    non_finite_weights,
    plot_metrics,
    render_samples,
    validation_prompts,
)
from rewardbooth.training.objectives import Policy
from rewardbooth.training.output_folder import check_output_dir, output_lock, prepare_output_dir
from rewardbooth.training.result import publish_result
from rewardbooth.training.selection import Selection
from rewardbooth.training.setup import RunSetup, build_run
from rewardbooth.training.sharding import average_gradients, gathered_parts

logger = logging.getLogger(__name__)


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
    """Run one personalization; returns the output folder (a stock diffusers pipeline folder).

    One run per folder: the main process holds the folder's lock (rewardbooth.training.output_folder) from
    before the first check to the end, so a second run on it is refused before it loads anything."""
    with output_lock(Path(config.train.output_dir)):
        return run_training(config, check_output_dir(config))  # every process checks before any of them writes


def run_training(config: Config, resume_from: Path | None) -> Path:
    """Train in a folder `check_output_dir` accepted, from `resume_from` (a checkpoint) or from scratch."""
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
    finished, stopped, skips, failure = start_step, False, SkipCount(train_config.max_skipped_steps), None
    for step in range(start_step, train_config.max_steps):
        if _due(step, config.validation.every) and validate_everywhere(run, config, step, output_dir, selection):
            stopped = True
            break
        logged, fit = train_step(run, policy, config, step)
        skips.add(bool(logged["skipped"]))  # agreed by every process (train_step's finite check)
        logged.update(record_fit(accelerator, fit_window, fit))
        done = step + 1
        if done % train_config.log_every == 0 or done == train_config.max_steps:
            values = mean_over_processes(accelerator, logged)
            accelerator.log(values, step=done)
            metrics.write(done, values)
            bar.set_postfix({k: f"{values[k]:.4g}" for k in ("loss", "critic_loss", "reward") if k in values})
        bar.update(1)
        if skips.over_limit:  # diverged: stop before a checkpoint or the result holds the broken state
            failure = divergence_error(logged, skips, step, output_dir)
            break
        if train_config.checkpoint_every and done % train_config.checkpoint_every == 0:
            save_checkpoint(accelerator, output_dir, done, train_config.checkpoints_total_limit, run.stateful,
                            state={"critic_fit": fit_window.state_dict()})
        finished = done
    bar.close()

    accelerator.wait_for_everyone()
    # Under FSDP every process joins the gather of the sharded denoiser; the main process saves it whole.
    result_parts = gathered_parts(accelerator, run.parts, run.denoiser) if failure is None else None
    if failure is None and accelerator.is_main_process:
        failure = finish(run, config, finished, stopped, output_dir, selection, skips.total, result_parts)
    # DDP's reducers hold the process group. Freed only when train() returns, after end_training destroyed the
    # group, one rank could hang in their destructors (seen in CI, reproduced under load: the other rank done,
    # this one stuck past train()). So every rank frees them first, then all tear the group down together.
    del run, policy, selection, result_parts
    accelerator.free_memory()
    gc.collect()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if failure is not None:
        raise failure
    return output_dir


def train_step(run: RunSetup, policy: Policy, config: Config, step: int
               ) -> tuple[dict[str, torch.Tensor | float], tuple[torch.Tensor, torch.Tensor] | None]:
    """One optimizer step: accumulate every micro-step's gradients, check on every process that the losses
    are finite, then update (or skip). Returns what to log ("skipped" among it) and this process's critic fit
    (None when the step did not score, or was skipped)."""
    terms, fit = accumulate_gradients(run, policy, config, step)
    skipped = not all_finite(run.accelerator, terms)
    logged = {**terms, **apply_update(run, config.train, skipped, step)}
    return logged, None if skipped else fit


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
            losses = policy.objective.losses(policy, batch, run.process, config, run.reward,
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
            if not run.critic_prepared:
                average_gradients(run.accelerator, run.critic)  # what DDP does for a prepared critic
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
                  vae=run.parts.vae, latent_space=run.parts.latent_space, objective=run.objective,
                  diagnostic_reward=run.diagnostic_reward)


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
                            autocast_dtype=run.autocast_dtype, text_inputs=run.validation_inputs)
    samples = output_dir / "samples"
    samples.mkdir(exist_ok=True)
    make_grid(images, columns=config.validation.num_images).save(samples / f"step_{step:06d}.png")
    if selection is not None:
        selection.score(step, images, [p for p in prompts for _ in range(config.validation.num_images)])


def finish(run: RunSetup, config: Config, step: int, stopped: bool, output_dir: Path,
           selection: Selection | None, skipped_steps: int = 0, parts: ModelParts | None = None) -> UserError | None:
    """Save the result, then the last samples and metrics.png (main process). A failed write (a full disk) or
    non-finite trained weights come back as the error to raise once every process has let go of the process
    group. `parts` are what is saved (`gathered_parts`: under FSDP, with the denoiser whole); the run's own
    parts by default."""
    parts = parts or run.parts
    if skipped_steps:
        logger.warning("%d of %d steps were skipped (non-finite loss; metrics.jsonl: skipped=1)", skipped_steps,
                       step)
    trained = {**run.method.trainable, parts.denoiser_name: parts.denoiser, "critic": run.critic}
    broken = non_finite_weights(trained)
    if broken is not None:
        return UserError(f"the trained weights hold inf/nan ({broken}), so no result is published in {output_dir} "
                         f"(checkpoints are kept); lower train.lr or critic.lr and train again")
    try:
        save_result(run, config, output_dir, step, parts)  # first: a full disk must not cost the trained weights
        with disk_errors("the last samples and metrics.png", output_dir, "the trained model is saved"):
            if config.validation.every and not stopped:  # a stopped run was just validated
                validate(run, config, step, output_dir, selection)
            plot_metrics(output_dir / "metrics.jsonl", output_dir / "metrics.png")
    except UserError as error:
        return error
    return None


def save_result(run: RunSetup, config: Config, output_dir: Path, step: int, parts: ModelParts | None = None) -> None:
    """The trained model (as the base method saves it, from `parts`: the run's own by default), the critic and
    the model card, written whole or not at all."""
    parts = parts or run.parts

    def write(folder: Path) -> None:
        run.method.save(parts, folder)
        loading_code = getattr(run.method, "loading_code", None)
        write_model_card(folder, output_dir, config, run.parts.family.name, step,
                         loading_code and loading_code(str(config.model.pretrained), folder))
        if run.critic is not None:
            critic = run.accelerator.unwrap_model(run.critic)
            save_file({k: v.detach().float().cpu().contiguous() for k, v in critic.state_dict().items()},
                      str(folder / "critic.safetensors"))

    publish_result(output_dir, write)
    logger.info("saved the result to %s", output_dir)
