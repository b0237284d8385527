"""`rewardbooth bench step`: the cost of DPG steps relative to the plain DreamBooth step.

Variants: `dpg-look-forward` (the latent reward: target <= 1.03 x baseline) and the image rewards `dpg-dino`,
`dpg-clip-image`, `dpg-clip-text` (decode x0_hat at 256 px or less; DINO ViT-S/16 and CLIP ViT-B/32 with random
weights, which time like the real ones: target <= 1.25); the black-box routes `dpg-dino-feature` (the
feature critic on DINOv2 ViT-S/14) and `grpo-dino` (rollouts), and `dpg-clip-text-scenes` (half the samples
prompt-only states: data.scene_prompts), reported without a target. These run without critic diagnostics; the
`-diagnosed` variants compute them at every step (cos(dQ/da, dr/da): one critic backward and one reward
backward, through decoder and backbone for DINO), so (diagnosed - plain) / critic.diagnostics_every is their
cost per step at the default cadence. The face reward runs dlib on the CPU whatever the device, and finds no
face in a 64 px image: it is timed per image in docs/rewards.md instead.

Both variants run on the same model, data and process, interleaved step by step (alternating which goes
first), so machine noise hits both alike; we report the ratio of median step times. Peak memory is measured
per step with CUDA's allocator statistics on a GPU; on a CPU, where torch keeps no such statistics, each
variant runs in a fresh child process and we compare the processes' peak resident memory.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from rewardbooth.core.config import Config, ModelConfig, load_config
from rewardbooth.core.errors import UserError
from rewardbooth.data.images import make_example_subject
from rewardbooth.training.loop import make_policy, train_step
from rewardbooth.training.setup import RunSetup, build_objective, build_run
from rewardbooth.training.subjects import load_concepts

PLAIN, DIAGNOSED = "critic.diagnostics_every=0", "critic.diagnostics_every=1"
SCENES = ("objective.scene_share=0.5", "data.scene_prompts=live")
# name -> (config overrides, target time and memory ratio against baseline)
VARIANTS: dict[str, tuple[list[str], float | None]] = {
    "baseline": (["objective.name=baseline"], None),
    "dpg-look-forward": (["objective.name=dpg", PLAIN], 1.03),
    "dpg-dino": (["objective.name=dpg", "objective.reward=dino", "critic.input=prediction", PLAIN], 1.25),
    "dpg-clip-image": (["objective.name=dpg", "objective.reward=clip_image", "critic.input=prediction", PLAIN], 1.25),
    "dpg-clip-text": (["objective.name=dpg", "objective.reward=clip_text", "critic.input=prediction", PLAIN], 1.25),
    # The routes for a reward without a gradient (docs/critic.md): the feature critic on DINOv2 ViT-S/14 (+ decode
    # x0_hat, the encoder forward and backward for the policy, the replay fit, 2 probe scores), and rollouts
    # (grpo: group x sampler-step forwards and group x trained-step backwards per scoring step, at
    # objective.reward_every=1 here; a run amortises them over reward_every steps).
    "dpg-dino-feature": (["objective.name=dpg", "objective.reward=dino", "critic.name=feature",
                          "critic.input=prediction", "critic.encoder=dinov2", PLAIN], None),
    "grpo-dino": (["objective.name=grpo", "objective.reward=dino"], None),
    # Prompts without photos (docs/rewards.md): half the instance rows act at states the policy samples on a
    # 10-step grid first (up to 9 forwards without a graph on those rows), scored by CLIP-T against their prompt.
    "dpg-clip-text-scenes": (["objective.name=dpg", "objective.reward=clip_text", "critic.input=prediction",
                              *SCENES, PLAIN], None),
    # The recipe for fidelity with alignment held (docs/rewards.md): DINO's exact gradient on the photo rows,
    # CLIP-T's on the prompt-only rows (sampled first, as above); `-anchored` adds the base model's forward on
    # those rows (LoRA only: `--method lora`).
    "direct-dino-clip-text-scenes": (["objective.name=direct", "objective.reward=dino",
                                      "objective.scene_reward=clip_text", *SCENES], None),
    "direct-dino-clip-text-scenes-anchored": (["objective.name=direct", "objective.reward=dino",
                                               "objective.scene_reward=clip_text", *SCENES,
                                               "objective.anchor_weight=1.0"], None),
    "dpg-look-forward-diagnosed": (["objective.name=dpg", DIAGNOSED], None),
    "dpg-dino-diagnosed": (["objective.name=dpg", "objective.reward=dino", "critic.input=prediction", DIAGNOSED],
                           None),
}
# Variants that only one base method can run (the anchor switches LoRA adapters off for the base model).
METHOD_ONLY = {"direct-dino-clip-text-scenes-anchored": "lora"}


def variants_for(method: str, names: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The variants to time with `method`: those named (refused in one line if one needs another method), or
    every variant the method can run."""
    if names is None:
        return tuple(name for name in VARIANTS if METHOD_ONLY.get(name, method) == method)
    for name in names:
        if METHOD_ONLY.get(name, method) != method:
            raise UserError(f"bench variant {name!r} needs --method {METHOD_ONLY[name]} (it was given --method "
                            f"{method}): pass --method {METHOD_ONLY[name]} or leave the variant out")
    return names


