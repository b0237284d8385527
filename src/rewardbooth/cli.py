"""The `rewardbooth` command: train, generate, evaluate, sweep, bench, demo, rewards."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import re
import sys
from pathlib import Path

from rewardbooth.core.errors import UserError
from rewardbooth.core.progress import quiet_libraries

TOY_MODEL_CHOICES = ("toy", "toy-flow")  # experiments.toyworld.experiment.TOY_MODELS, without importing torch
WRITE_FAILURES = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG, errno.EROFS)


def _add_train(commands) -> None:
    from rewardbooth.core.config import preset_names

    parser = commands.add_parser("train", help="personalize a model (DreamBooth, optionally with DPG)",
                                 description="Fine-tune a model on a subject. CONFIG is a YAML/TOML file or a "
                                             f"preset ({', '.join(preset_names())}); then section.key=value "
                                             "overrides, e.g. data.instance_dir=photos/ train.max_steps=400.")
    parser.add_argument("config", nargs="?", help="config file or preset name")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    parser.add_argument("--help-config", action="store_true",
                        help="list every config key with its value (CONFIG's, with the overrides) and, for each value CONFIG sets, its reason and source (else the key's help); then exit")


def _add_generate(commands) -> None:
    parser = commands.add_parser("generate", help="sample images from a model folder, hub id or 'tiny'")
    parser.add_argument("model", help="diffusers folder (e.g. a train output, LoRA ones too), hub id, or 'tiny'")
    parser.add_argument("--lora", default=None, help="a LoRA folder (pytorch_lora_weights.safetensors) to add")
    parser.add_argument("--prompt", action="append", default=[], help="prompt (repeat for several)")
    parser.add_argument("--prompts-file", type=Path, default=None, help="more prompts, one per line")
    parser.add_argument("--dreambench", metavar="SUBJECT", default=None,
                        help="DreamBench's 25 prompts for this subject (e.g. dog3), with --identifier")
    parser.add_argument("--identifier", default=None,
                        help="the subject's identifier, in --dreambench prompts and recorded for evaluate "
                             "(default: the run's own, from its config.yaml; else sks)")
    parser.add_argument("--num-images", type=int, default=4, help="images per prompt")
    parser.add_argument("--seed", type=int, default=0, help="image k uses seed+k")
    parser.add_argument("--num-inference-steps", type=int, default=None,
                        help="sampler steps (default: the model family's: SD/SDXL 25, SD3 and FLUX-dev 28)")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="guidance scale (default: the model family's: SD 7.5, SDXL 5, SD3 7, FLUX-dev 3.5)")
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default: the model's)")
    parser.add_argument("--output", type=Path, default=Path("generated"), help="folder for PNGs and grid.png")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files of the same names")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="import the 'package.module:factory' (base model or method) a training output's "
                             "config.yaml names: code that came with the run; refused without this flag")


def _add_bench(commands) -> None:
    parser = commands.add_parser("bench", help="benchmarks: step (DPG step cost), toyworld (quality), evaluation "
                                               "(evaluate's speed)",
                                 description="Three benchmarks, each with its own options (`rewardbooth bench "
                                             "KIND --help`).")
    kinds = parser.add_subparsers(dest="bench", metavar="{step,toyworld,evaluation}")
    _add_bench_step(kinds)
    _add_bench_toyworld(kinds)
    _add_bench_evaluation(kinds)


def _add_bench_step(kinds) -> None:
    parser = kinds.add_parser("step", help="time baseline vs DPG steps (ratios of median time and memory)")
    parser.add_argument("--model", default="tiny",
                        help="'tiny', 'tiny-sdxl', 'tiny-sd3', 'tiny-flux', 'tiny-zimage', 'sd15-random', 'sdxl-random', 'sd35m-random', "
                             "'flux-random' or a diffusers folder")
    parser.add_argument("--method", default="dreambooth",
                        help="base method of every variant: dreambooth, lora, custom_diffusion")
    parser.add_argument("--resolution", type=int, default=None,
                        help="pixels (default: 64 on CPU and for tiny models; 512 SD-1.5, 1024 SDXL on CUDA)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--timed-steps", type=int, default=10, help="timed steps per variant (after warm-up)")
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default=None,
                        help="default: fp16 on CUDA, no on CPU")
    parser.add_argument("--variants", nargs="+", default=None, metavar="VARIANT",
                        help="variants timed against baseline (default: all): dpg-look-forward, dpg-dino, "
                             "dpg-clip-image, dpg-clip-text; for rewards without a gradient dpg-dino-feature "
                             "(feature critic) and grpo-dino (rollouts); prompt-only states dpg-clip-text-scenes; "
                             "with critic diagnostics at every step dpg-look-forward-diagnosed, dpg-dino-diagnosed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a config override for every variant (repeat), e.g. train.gradient_checkpointing=true")
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")


def _add_bench_toyworld(kinds) -> None:
    parser = kinds.add_parser("toyworld", help="the toy-world quality benchmark (subjects x seeds x objectives)")
    parser.add_argument("--num-subjects", type=int, default=8, help="number of reported subjects")
    parser.add_argument("--first-subject", type=int, default=100,
                        help="index of the first subject (100+ are reported, 0-99 are for tuning)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-steps", type=int, default=600, help="training steps per run")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate")
    parser.add_argument("--objectives", nargs="+", default=None,
                        help="objectives (default: all); NAME@section.key=value@... adds overrides to one "
                             "objective, e.g. baseline@objective.instance_weight=2")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a config override for every run (repeat), e.g. objective.gamma=0.99")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, one thread each")
    parser.add_argument("--summarize-only", action="store_true",
                        help="run nothing: summarise the stored runs (each comparison over the subject-seed pairs "
                             "both sides have), e.g. while a long benchmark is still running elsewhere")
    parser.add_argument("--prompts", choices=("all", "unseen"), default="all",
                        help="prompts each run is scored on: the subject's 25, or those naming no scene or "
                             "position that prompt-only training uses (routes trained on scene prompts need it)")
    parser.add_argument("--model", choices=TOY_MODEL_CHOICES, default="toy",
                        help="the base model: toy (DDPM UNet) or toy-flow (rectified-flow SD3 transformer)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/toyworld"), help="the benchmark folder")


def _add_bench_evaluation(kinds) -> None:
    parser = kinds.add_parser("evaluation", help="images/s of `rewardbooth evaluate` with DINO + CLIP (random "
                                                 "real-size models)")
    parser.add_argument("--images", type=int, default=None, help="images scored (default 3000 on CUDA, 128 on CPU)")
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")


def _add_demo(commands) -> None:
    parser = commands.add_parser("demo", help="baseline vs DPG on a toy subject with the shipped toy model "
                                              "(no download, a few minutes on a laptop)")
    parser.add_argument("--output", type=Path, default=Path("rewardbooth-demo"), help="demo folder")
    parser.add_argument("--subject", type=int, default=0, help="toy subject index")
    parser.add_argument("--train-steps", type=int, default=300, help="training steps per method")
    parser.add_argument("--num-images", type=int, default=2, help="images per prompt")
    parser.add_argument("--num-prompts", type=int, default=25, help="first N prompts of the subject's set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing demo folder")
    parser.add_argument("--model", choices=TOY_MODEL_CHOICES, default="toy",
                        help="the shipped base model: toy (DDPM UNet) or toy-flow (rectified-flow SD3 transformer)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rewardbooth", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_generate, _add_bench, _add_demo, _add_rewards, _add_evaluate, _add_sweep):
        add(commands)
    return parser


def _add_evaluate(commands) -> None:
    parser = commands.add_parser("evaluate", help="DreamBench metrics (DINO, CLIP-I, CLIP-T, ...) of generated images")
    parser.add_argument("generated", type=Path, nargs="+", help="folders written by `rewardbooth generate` (one per run)")
    parser.add_argument("--subject", type=Path, required=True, help="folder of the subject's reference photos")
    parser.add_argument("--output", type=Path, default=Path("evaluation"), help="report folder")
    parser.add_argument("--metrics", nargs="+", default=["dino", "clip_i", "clip_t"],
                        help="registered metrics (--list-metrics lists them; default: dino clip_i clip_t)")

    class ListMetrics(argparse.Action):
        """Like --help: prints the metric registry and exits, whatever else the command line lacks."""

        def __call__(self, parser, namespace, values, option_string=None):
            from rewardbooth.evaluation.evaluate import describe_metrics

            print(describe_metrics({"dino": "--dino-model", "clip": "--clip-model"}))
            parser.exit()

    parser.add_argument("--list-metrics", nargs=0, action=ListMetrics, help="list the registered metrics and exit")
    parser.add_argument("--identifier", default=None,
                        help="removed from prompts for CLIP-T (default: each run's own, recorded in its "
                             "generation.json; else sks)")
    parser.add_argument("--dino-model", default="facebook/dino-vits16", help="hub id or local folder")
    parser.add_argument("--clip-model", default="openai/clip-vit-base-patch32", help="hub id or local folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier report in --output")


def _add_sweep(commands) -> None:
    parser = commands.add_parser("sweep", help="train, generate and evaluate many subjects x objectives (resumable)",
                                 description="Run a sweep file (docs/sweep.md): every subject of a DreamBench-layout "
                                             "dataset with every objective, then the DINO / CLIP-I / CLIP-T table. "
                                             "Run it again to resume; finished runs are skipped.")
    parser.add_argument("sweep", type=Path, nargs="?", help="sweep YAML file")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the sweep file, e.g. output=sweeps/b")
    parser.add_argument("--shard", default="0/1", help="INDEX/COUNT: this process runs every COUNT-th subject")
    parser.add_argument("--devices", nargs="+", default=None,
                        help="one process per GPU (e.g. 0 1 2 3, or 'all'), each on its shard, then the table")
    parser.add_argument("--help-config", action="store_true", help="list every sweep key and exit")


def _add_rewards(commands) -> None:
    parser = commands.add_parser("rewards", help="list the rewards, their options and differentiability")
    parser.add_argument("names", nargs="*", help="only these (registered names or 'package.module:factory')")


def _run_train(args: argparse.Namespace) -> None:
    from rewardbooth.core.config import load_config
    from rewardbooth.core.presets import describe, preset_notes

    if args.help_config:
        if args.config is None:
            print(describe())
        else:  # the preset's values, each with its reason and source where the preset gives one
            notes = preset_notes(args.config).without(args.overrides)
            print(describe(load_config(args.config, args.overrides), notes))
        return
    if args.config is None:
        raise UserError("no config given: `rewardbooth train default data.instance_dir=PHOTOS ...` (a preset or a "
                        "YAML/TOML file; --help-config lists every key)")
    from rewardbooth.training.loop import train

    print(f"done: {train(load_config(args.config, args.overrides))}")


def _run_generate(args: argparse.Namespace) -> None:
    from rewardbooth.data.dreambench import prompts_for, read_prompt_file
    from rewardbooth.inference.generate import generate, run_identifiers

    identifiers = [args.identifier] if args.identifier else run_identifiers(args.model, args.lora)
    prompts = list(args.prompt)
    if args.prompts_file is not None:
        prompts += read_prompt_file(args.prompts_file)
    if args.dreambench is not None:
        prompts += prompts_for(args.dreambench, (identifiers or ["sks"])[0])
        identifiers = identifiers or ["sks"]
    if not prompts:
        raise UserError("no prompt given: pass --prompt 'a photo of sks dog' (repeat it for several), "
                        "--prompts-file or --dreambench")
    with _flags({"lora": "--lora", "num_images": "--num-images", "resolution": "--resolution",
                 "overwrite=True": "--overwrite", "output_dir": "--output",
                 "num_inference_steps": "--num-inference-steps", "guidance_scale": "--guidance-scale"}):
        paths = generate(args.model, prompts, args.output, num_images=args.num_images, seed=args.seed,
                         num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                         resolution=args.resolution, overwrite=args.overwrite, lora=args.lora, identifiers=identifiers,
                         trust_remote_code=args.trust_remote_code)
    print(f"wrote {len(paths)} images and {args.output / 'grid.png'}")


BENCH_KINDS = "step (the cost of a DPG step), toyworld (the toy-world quality benchmark), evaluation " \
              "(images/s of `rewardbooth evaluate`)"


def _run_bench(args: argparse.Namespace) -> None:
    if args.bench is None:
        raise UserError(f"rewardbooth bench needs one of: {BENCH_KINDS}; e.g. `rewardbooth bench step --help`")
    {"step": _run_bench_step, "toyworld": _run_bench_toyworld, "evaluation": _run_bench_evaluation}[args.bench](args)


def _run_bench_step(args: argparse.Namespace) -> None:
    from rewardbooth.experiments.bench import VARIANTS, format_report, run_bench

    unknown = sorted(set(args.variants or ()) - set(VARIANTS))
    if unknown:
        raise UserError(f"unknown bench variant {unknown[0]!r}: choose from {', '.join(VARIANTS)}")
    report = run_bench(model=args.model, resolution=args.resolution, batch_size=args.batch_size,
                       timed_steps=args.timed_steps, warmup_steps=args.warmup_steps,
                       mixed_precision=args.mixed_precision, output=args.output,
                       variants=tuple(args.variants) if args.variants else None, method=args.method,
                       extra_overrides=tuple(args.overrides))
    print(format_report(report))


def _run_bench_toyworld(args: argparse.Namespace) -> None:
    from rewardbooth.experiments.toyworld.benchmark import run_toyworld_benchmark
    from rewardbooth.experiments.toyworld.experiment import OBJECTIVES, Setting, objective_overrides

    for objective in args.objectives or ():
        objective_overrides(objective, args.model)  # an unknown name fails before any run
    run_toyworld_benchmark(args.output, num_subjects=args.num_subjects, seeds=tuple(args.seeds),
                           objectives=tuple(args.objectives or OBJECTIVES), first_subject=args.first_subject,
                           jobs=args.jobs, run_pending=not args.summarize_only,
                           setting=Setting(steps=args.train_steps, lr=args.lr, overrides=tuple(args.overrides),
                                           prompts=args.prompts, model=args.model))
    print((args.output / "results.md").read_text())


def _run_bench_evaluation(args: argparse.Namespace) -> None:
    from rewardbooth.experiments.bench_evaluation import format_evaluation_report, run_evaluation_bench

    print(format_evaluation_report(run_evaluation_bench(num_images=args.images, output=args.output)))


def _run_evaluate(args: argparse.Namespace) -> None:
    from rewardbooth.core.storage import check_writable
    from rewardbooth.evaluation.evaluate import evaluate

    if (args.output / "evaluation.json").exists() and not args.overwrite:
        raise UserError(f"{args.output} already holds an evaluation; pass --overwrite or choose another --output")
    check_writable(args.output, "--output")
    with _flags({"dino_model": "--dino-model", "clip_model": "--clip-model", "metrics": "--metrics"}):
        evaluate(args.generated, args.subject, args.output, metrics=tuple(args.metrics), identifier=args.identifier,
                 dino_model=args.dino_model, clip_model=args.clip_model)
    print((args.output / "report.md").read_text())
    print(f"report: {args.output / 'report.html'}")


def _run_sweep(args: argparse.Namespace) -> None:
    from rewardbooth.experiments.sweep import (
        describe_sweep,
        launch_per_device,
        load_sweep,
        parse_shard,
        run_sweep,
    )

    if args.help_config:
        print(describe_sweep())
        return
    if args.sweep is None:
        raise UserError("no sweep file given: `rewardbooth sweep SWEEP.yaml` (see examples/sweep-toy.yaml)")
    sweep = load_sweep(args.sweep, args.overrides)
    with _flags({"shard": "--shard"}):
        shard = parse_shard(args.shard)
    if args.devices:
        import torch

        if shard != (0, 1):
            raise UserError("--devices shards the subjects itself: leave --shard out")
        devices = [str(i) for i in range(torch.cuda.device_count())] if args.devices == ["all"] else args.devices
        if not devices:
            raise UserError("--devices all: no CUDA device is visible; leave --devices out to run in this process")
        launch_per_device([str(args.sweep), *args.overrides], devices)
    result = run_sweep(sweep, shard)
    if result is None:
        print(f"sweep: shard {args.shard} finished; run the other shards, then any of them again for the table")
    else:
        print((Path(sweep.output) / "results.md").read_text())
        print(f"table: {Path(sweep.output) / 'results.png'}")


def _run_rewards(args: argparse.Namespace) -> None:
    from rewardbooth.rewards.base import describe_rewards

    print(describe_rewards(args.names))


def _run_demo(args: argparse.Namespace) -> None:
    from rewardbooth.experiments.demo import format_table, run_demo

    with _flags({"overwrite=True": "--overwrite"}):
        results = run_demo(args.output, subject_index=args.subject, train_steps=args.train_steps,
                           num_images=args.num_images, num_prompts=args.num_prompts, overwrite=args.overwrite,
                           seed=args.seed, model=args.model)
    print(format_table(results))
    print(f"\nreport: {args.output / 'report.html'}")


@contextlib.contextmanager
def _flags(flags: dict[str, str]):
    """The library names its own parameters in its errors (`num_images`, `overwrite=True`); say the command's
    flags instead (`--num-images`, `--overwrite`). A name inside a longer one (`train.output_dir`,
    `method.name=lora`) is left alone."""
    try:
        yield
    except UserError as error:
        message = str(error)
        for name, flag in flags.items():
            message = re.sub(rf"(?<![\w.=-]){re.escape(name)}(?![\w-])", flag, message)
        raise UserError(message) from None


COMMANDS = {"train": _run_train, "generate": _run_generate, "bench": _run_bench, "evaluate": _run_evaluate,
            "rewards": _run_rewards, "demo": _run_demo, "sweep": _run_sweep}


def run(args: argparse.Namespace) -> None:
    COMMANDS[args.command](args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    try:
        run(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in WRITE_FAILURES:
            raise
        # Wherever else a full disk or a read-only folder strikes: one line, not a traceback.
        print(f"error: cannot write {error.filename or 'a file'}: {error.strerror.lower()}; free some space (or "
              f"choose a writable folder) and run the command again", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
