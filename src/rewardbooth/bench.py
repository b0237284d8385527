"""`rewardbooth bench`: the cost of the DPG look-forward step relative to the plain DreamBooth step.

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

from rewardbooth.config import Config, load_config
from rewardbooth.data import make_example_subject
from rewardbooth.setup import RunSetup, build_run
from rewardbooth.train import accumulate_gradients, all_finite, apply_update, make_policy

VARIANTS = {"baseline": ["objective.name=baseline"], "dpg-look-forward": ["objective.name=dpg"]}
TARGET_RATIO = 1.03


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


def make_step(run: RunSetup, config: Config):
    """One full optimizer step of the given variant on an already built run."""
    if config.objective.name == "baseline":
        run = dataclasses.replace(run, critic=None, critic_optimizer=None, reward=None)
    policy = make_policy(run)
    alphas_cumprod = run.noise_scheduler.alphas_cumprod.to(run.accelerator.device, torch.float32)

    def step(index: int) -> None:
        terms = accumulate_gradients(run, policy, config, index, alphas_cumprod)
        apply_update(run, config.train, not all_finite(run.accelerator, terms), index)

    return step


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_interleaved(steps: dict, num_steps: int, warmup: int) -> dict[str, dict[str, float]]:
    names = list(steps)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, list[int]] = {name: [] for name in names}
    for index in range(warmup + num_steps):
        order = names if index % 2 == 0 else names[::-1]
        for name in order:
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            synchronize()
            start = time.perf_counter()
            steps[name](index)
            synchronize()
            if index >= warmup:
                seconds[name].append(time.perf_counter() - start)
                if torch.cuda.is_available():
                    peaks[name].append(torch.cuda.max_memory_allocated())
    return {name: {"median_step_s": statistics.median(seconds[name]),
                   "peak_memory_mib": max(peaks[name]) / 2**20 if peaks[name] else None} for name in names}


def child_peak_rss(options: dict) -> float:
    """Peak resident memory (MiB) of a fresh process running warm-up + 2 steps of one variant."""
    code = "import json, sys; from rewardbooth.bench import memory_child; memory_child(json.loads(sys.argv[1]))"
    result = subprocess.run([sys.executable, "-c", code, json.dumps(options)], capture_output=True, text=True,
                            check=True)
    return float(result.stdout.strip().splitlines()[-1])


def memory_child(options: dict) -> None:
    config = bench_config(options["model"], options["resolution"], options["batch_size"],
                          options["mixed_precision"], Path(options["workdir"]), options["overrides"])
    step = make_step(build_run(config), config)
    for index in range(3):
        step(index)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux reports KiB


def run_bench(model: str = "tiny", resolution: int | None = None, batch_size: int = 1, steps: int = 10,
              warmup: int = 2, mixed_precision: str | None = None, output: Path | None = None) -> dict:
    cuda = torch.cuda.is_available()
    resolution = resolution or (64 if model == "tiny" or not cuda else 512)
    mixed_precision = mixed_precision or ("fp16" if cuda else "no")
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        configs = {name: bench_config(model, resolution, batch_size, mixed_precision, workdir, overrides)
                   for name, overrides in VARIANTS.items()}
        run = build_run(configs["dpg-look-forward"])
        results = time_interleaved({name: make_step(run, config) for name, config in configs.items()},
                                   steps, warmup)
        del run
        if not cuda:
            for name, overrides in VARIANTS.items():
                results[name]["peak_memory_mib"] = child_peak_rss(dict(
                    model=model, resolution=resolution, batch_size=batch_size, mixed_precision=mixed_precision,
                    workdir=str(workdir), overrides=overrides))
    report = {
        "model": model, "resolution": resolution, "batch_size": batch_size, "mixed_precision": mixed_precision,
        "timed_steps": steps, "warmup_steps": warmup,
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({platform.processor() or platform.machine()}, "
                                                             f"{torch.get_num_threads()} threads)",
        "memory_measure": "peak CUDA allocation per step" if cuda else "peak RSS of a process per variant",
        "variants": results,
        "ratios": {"time": results["dpg-look-forward"]["median_step_s"] / results["baseline"]["median_step_s"],
                   "memory": results["dpg-look-forward"]["peak_memory_mib"] / results["baseline"]["peak_memory_mib"]},
        "target_ratio": TARGET_RATIO,
    }
    print(format_report(report))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_report(report: dict) -> str:
    lines = [f"model {report['model']}, {report['resolution']} px, batch {report['batch_size']}, "
             f"precision {report['mixed_precision']}, {report['device']}; median of {report['timed_steps']} "
             f"interleaved steps",
             f"{'variant':<20}{'median step (s)':>18}{'peak memory (MiB)':>20}"]
    for name, values in report["variants"].items():
        lines.append(f"{name:<20}{values['median_step_s']:>18.4f}{values['peak_memory_mib']:>20.1f}")
    ratios = report["ratios"]
    lines.append(f"DPG-LF / baseline: time {ratios['time']:.3f}, memory {ratios['memory']:.3f} "
                 f"(target <= {report['target_ratio']}; memory = {report['memory_measure']})")
    return "\n".join(lines)