# What each base method needs besides its name (Custom Diffusion learns a new token, so the prompt names it).
METHOD_OVERRIDES = {"dreambooth": [], "lora": [],
                    "custom_diffusion": ["data.identifier=<new1>", "data.instance_prompt=a photo of <new1> dog"]}
DECODE_PIXELS = 256  # DINO and CLIP look at 224 px: decoding x0_hat at 512 would cost 4x for nothing


def random_dino(folder: Path) -> Path:
    """DINO ViT-S/16's architecture (facebook/dino-vits16) with random weights, saved the real way."""
    from transformers import ViTConfig, ViTModel

    if not (folder / "config.json").is_file():
        config = ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                           image_size=224, patch_size=16, qkv_bias=True)
        ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def random_dinov2(folder: Path) -> Path:
    """DINOv2 ViT-S/14's architecture (facebook/dinov2-small) with random weights, saved the real way."""
    from transformers import Dinov2Config, Dinov2Model

    if not (folder / "config.json").is_file():
        Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14,
                                 image_size=518)).save_pretrained(folder)
    return folder


def random_clip(folder: Path) -> Path:
    """CLIP ViT-B/32's architecture (openai/clip-vit-base-patch32) with random weights and the character
    tokenizer of the built-in tiny model (the text tower runs once per prompt: its vocabulary does not matter
    for time)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig

    from rewardbooth.models.tokenizers import make_character_tokenizer

    if not (folder / "config.json").is_file():
        tokenizer = make_character_tokenizer()
        text = CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        CLIPModel(CLIPConfig(text_config=text.to_dict())).save_pretrained(folder)  # vision: ViT-B/32 at 224
        tokenizer.save_pretrained(folder)
    return folder


def variant_overrides(name: str, workdir: Path, resolution: int) -> list[str]:
    overrides = list(VARIANTS[name][0])
    # Each image reward of the variant (on every row, or on the prompt-only rows) reads its backbone's folder.
    rewards = [o.split("=", 1)[1] for o in overrides if o.startswith(("objective.reward=", "objective.scene_reward="))]
    backbones = {reward: random_dino(workdir / "dino") if reward == "dino" else random_clip(workdir / "clip")
                 for reward in rewards if reward in ("dino", "clip_image", "clip_text")}
    if backbones:
        options = ", ".join(f"{reward}: {{model: '{folder}'}}" for reward, folder in backbones.items())
        overrides.append(f"objective.reward_options={{{options}}}")
    if any(reward != "look_forward" for reward in rewards):
        overrides.append(f"objective.reward_resolution={min(resolution, DECODE_PIXELS)}")
    if "critic.name=feature" in overrides:
        overrides.append(f"critic.encoder_model={random_dinov2(workdir / 'dinov2')}")
    return overrides


def native_resolution(model: str) -> int:
    """The pixels a model was trained at (SD-1.5 512, SDXL 1024), as its family says: a built-in architecture is
    built on the meta device, a folder or hub id reads only its denoiser's config (FLUX's has no sample size:
    1024 px, 128 latents)."""
    from diffusers import AutoencoderKL, DiffusionPipeline

    from rewardbooth.models import load_model, loaders

    if model in loaders.names():
        with torch.device("meta"):
            parts = load_model(ModelConfig(model))
        return parts.family.native_resolution(parts)
    vae_levels = len(AutoencoderKL.load_config(model, subfolder="vae")["block_out_channels"])
    denoiser = "unet" if "unet" in DiffusionPipeline.load_config(model) else "transformer"
    # Any model class reads a subfolder's config.json (load_config reads, it builds nothing).
    config = AutoencoderKL.load_config(model, subfolder=denoiser)
    return config.get("sample_size", 128) * 2 ** (vae_levels - 1)


def bench_config(model: str, resolution: int, batch_size: int, mixed_precision: str, workdir: Path,
                 variant_overrides: list[str]) -> Config:
    subject = workdir / "subject"
    if not subject.exists():
        make_example_subject(subject, num_images=4, size=resolution, seed=0)
    return load_config("default", [
        f"model.pretrained={model}", f"data.instance_dir={subject}", f"data.resolution={resolution}",
        "data.prior_preservation=false", f"train.batch_size={batch_size}", f"train.mixed_precision={mixed_precision}",
        f"train.output_dir={workdir / 'run'}", "train.checkpoint_every=0", "validation.every=0",
        "train.report_to=none", *variant_overrides,
    ])


def host_variant(configs: dict[str, Config]) -> str:
    """The variant whose run holds the models for all: one with prompt-only rows if there is one, so that its
    scene prompts are encoded with the rest (each variant then sets the shared data's share for its steps)."""
    names = list(configs)
    return next((name for name in reversed(names) if configs[name].objective.scene_share > 0), names[-1])


def with_objective(run: RunSetup, config: Config) -> RunSetup:
    """The run with this variant's objective, reward and critic (same UNet, data and optimizer)."""
    built = build_objective(config, run.parts, load_concepts(config), run.accelerator.device)
    return dataclasses.replace(run, objective=built.objective, reward=built.reward,
                               diagnostic_reward=built.diagnostic_reward, critic=built.critic,
                               critic_optimizer=built.critic_optimizer)


def make_step(run: RunSetup, config: Config):
    """One full optimizer step of the given variant on a run that holds its objective: the loop's own step."""
    policy = make_policy(run)

    def step(index: int) -> None:
        run.data.scene_share = config.objective.scene_share  # the data is shared: each variant its own share
        train_step(run, policy, config, index)

    return step


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_interleaved(steps: dict, timed_steps: int, warmup_steps: int) -> dict[str, dict[str, float]]:
    names = list(steps)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, list[int]] = {name: [] for name in names}
    reserved: dict[str, list[int]] = {name: [] for name in names}  # what a card must hold (allocator cache too)
    for index in range(warmup_steps + timed_steps):
        order = names if index % 2 == 0 else names[::-1]
        for name in order:
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            synchronize()
            start = time.perf_counter()
            steps[name](index)
            synchronize()
            if index >= warmup_steps:
                seconds[name].append(time.perf_counter() - start)
                if torch.cuda.is_available():
                    peaks[name].append(torch.cuda.max_memory_allocated())
                    reserved[name].append(torch.cuda.max_memory_reserved())
    # The mean too: a step's work may be drawn at random (prompt-only rows at objective.scene_share), so its
    # median is that of the cheaper kind of step when fewer than half draw the dearer one.
    return {name: {"median_step_s": statistics.median(seconds[name]), "mean_step_s": statistics.fmean(seconds[name]),
                   "step_s": seconds[name],
                   "peak_memory_mib": max(peaks[name]) / 2**20 if peaks[name] else None,
                   "peak_reserved_mib": max(reserved[name]) / 2**20 if reserved[name] else None} for name in names}


