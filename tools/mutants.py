"""Break one line of the training loop, run the tests that guard it, put the line back.

    python tools/mutants.py                 # every mutant against its tests (default tests/unit/test_wiring.py)
    python tools/mutants.py detach-policy   # one mutant
    python tools/mutants.py --tests tests/unit/test_wiring.py tests/integration/test_resume.py

Each mutant is a line the issue tracker found broken-but-unnoticed once (or could be): a test of wiring is
only evidence if it fails when the wiring is cut. Prints KILLED or SURVIVED per mutant; exits 1 if any
survived. The file is always restored, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAIN, DATA = "src/rewardbooth/training/loop.py", "src/rewardbooth/training/batches.py"
DDPM, SD = "src/rewardbooth/models/ddpm.py", "src/rewardbooth/models/stable_diffusion.py"
MATHS, GENERATE = "src/rewardbooth/maths/dpg.py", "src/rewardbooth/inference/generate.py"
ROLLOUT = "src/rewardbooth/maths/rollout.py"
FAMILY_TESTS = ["tests/unit/test_dpg.py", "tests/contract/test_family_contract.py"]
OBJECTIVES = "src/rewardbooth/training/objectives"
BASELINE, DIRECT, DPG, GRPO = (f"{OBJECTIVES}/{name}.py" for name in ("baseline", "direct", "dpg", "grpo"))
SETUP = "src/rewardbooth/training/setup.py"
PROMPT_SETS_TEST = "tests/unit/test_toyworld_prompt_sets.py"
CONTRACT = ["tests/contract/test_objective_contract.py"]  # what an objective declares is what it gets
UNTRUSTED = "tests/integration/test_untrusted_input.py"
ZIMAGE, FLUX = "src/rewardbooth/models/zimage.py", "src/rewardbooth/models/flux.py"
FROZEN = "src/rewardbooth/training/frozen_text.py"
FROZEN_TEXT = "tests/integration/test_frozen_text.py"
STOCK_STEP = "tests/integration/test_flow_families.py::test_denoise_is_what_the_stock_sampler_steps_with"
FSDP_TEST = "tests/integration/test_fsdp.py"
TOY_FLOW, TOY_FLOW_TESTS = "src/rewardbooth/experiments/toyworld/pretrain_flow.py", ["tests/unit/test_toy_flow.py"]

FOLDER, RESULT = "src/rewardbooth/training/output_folder.py", "src/rewardbooth/training/result.py"
STORAGE, CHECKPOINTS = "src/rewardbooth/core/storage.py", "src/rewardbooth/training/checkpoints.py"
OUTPUT_TESTS, DISK_TESTS = "tests/integration/test_output_folder.py", "tests/integration/test_disk.py"

FEATURE, ENCODERS = "src/rewardbooth/training/feature_critic.py", "src/rewardbooth/rewards/encoders.py"
FEATURE_TESTS = ["tests/unit/test_feature_critic.py"]

CARD, KOHYA = "src/rewardbooth/training/model_card.py", "src/rewardbooth/models/kohya.py"
CARD_TESTS = ["tests/integration/test_model_card.py"]
FORMAT_TESTS = ["tests/integration/test_lora_formats.py"]

# Prompts without photos (issue 20): tests/integration/test_prompt_only.py, tests/unit/test_scene_prompts.py.
SAMPLING = f"{OBJECTIVES}/sampling.py"
PROMPT_ONLY, BASE = f"{OBJECTIVES}/prompt_only.py", f"{OBJECTIVES}/base.py"
PROMPT_ONLY_TESTS = "tests/integration/test_prompt_only.py"
ANCHOR_TEST = f"{PROMPT_ONLY_TESTS}::test_the_anchor_is_zero_at_the_base_and_its_gradient_points_back_toward_it"
TEMPLATE_TESTS = ["tests/unit/test_scene_prompts.py"]

SUBJECTS, CAPTIONS = "src/rewardbooth/training/subjects.py", "src/rewardbooth/data/captions.py"
CAPTION_TESTS, DATA_TESTS = "tests/integration/test_captions_buckets.py", "tests/unit/test_training_data.py"

PRESETS = "src/rewardbooth/core/presets.py"
PRESET_HELP_TEST = "tests/unit/test_presets.py::test_help_config_prints_each_preset_values_reason_and_source"
OPTIONS_TESTS = "tests/contract/test_training_options.py"

# A quantized frozen base under LoRA (issue 22 item 2): tests/integration/test_quantized_lora.py.
LOADERS, QUANTIZATION = "src/rewardbooth/models/loaders.py", "src/rewardbooth/models/quantization.py"
QUANTIZED_TESTS = "tests/integration/test_quantized_lora.py"

MUTANTS = {  # name: (file, original text, mutated text[, the tests that guard it, when not the default])
    "card-over-users-readme": (CARD, "return next((name for name in CARD_NAMES if name not in foreign), None)",
                               "return CARD_NAMES[0]", [f"{CARD_TESTS[0]}::test_a_users_readme_is_left_alone_and_overwrite_removes_only_the_card"]),
    "card-outside-the-result": (CARD, "(folder / name).write_text(text", "(output_dir / name).write_text(text",
                                CARD_TESTS),
    "kohya-qkv-order": (KOHYA, 'QKV = ("attn.to_q", "attn.to_k", "attn.to_v")',
                        'QKV = ("attn.to_k", "attn.to_q", "attn.to_v")', FORMAT_TESTS),
    "kohya-fused-alpha": (KOHYA, "torch.tensor(alpha * down.shape[0] / rank)", "torch.tensor(alpha)", FORMAT_TESTS),
    "kohya-clip-names": (KOHYA, 'return f"text_model.{module}" if', "return module if", FORMAT_TESTS),
    "prompt-only-reference-leak": (PROMPT_ONLY, "x0=x0[rows].float() if reference else None", "x0=x0[rows].float()",
                                   [f"{PROMPT_ONLY_TESTS}::test_prompt_only_rows_never_carry_a_reference_latent_into_"
                                    f"the_reward"]),
    "prompt-only-mse": (BASE, "mse = torch.cat([torch.where(batch.scene, torch.zeros_like(mse[:n]), mse[:n]), mse[n:]])",
                        "mse = torch.cat([mse[:n], mse[n:]])",
                        [f"{PROMPT_ONLY_TESTS}::test_prompt_only_rows_add_no_denoising_loss_and_reference_rows_keep_"
                         f"theirs"]),
    "prompt-only-states-not-sampled": (
        BASE, "x_t, timesteps = prompt_only_states(policy, batch, process, x_t, timesteps, scene_steps)",
        "x_t, timesteps = x_t, timesteps",
        [f"{PROMPT_ONLY_TESTS}::test_prompt_only_states_are_sampled_by_the_policy_from_the_rows_noise"]),
    "anchor-base-is-policy": (PROMPT_ONLY, "with torch.no_grad(), adapters_off(policy.denoiser):",
                              "with torch.no_grad():", [ANCHOR_TEST]),
    "anchor-detached": (PROMPT_ONLY, "distance = dpg.per_sample_mse(step.action[rows], base).mean()",
                        "distance = dpg.per_sample_mse(step.action[rows].detach(), base).mean()", [ANCHOR_TEST]),
    "toy-scenes-include-evaluated": ("src/rewardbooth/toyworld/subjects.py", "scenes, positions = [SCENES[s] for s in TRAINING_SCENES]",
                                     "scenes, positions = [SCENES[s] for s in SCENES]", TEMPLATE_TESTS),
    "scene-prompt-is-dreambench": ("src/rewardbooth/data/scene_prompts.py", '"on a park bench"', '"on the beach"',
                                   TEMPLATE_TESTS),
    "toy-alignment-no-gradient": ("src/rewardbooth/rewards/toy.py",
                                  "attribute_agreement(self.judge, self._resize(images), prompts)",
                                  "attribute_agreement(self.judge, self._resize(images).detach(), prompts)",
                                  ["tests/unit/test_toy_alignment.py"]),
    "feature-critic-detached": (FEATURE, "return self.trust * self.value(self.embed(inputs))",
                                "return self.trust * self.value(self.embed(inputs.detach()))",
                                ["tests/unit/test_wiring.py::test_the_feature_critic_reaches_theta_only_through_x0_hat_decoded_and_encoded"]),
    "feature-critic-no-replay": (FEATURE, "self.recall(max(0, self.replay_batch - len(features)))",
                                 "self.recall(0)", FEATURE_TESTS),
    "probe-against-gradient": (FEATURE, "agreement = (rise[decided] > 0).float().mean()",
                               "agreement = (rise[decided] < 0).float().mean()", FEATURE_TESTS),
    "trust-ignored": (FEATURE, "            return self.trust * self.value(self.embed(inputs))",
                      "            return self.value(self.embed(inputs))", FEATURE_TESTS),
    "critic-encoder-is-heldout-judge": (
        ENCODERS, "folder = Path(model) if model else require(FEATURE_ENCODER_DIR,",
        "folder = Path(model) if model else require(FEATURE_ENCODER_DIR.parent / 'judge-heldout',",
        ["tests/unit/test_benchmark_integrity.py"]),
    "detach-policy": (DPG, "terms = dpg.actor_loss(step.mse[:n], step.prior_mse, q_policy, timesteps,",
                      "terms = dpg.actor_loss(step.mse[:n], step.prior_mse, q_policy.detach(), timesteps,"),
    "abar-t-minus-1": (DDPM, "return self.alphas_cumprod[timesteps]",
                       "return self.alphas_cumprod[(timesteps - 1).clamp(min=0)]"),
    "direct-detached": (DIRECT, "output = scorer(reward, x0_hat.float())",
                        "output = scorer(reward, x0_hat.detach().float())"),
    "prior-leak": (BASELINE, "return Losses(dpg.actor_loss(step.mse[:n], step.prior_mse, None,",
                   "return Losses(dpg.actor_loss(step.mse, step.prior_mse, None,"),
    "decode-no-grad": (DATA, "def decode_latents(vae: AutoencoderKL",
                       "@torch.no_grad()\ndef decode_latents(vae: AutoencoderKL"),
    "no-accumulation-divide": (TRAIN, 'accelerator.backward(losses.terms["loss"] / accumulation)',
                               'accelerator.backward(losses.terms["loss"])'),
    "critic-fit-moves-policy": (DPG, "fit = critic_fit(policy.critic_module, features.detach(), timesteps",
                                "fit = critic_fit(policy.critic_module, features, timesteps"),
    "critic-not-frozen": (DPG, "with frozen(policy.critic_module) as critic:\n            q_policy",
                          "with __import__(\"contextlib\").nullcontext(policy.critic_module) as critic:\n            q_policy"),
    "reward-always-built": (SETUP, "    if needs.reward:\n        reward = build_concept_reward",
                            "    if True:\n        reward = build_concept_reward", CONTRACT),
    "critic-always-built": (SETUP, "    if needs.critic:\n        side =", "    if True:\n        side =", CONTRACT),
    "dpg-differentiates-the-reward": (DPG, "with torch.no_grad():\n            output = scorer(reward, x0_hat.detach()",
                                      "with torch.enable_grad():\n            output = scorer(reward, x0_hat", CONTRACT),
    "no-twin-diagnostics": (SETUP, "diagnostic = reward if reward.differentiable else build_twin(",
                            "diagnostic = reward if reward.differentiable else None and build_twin(",
                            ["tests/integration/test_objectives.py", "-k", "blackbox_toy_identity_and_diagnoses"]),
    "grpo-advantage-sign": (GRPO, "rollouts.advantages, options.clip_range)",
                            "-rollouts.advantages, options.clip_range)", ["tests/unit/test_grpo.py"]),
    "grpo-stale-log-prob": (GRPO, "rollouts.log_probs[column, rows],", "rollouts.log_probs[column - 1, rows],",
                            ["tests/unit/test_grpo.py"]),
    "grpo-anchor-adapters-on": (SAMPLING, "module.disable_adapters()", "module.enable_adapters()",
                                ["tests/unit/test_grpo.py", ANCHOR_TEST]),
    "critic-never-stepped": (TRAIN, "run.critic_optimizer.step()", "run.critic_optimizer.zero_grad()", CONTRACT),
    "overwrite-clears-everything": (FOLDER, "if entry.name in foreign or entry.name == LOCK:",
                                    "if entry.name == LOCK:",
                                    [f"{OUTPUT_TESTS}::test_overwrite_removes_only_what_a_run_wrote"]),
    "no-folder-lock": (FOLDER, "    lock.acquire()\n", "    lock.created_folder = False\n",
                       [f"{OUTPUT_TESTS}::test_a_second_run_on_the_folder_is_refused_and_the_first_finishes_intact"]),
    "final-save-no-fallback": (RESULT, "fallback = save_fallback(output_dir, write)", "fallback = None",
                               [f"{DISK_TESTS}::test_quota_at_the_final_save_keeps_the_weights_in_a_fallback_folder"]),
    "no-write-probe": (STORAGE, "number = probe_write(probe)", "number = None",
                       [f"{DISK_TESTS}::test_quota_inside_torchs_checkpoint_writer_names_the_quota"]),
    "accelerate-files-unguarded": (CHECKPOINTS, "        accelerator.load_state(str(checkpoint))\n",
                                   "        pass\n    accelerator.load_state(str(checkpoint))\n",
                                   [f"{OUTPUT_TESTS}::test_resume_refuses_a_crafted_accelerate_file"]),
    # Guards against bad input (issue 18), each with the tests that kill it (a 4th entry: run by default).
    "skip-limit-ignored": (TRAIN, "if skips.over_limit:", "if False:", [UNTRUSTED + "::test_steps_skipped_in_a_row"
                                                                        "_stop_the_run_naming_the_critic"]),
    "non-finite-published": (TRAIN, "broken = non_finite_weights(", "broken = None and (",
                             [UNTRUSTED + "::test_non_finite_weights_are_never_published"]),
    "cwd-importable": ("src/rewardbooth/__main__.py", "    del sys.path[0]", "    pass",
                       [UNTRUSTED + "::test_the_working_folder_is_not_importable_under_python_m"]),
    "saved-run-names-trusted": ("src/rewardbooth/inference/generate.py", "names_from_saved_run(saved, trust_remote_code)",
                                "names_from_saved_run(saved, True)",
                                [UNTRUSTED + "::test_generate_never_imports_code_named_by_a_saved_run"]),
    "evaluate-reads-outside": ("src/rewardbooth/data/images.py", "path != root and path.is_relative_to(root)",
                               "path != root", ["tests/unit/test_evaluate.py::test_evaluate_reads_only_files_under_"
                                                "the_folder"]),
    # The flow families' seams.
    "flow-look-forward-unscaled": (MATHS, "return x_sigma - expand_to(sigma, x_sigma) * velocity",
                                   "return x_sigma - velocity", FAMILY_TESTS),
    "sd-matches-by-prefix": (SD, "return pipeline_class_name in self.pipeline_class_names",
                             'return pipeline_class_name.startswith("StableDiffusion") and "XL" not in pipeline_class_name',
                             FAMILY_TESTS),
    "flow-sde-dt-sign": (ROLLOUT, "expand_to(sigma_next - sigma, x_t)", "expand_to(sigma - sigma_next, x_t)",
                         ["tests/unit/test_flow_rollout.py"]),
    "flow-sde-std-no-sqrt-dt": (ROLLOUT, "return diffusion * (sigma - sigma_next).sqrt()", "return diffusion",
                                     ["tests/unit/test_flow_rollout.py"]),
    "flux-rollouts-other-size": (GRPO, "process.sampling_timesteps(options.num_steps, tuple(batch.x0.shape[-2:]))",
                                      "process.sampling_timesteps(options.num_steps, (128, 128))",
                                      ["tests/integration/test_flow_families.py", "-k", "grpo"]),
    "fp16-unchecked": (SETUP, "    check_precision(config.train.mixed_precision, parts)\n", "",
                       ["tests/integration/test_flow_families.py", "-k", "fp16"]),
    "global-guidance-for-every-family": (GENERATE, "guidance_scale = guidance if guidance_scale is None else guidance_scale",
                                         "guidance_scale = 7.5 if guidance_scale is None else guidance_scale",
                                         ["tests/integration/test_flow_families.py"]),
    # A family's denoiser convention: Z-Image outputs −v at 1 − σ, FLUX takes σ (checked against one stock step).
    "zimage-velocity-sign": (ZIMAGE, "return -torch.stack(outputs).squeeze(2), embeds",
                             "return torch.stack(outputs).squeeze(2), embeds", [STOCK_STEP]),
    "zimage-time-not-flipped": (ZIMAGE, "time = (1000 - timesteps.float()) / 1000", "time = timesteps.float() / 1000",
                                [STOCK_STEP]),
    "flux-time-unscaled": (FLUX, "timestep=timesteps.to(x_t.dtype) / 1000", "timestep=timesteps.to(x_t.dtype)",
                           [STOCK_STEP]),
    # SD3 without T5 and toy-flow's pretraining (issue 21).
    "sd3-t5-less-unpadded": ("src/rewardbooth/models/sd3.py",
                             "t5 = clip.new_zeros(clip.shape[0], T5_LENGTH, clip.shape[-1])",
                             "t5 = clip.new_zeros(clip.shape[0], 0, clip.shape[-1])",
                             ["tests/contract/test_family_contract.py", "-k", "without_t5"]),
    "folded-padding-unweighted": ("src/rewardbooth/models/sd3_padding.py", "bias[0, -1] = self.log_copies",
                                  "bias[0, -1] = 0.0", ["tests/unit/test_sd3_padding.py", "tests/unit/test_toy_flow.py"]),
    "toy-flow-pretrains-without-t5-zeros": (TOY_FLOW, "[:, :ids.shape[1] + 1]", "[:, :ids.shape[1]]", TOY_FLOW_TESTS),
    "toy-flow-shift-unscaled": (TOY_FLOW, "max(1.0, reference_shift * math.sqrt(num_tokens / reference_tokens))",
                                "max(1.0, reference_shift)", TOY_FLOW_TESTS),
    "toy-flow-shift-unclamped": (TOY_FLOW, "max(1.0, reference_shift * math.sqrt(num_tokens / reference_tokens))",
                                 "reference_shift * math.sqrt(num_tokens / reference_tokens)", TOY_FLOW_TESTS),
    # FSDP (tests/integration/test_fsdp.py: the example config on two CPU processes against one process).
    "fsdp-critic-not-averaged": (TRAIN, "average_gradients(run.accelerator, run.critic)  # what DDP does",
                                 "None  # what DDP does", [FSDP_TEST, "-k", "like_one_process"]),
    "fsdp-result-not-gathered": (TRAIN, "result_parts = gathered_parts(accelerator, run.parts, run.denoiser) if",
                                 "result_parts = run.parts if", [FSDP_TEST, "-k", "like_one_process"]),
    "fsdp-critic-sharded": (SETUP, "prepared_critic = critic is not None and not sharded",
                            "prepared_critic = critic is not None", [FSDP_TEST, "-k", "like_one_process"]),
    "fsdp-clips-unsharded-parameters": (SETUP, "    policy_parameters = [p for name in method.trainable for p",
                                        "    _ = [p for name in method.trainable for p", [FSDP_TEST, "-k", "like_one_process"]),
    "fsdp-run-unchecked": (SETUP, "    if sharded:\n        check_sharded_run(config)\n", "",
                           [FSDP_TEST, "-k", "refuses"]),
    # Frozen text encoders (issue 23): encoded once at setup, then released; nothing runs them after.
    "validation-re-encodes": (SETUP, "validation_inputs = encode_validation_prompts(parts, config, device, autocast_dtype)",
                              "validation_inputs = None", [FROZEN_TEXT + "::test_frozen_encoders_never_run_after_setup_"
                                                           "and_the_saved_pipeline_draws_the_validation_images"]),
    "encoders-kept": (FROZEN, '        encoder.to("cpu" if mode == "cpu" else "meta")', "        encoder.float()",
                      ["tests/unit/test_text_encoder_release.py"]),
    "free-keeps-the-weights": (FROZEN, 'encoder.to("cpu" if mode == "cpu" else "meta")', 'encoder.to("cpu")',
                               [FROZEN_TEXT, "-k", "free_drops"]),
    "free-unchecked": (SETUP, "    check_offload(config)\n", "", [FROZEN_TEXT, "-k", "free_is_refused"]),
    "encoders-never-released": (SETUP, "        release_text_encoders(parts, config.train.offload_text_encoders)\n",
                                "", [FROZEN_TEXT, "-k", "tiny-flux"]),
    "generate-ignores-best-config": (GENERATE, 'and recorded_config_file(folder) is not None:',
                                     'and (folder / "config.yaml").is_file():',
                                     ["tests/integration/test_flow_experiments.py", "-k", "keep_best"]),
    # Prompts without photos in the toy benchmark (issue 20): scene-trained routes are scored on unseen prompts only.
    "benchmark-skips-leak-check": ("src/rewardbooth/experiments/toyworld/benchmark.py",
                                   "        check_prompt_leak(objective, setting)  # before any run",
                                   "        pass  # before any run", [PROMPT_SETS_TEST]),
    "unseen-scores-all-prompts": ("src/rewardbooth/experiments/toyworld/experiment.py",
                                  '"unseen": subjects.held_out_prompt_set}', '"unseen": subjects.prompt_set}',
                                  [PROMPT_SETS_TEST]),
    "bench-anchored-variant-any-method": ("src/rewardbooth/experiments/bench.py",
                                          'METHOD_ONLY = {"direct-dino-clip-text-scenes-anchored": "lora"}',
                                          "METHOD_ONLY = {}",
                                          ["tests/integration/test_bench_demo.py", "-k", "default_variant"]),
    "bench-shared-scene-share": ("src/rewardbooth/experiments/bench.py",
                                 "        run.data.scene_share = config.objective.scene_share", "        pass",
                                 ["tests/integration/test_bench_demo.py", "-k", "recipe"]),
    "variant-not-compared-with-its-route": ("src/rewardbooth/experiments/toyworld/benchmark.py",
                                            "controls if route == objective else (*controls, route)", "controls",
                                            ["tests/unit/test_pareto_front.py"]),
    "toy-model-setting-ignored": ("src/rewardbooth/experiments/toyworld/experiment.py",
                                  'f"model.pretrained={setting.model}"', '"model.pretrained=toy"',
                                  ["tests/integration/test_bench_demo.py", "-k", "flow_toy"]),
    "benchmark-skips-hacking-trace": ("src/rewardbooth/experiments/toyworld/benchmark.py",
                                      "    if missing_trace:\n", "    if False:\n",
                                      ["tests/integration/test_bench_demo.py", "-k", "resumes"]),
    "scene-reward-ignored": ("src/rewardbooth/training/setup.py",
                             "    if objective.scene_reward is None:\n        return build_reward(",
                             "    if True:\n        return build_reward(", [PROMPT_ONLY_TESTS, "-k", "scene_reward"]),
    "scene-reward-options-unsplit": ("src/rewardbooth/training/setup.py",
                                     "build_reward(photo, {name: options[name] for name in photo if name in options}",
                                     "build_reward(photo, options", [PROMPT_ONLY_TESTS, "-k", "options"]),
    "scene-reward-on-photo-rows": ("src/rewardbooth/rewards/base.py",
                                   "(self.scene if context.x0 is None else self.photo)",
                                   "(self.photo if context.x0 is None else self.scene)",
                                   [PROMPT_ONLY_TESTS, "-k", "scene_reward"]),
    # Presets' reasons (issue 22 item 5): --help-config prints each preset value's reason and source.
    "help-drops-preset-reasons": (PRESETS, 'return f"preset: {reason}  (key: {helps[key]})" if reason else helps[key]',
                                  "return helps[key]", [PRESET_HELP_TEST]),
    "flux-ignores-training-guidance": (FLUX, "value = DEV.guidance_scale if self.training.guidance is None else "
                                       "self.training.guidance", "value = DEV.guidance_scale", [OPTIONS_TESTS]),
    "flow-ignores-timestep-shift": ("src/rewardbooth/models/flow.py",
                                    "return cls.from_scheduler_config(config, linear_sampling_sigmas, options.shift,",
                                    "return cls.from_scheduler_config(config, linear_sampling_sigmas, None,",
                                    [OPTIONS_TESTS]),
    "load-model-drops-training-options": ("src/rewardbooth/models/loaders.py",
                                          "    return replace(parts, training=options)", "    return parts",
                                          ["tests/integration/test_presets_train.py"]),
    "flow-ignores-density": ("src/rewardbooth/models/flow.py", "density=options.density or density, **given)",
                             "density=density, **given)", [OPTIONS_TESTS]),
    # Captions and aspect buckets (issue 22 item 3): tests/integration/test_captions_buckets.py and the units.
    "captions-ignored": (SUBJECTS, "        prompts = instance_captions(",
                         "        prompts = [concept.instance_prompt] * len(loaded) or instance_captions(",
                         [CAPTION_TESTS, "-k", "captions_reach"]),
    "caption-identifier-not-inserted": (CAPTIONS, "    noun = class_noun(instance_prompt, identifier)\n    if noun",
                                        "    return caption\n    noun = class_noun(instance_prompt, identifier)\n"
                                        "    if noun", [CAPTION_TESTS, "-k", "captions_reach"]),
    "buckets-ignored": (SUBJECTS, "    buckets = run_buckets(config, parts)\n", "    buckets = None\n",
                        [CAPTION_TESTS, "-k", "portrait_latents"]),
    "caption-dropout-ignored": (DATA, "        if self.caption_dropout > 0:", "        if False:",
                                [DATA_TESTS, "-k", "dropout"]),
    "bucket-drawn-from-global-rng": (DATA, "generator=step_generator(self.seed, step, BUCKET_STREAM)",
                                     "generator=None", [DATA_TESTS, "-k", "bucket"]),
    "sdxl-size-ids-stay-square": (BASE, "        return self.family.micro_conditioning(batch.size)",
                                  "        return self.micro_conditioning", [DATA_TESTS, "-k", "sdxl"]),
    "reward-decode-squashes-portraits": (DATA, "    if height == width:\n        return side, side",
                                         "    if True:\n        return side, side", [DATA_TESTS, "-k", "aspect"]),
    "folder-ignores-quantize": (LOADERS, "kwargs.update(pipeline_options(config.quantize, denoiser_name, ",
                                "((", [QUANTIZED_TESTS, "-k", "folder_loads"]),
    "built-in-ignores-quantize": (LOADERS, "parts = quantize_denoiser(parts, config.quantize, compute_dtype or "
                                  "torch.float32)", "pass", [QUANTIZED_TESTS, "-k", "built_in"]),
    "quantize-unchecked": (SETUP, "    check_quantize(config.model.quantize, config.method.name,\n",
                           "    (config.model.quantize, config.method.name,\n", [QUANTIZED_TESTS, "-k", "refused"]),
    "nf4-on-cpu-unchecked": (QUANTIZATION, 'if quantize == "nf4" and not cuda:', "if False:",
                             [QUANTIZED_TESTS, "-k", "nf4"]),
    "quantized-denoiser-cast": (SETUP, "            if is_quantized(module):", "            if False:",
                                [QUANTIZED_TESTS, "-k", "trains"]),
    "quantized-checkpoint-whole": (SETUP, "        keep_trained_state_only(parts.denoiser)", "        pass",
                                   [QUANTIZED_TESTS, "-k", "checkpoint"]),
}


def run(name: str, tests: list[str] | None) -> bool:
    """True if the tests fail with the mutant in place (the mutant is killed)."""
    relative, original_text, mutated_text, *guards = MUTANTS[name]
    tests = tests or (guards[0] if guards else ["tests/unit/test_wiring.py"])
    path = ROOT / relative
    original = path.read_text()
    if original.count(original_text) != 1:
        raise SystemExit(f"mutant {name!r}: its line is not (exactly once) in {relative}; update tools/mutants.py")
    try:
        path.write_text(original.replace(original_text, mutated_text))
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                                cwd=ROOT, capture_output=True, text=True)
    finally:
        path.write_text(original)
    last = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(f"{name:<26} {'KILLED' if result.returncode else 'SURVIVED'}   {last}", flush=True)
    return result.returncode != 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help=f"mutants to run (default: all): {', '.join(MUTANTS)}")
    parser.add_argument("--tests", nargs="+", help="run these tests against every mutant (default: each mutant's "
                                                   "own, else tests/unit/test_wiring.py)")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(MUTANTS))
    if unknown:
        parser.error(f"unknown mutant {unknown[0]!r}; known: {', '.join(MUTANTS)}")
    default = ["tests/unit/test_wiring.py"]
    killed = [run(name, args.tests or (MUTANTS[name][3] if len(MUTANTS[name]) > 3 else default))
              for name in args.names or MUTANTS]
    return 0 if all(killed) else 1


if __name__ == "__main__":
    sys.exit(main())