def child_peak_rss(options: dict) -> float:
    """Peak resident memory (MiB) of a fresh process running warm-up + 2 steps of one variant."""
    code = ("import json, sys; from rewardbooth.experiments.bench import memory_child; "
            "print(memory_child(json.loads(sys.argv[1])))")
    result = subprocess.run([sys.executable, "-c", code, json.dumps(options)], capture_output=True, text=True,
                            check=True)
    return float(result.stdout.strip().splitlines()[-1])


def memory_child(options: dict) -> float:
    """Peak resident memory (MiB) of this process after warm-up + 2 steps of one variant."""
    config = bench_config(options["model"], options["resolution"], options["batch_size"],
                          options["mixed_precision"], Path(options["workdir"]), options["overrides"])
    step = make_step(build_run(config), config)
    for index in range(3):
        step(index)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_bench(model: str = "tiny", resolution: int | None = None, batch_size: int = 1, timed_steps: int = 10,
              warmup_steps: int = 2, mixed_precision: str | None = None, output: Path | None = None,
              variants: tuple[str, ...] | None = None, method: str = "dreambooth",
              extra_overrides: tuple[str, ...] = ()) -> dict:
    """The report (`format_report` makes it text; also written to `output` as JSON). `extra_overrides`
    (`section.key=value`) apply to every variant, e.g. train.gradient_checkpointing=true."""
    cuda = torch.cuda.is_available()
    resolution = resolution or (64 if model.startswith("tiny") or not cuda else native_resolution(model))
    mixed_precision = mixed_precision or ("fp16" if cuda else "no")
    variants = ("baseline", *[name for name in variants_for(method, variants) if name != "baseline"])
    common = [f"method.name={method}", *METHOD_OVERRIDES.get(method, []), *extra_overrides]
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        overrides = {name: [*common, *variant_overrides(name, workdir, resolution)] for name in variants}
        configs = {name: bench_config(model, resolution, batch_size, mixed_precision, workdir, overrides[name])
                   for name in variants}
        # One run holds the models; each variant builds only its own reward and critic on top.
        host = host_variant(configs)
        run = build_run(configs[host])
        steps_by_variant = {name: make_step(run if name == host else with_objective(run, config), config)
                            for name, config in configs.items()}
        results = time_interleaved(steps_by_variant, timed_steps, warmup_steps)
        del run, steps_by_variant
        if not cuda:
            for name in variants:
                results[name]["peak_memory_mib"] = child_peak_rss(dict(
                    model=model, resolution=resolution, batch_size=batch_size, mixed_precision=mixed_precision,
                    workdir=str(workdir), overrides=overrides[name]))
    report = {
        "model": model, "method": method, "overrides": list(extra_overrides), "resolution": resolution,
        "batch_size": batch_size, "mixed_precision": mixed_precision,
        "timed_steps": timed_steps, "warmup_steps": warmup_steps,
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({platform.processor() or platform.machine()}, "
                                                             f"{torch.get_num_threads()} threads)",
        "memory_measure": "peak CUDA allocation per step" if cuda else "peak RSS of a process per variant",
        "variants": results,
        "ratios": {name: {"time": results[name]["median_step_s"] / results["baseline"]["median_step_s"],
                          "mean_time": results[name]["mean_step_s"] / results["baseline"]["mean_step_s"],
                          "memory": results[name]["peak_memory_mib"] / results["baseline"]["peak_memory_mib"],
                          "target": VARIANTS[name][1]} for name in variants[1:]},
    }
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_report(report: dict) -> str:
    lines = [f"model {report['model']} ({report['method']}), {report['resolution']} px, "
             f"batch {report['batch_size']}, "
             f"precision {report['mixed_precision']}, {report['device']}; median of {report['timed_steps']} "
             f"interleaved steps",
             f"{'variant':<40}{'median step (s)':>16}{'mean step (s)':>14}{'peak memory (MiB)':>20}"]
    for name, values in report["variants"].items():
        lines.append(f"{name:<40}{values['median_step_s']:>16.4f}{values['mean_step_s']:>14.4f}"
                     f"{values['peak_memory_mib']:>20.1f}")
    for name, ratios in report["ratios"].items():
        target = f" (target <= {ratios['target']})" if ratios["target"] is not None else ""
        lines.append(f"{name} / baseline: time {ratios['time']:.3f} (mean {ratios['mean_time']:.3f}), "
                     f"memory {ratios['memory']:.3f}{target}")
    lines.append(f"memory = {report['memory_measure']}")
    return "\n".join(lines)
