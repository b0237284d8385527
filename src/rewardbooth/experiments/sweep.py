"""`rewardbooth sweep SWEEP.yaml`: train -> generate -> evaluate for many subjects and several objectives.

The dataset has DreamBench's layout: one folder of photos per subject. A subject's class noun comes from its
`class.txt`, else from DreamBench's map (the folder is named like a DreamBench subject), else from the
`subject.json` of a toy subject. Its prompts come from its `prompts.txt`, else from DreamBench's list for its
class (live subjects for cats and dogs, objects otherwise).

Resumable: a (subject, objective) run is marked done once its images are generated, and a subject once it is
evaluated, so a sweep run again after an interruption (or with more subjects or objectives) redoes nothing
finished. An unfinished run continues from its last checkpoint when its config saves them
(train.checkpoint_every > 0) and starts over otherwise. A finished run whose config or generation settings
differ from the sweep's (a changed train.max_steps, say) is never passed off as current: the sweep stops with
one line naming the setting. Every model the sweep needs (reward and evaluation backbones) is loaded once
before the first run trains, so that a bad name fails in seconds, not hours in. `--shard i/n` takes every
n-th subject; `--devices` starts one process per GPU, each on its shard, then aggregates. The table is
written once every subject is evaluated.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rewardbooth.core.config import Config, check_values, flat_dict, load_config, read_source
from rewardbooth.core.config_parsing import build_dataclass, lookup, parse_override
from rewardbooth.core.config_parsing import config_field as _field
from rewardbooth.core.errors import UserError
from rewardbooth.core.progress import progress, write_line
from rewardbooth.data import dreambench

DONE = "done.json"
SWEEP_KEYS = {"dino": "dino_model", "clip": "clip_model"}  # the sweep file's keys for the evaluation backbones
# Keys in which a finished run may differ from the sweep without changing its images (paths: a sweep folder or
# dataset may move; the subject is the folder of the same name).
UNCHANGING_KEYS = {"train.resume", "train.overwrite", "train.output_dir", "train.checkpoint_every",
                   "train.checkpoints_total_limit", "train.log_every", "train.report_to", "data.instance_dir"}
RENAMED = {"sampler_steps": "num_inference_steps", "images_per_prompt": "num_images"}  # in 0.1.0


@dataclass(frozen=True)
class SweepConfig:
    dataset: str | None = _field(None, "folder with one sub-folder of 3-6 photos per subject (DreamBench layout)")
    output: str = _field("sweep", "where runs, generated images, evaluations and the table go")
    subjects: tuple[str, ...] = _field((), "sub-folders of the dataset to run (default: all)")
    config: str = _field("default", "training config every run starts from: a preset or a YAML/TOML file")
    overrides: dict[str, Any] | None = _field(None, "training overrides for every run, {section.key: value}")
    objectives: dict[str, dict] | None = _field(
        None, "name -> training overrides, e.g. {dreambooth: {objective.name: baseline}, dpg: {objective.name: dpg}}")
    identifier: str = _field("sks", "the subject's identifier in every prompt")
    instance_prompt: str = _field("a photo of {identifier} {class_noun}", "training prompt template")
    class_prompt: str = _field("a photo of {class_noun}", "prior-preservation prompt template")
    num_images: int = _field(4, "generated images per evaluation prompt (image k uses seed + k)")
    seed: int = _field(0, "training and generation seed of every run")
    num_inference_steps: int | None = _field(None, "sampler steps when generating (default: the model family's, "
                                                   "SD 25, SD3 28, FLUX-dev 28)")
    guidance_scale: float | None = _field(None, "guidance when generating (default: the model family's, SD 7.5, "
                                                "SD3 7, FLUX-dev 3.5)")
    resolution: int | None = _field(None, "generated pixels (default: the training resolution)")
    metrics: tuple[str, ...] = _field(("dino", "clip_i", "clip_t"), "evaluation metrics (`rewardbooth evaluate`)")
    dino_model: str = _field("facebook/dino-vits16", "DINO backbone: hub id or local folder")
    clip_model: str = _field("openai/clip-vit-base-patch32", "CLIP backbone: hub id or local folder")
    keep_models: bool = _field(False, "keep each run's trained weights (a DreamBooth UNet is ~3.4 GB); "
                                      "samples, metrics and config are always kept")


DEFAULT_OBJECTIVES = {"dreambooth": {"objective.name": "baseline"}, "dpg": {"objective.name": "dpg"}}


def load_sweep(path: Path, overrides: list[str] = ()) -> SweepConfig:
    """A sweep file, then `key=value` overrides of its top-level keys (e.g. output=sweeps/b)."""
    if not path.is_file():
        raise UserError(f"sweep file {str(path)!r} not found: write a YAML file with dataset:, objectives:, ... "
                        "(see docs/sweep.md)")
    tree = read_source(path)
    for override in overrides:
        key, value = parse_override(override)
        tree[key] = value
    sweep = build_dataclass(SweepConfig, tree, renamed=RENAMED)
    if not sweep.dataset:
        raise UserError(f"{path} sets no dataset: add 'dataset: FOLDER' (one sub-folder of photos per subject)")
    return sweep


def describe_sweep() -> str:
    """Every sweep key with its default and help: the text of `rewardbooth sweep --help-config`."""
    return "\n".join(f"{f.name} = {f.default!r}  # {f.metadata['help']}" for f in dataclasses.fields(SweepConfig))


def objectives_of(sweep: SweepConfig) -> dict[str, dict]:
    return dict(sweep.objectives) if sweep.objectives else dict(DEFAULT_OBJECTIVES)


def subject_class(folder: Path) -> str:
    if (folder / "class.txt").is_file():
        return (folder / "class.txt").read_text().strip()
    if folder.name in dreambench.SUBJECT_CLASSES:
        return dreambench.SUBJECT_CLASSES[folder.name]
    if (folder / "subject.json").is_file():
        return json.loads((folder / "subject.json").read_text())["object_class"]
    raise UserError(f"subject {folder.name!r} has no class noun: write it into {folder / 'class.txt'} (e.g. dog)")


def subject_prompts(folder: Path, class_noun: str, identifier: str) -> list[str]:
    if (folder / "prompts.txt").is_file():
        return dreambench.read_prompt_file(folder / "prompts.txt")
    live = class_noun in dreambench.LIVE_CLASSES
    return [template.format(identifier, class_noun) for template in dreambench.prompt_templates(live)]


def list_subjects(sweep: SweepConfig) -> list[Path]:
    dataset = Path(sweep.dataset).expanduser()
    if not dataset.is_dir():
        raise UserError(f"dataset {str(dataset)!r} is not a folder: give one sub-folder of photos per subject")
    folders = sorted(p for p in dataset.iterdir() if p.is_dir() and not p.name.startswith("."))
    if sweep.subjects:
        missing = sorted(set(sweep.subjects) - {p.name for p in folders})
        if missing:
            raise UserError(f"subject {missing[0]!r} is not a folder of {dataset}: fix 'subjects' in the sweep file")
        folders = [p for p in folders if p.name in sweep.subjects]
    if not folders:
        raise UserError(f"dataset {str(dataset)!r} has no subject folders")
    return folders


def run_config(sweep: SweepConfig, subject: Path, objective: str) -> Config:
    """The training config of one (subject, objective): shared overrides, then the objective's, then the
    subject's data and the run's folder."""
    class_noun = subject_class(subject)
    fill = {"identifier": sweep.identifier, "class_noun": class_noun}
    subject_overrides = {
        "data.instance_dir": str(subject), "data.identifier": sweep.identifier,
        "data.instance_prompt": sweep.instance_prompt.format(**fill),
        "data.class_prompt": sweep.class_prompt.format(**fill),
        "train.output_dir": str(run_dir(sweep, subject.name, objective) / "model"), "train.seed": sweep.seed}
    merged = {**(sweep.overrides or {}), **objectives_of(sweep)[objective], **subject_overrides}
    # JSON is YAML, so every value reaches the config exactly as the sweep file typed it.
    config = load_config(sweep.config, [f"{key}={json.dumps(value)}" for key, value in merged.items()])
    from rewardbooth.training.setup import check_component_names

    check_values(config)
    check_component_names(config)  # an unknown objective, method, reward or critic fails before any run
    return config


def run_dir(sweep: SweepConfig, subject: str, objective: str) -> Path:
    return Path(sweep.output) / "runs" / subject / objective


def generated_dir(sweep: SweepConfig, subject: str, objective: str) -> Path:
    """Named by objective, the name the evaluation report gives the run."""
    return Path(sweep.output) / "generated" / subject / objective


def train_and_generate(sweep: SweepConfig, subject: Path, objective: str, config: Config) -> None:
    from rewardbooth.inference.generate import generate
    from rewardbooth.training.checkpoints import list_checkpoints
    from rewardbooth.training.loop import train
    from rewardbooth.training.selection import BEST_DIR

    folder, images = run_dir(sweep, subject.name, objective), generated_dir(sweep, subject.name, objective)
    shutil.rmtree(images, ignore_errors=True)
    shutil.rmtree(evaluation_dir(sweep, subject.name), ignore_errors=True)  # it scored the run this one replaces
    # An interrupted run continues from its last checkpoint; one without a checkpoint starts over.
    if list_checkpoints(folder / "model"):
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, resume="latest"))
    else:
        shutil.rmtree(folder / "model", ignore_errors=True)
    model = train(config)
    if (model / BEST_DIR).is_dir():  # keep-best: the best validation step is the result
        model = model / BEST_DIR
    settings = generation_settings(sweep, subject, config)
    # Trusted: the config.yaml generate reads is the one train() has just written from this sweep file (a
    # resumed run's saved one must equal it), so any package.module:factory in it is the user's own.
    generate(str(model), settings["prompts"], images, num_images=sweep.num_images, seed=sweep.seed,
             num_inference_steps=sweep.num_inference_steps, guidance_scale=sweep.guidance_scale,
             resolution=settings["resolution"], identifiers=[sweep.identifier], trust_remote_code=True)
    if not sweep.keep_models:
        drop_weights(folder / "model")
    (folder / DONE).write_text(json.dumps({"subject": subject.name, "objective": objective,
                                           "prompts": len(settings["prompts"]), "generation": settings}) + "\n")


def generation_settings(sweep: SweepConfig, subject: Path, config: Config) -> dict[str, Any]:
    """What a run's images depend on besides its training config (recorded in done.json)."""
    return {"prompts": subject_prompts(subject, subject_class(subject), sweep.identifier),
            "num_images": sweep.num_images, "seed": sweep.seed, "num_inference_steps": sweep.num_inference_steps,
            "guidance_scale": sweep.guidance_scale, "resolution": sweep.resolution or config.data.resolution}


def stale_setting(sweep: SweepConfig, subject: Path, objective: str, config: Config) -> str | None:
    """How a finished run differs from what the sweep asks for now ('key was X, is Y now'), or None."""
    folder = run_dir(sweep, subject.name, objective)
    saved_config = folder / "model" / "config.yaml"
    saved = yaml.safe_load(saved_config.read_text()) if saved_config.is_file() else {}
    missing = object()
    for key, value in flat_dict(config).items():
        # Keys the saved config lacks are newer than the run; they cannot have been changed.
        old = lookup(saved, key, missing)
        if key not in UNCHANGING_KEYS and old is not missing and old != value:
            return f"{key} was {old!r} and is {value!r} now"
    recorded = json.loads((folder / DONE).read_text()).get("generation") or {}
    for key, value in generation_settings(sweep, subject, config).items():
        if key in recorded and recorded[key] != value:
            return "its prompts differ" if key == "prompts" else f"{key} was {recorded[key]!r} and is {value!r} now"
    return None


def check_finished_runs(sweep: SweepConfig, finished: list[tuple[Path, str]], configs: dict) -> None:
    """Refuse to pass off a finished run made with other settings as one of this sweep."""
    for subject, name in finished:
        change = stale_setting(sweep, subject, name, configs[subject.name, name])
        if change is not None:
            raise UserError(f"finished run {subject.name}/{name} does not match the sweep file ({change}): undo the "
                            f"change, give the sweep a new output folder (output=...), or delete "
                            f"{run_dir(sweep, subject.name, name)} to redo that run")


def check_models(sweep: SweepConfig, configs: dict[tuple[str, str], Config], folders: list[Path]) -> None:
    """Load every model the sweep will need, once each, on the CPU, and let it go: the evaluation backbones
    and each objective's reward and validation reward models (on its first subject's photos)."""
    import torch

    from rewardbooth.data.images import image_to_tensor, load_subject_images
    from rewardbooth.evaluation.evaluate import Backbones
    from rewardbooth.rewards import RewardSetup, build_reward
    from rewardbooth.training.selection import ValidationScorer

    cpu, checked = torch.device("cpu"), set()
    Backbones(sweep.dino_model, sweep.clip_model, cpu, keys=SWEEP_KEYS).check(sweep.metrics)
    for (subject, _), config in configs.items():
        if config.objective.name == "baseline" and config.validation.reward is None:
            continue  # no model besides the one trained
        spec = json.dumps([config.objective.name != "baseline" and config.objective.reward,
                           config.objective.reward_options, config.validation.reward, config.validation.reward_options])
        if spec in checked:
            continue
        checked.add(spec)
        photos = load_subject_images(next(folder for folder in folders if folder.name == subject))
        setup = RewardSetup(torch.stack([image_to_tensor(image, config.data.resolution, config.data.center_crop)
                                         for _, image in photos]), config.data.identifier, cpu)
        if config.objective.name != "baseline":
            build_reward(config.objective.reward, config.objective.reward_options, setup)
        if config.validation.reward is not None:
            ValidationScorer(config, [setup], cpu)


def drop_weights(model_dir: Path) -> None:
    """Delete weights and checkpoints; keep what a person reads (samples, metrics, config)."""
    shutil.rmtree(model_dir / "checkpoints", ignore_errors=True)
    for path in list(model_dir.rglob("*")):
        if path.is_file() and path.suffix in {".safetensors", ".bin", ".pt"}:
            path.unlink()


def run_sweep(sweep: SweepConfig, shard: tuple[int, int] = (0, 1), device: str | None = None) -> dict | None:
    """Train and generate every pending run of this shard, evaluate its subjects, and write the table when
    every subject of the sweep is evaluated (returned; None while other shards are unfinished)."""
    from rewardbooth.core.storage import check_writable
    from rewardbooth.evaluation.evaluate import Backbones, evaluate

    folders, objectives = list_subjects(sweep), objectives_of(sweep)
    check_writable(Path(sweep.output), "output")
    mine = folders[shard[0]::shard[1]]
    # Every run's config is built first: a bad key fails now, not hours into the sweep.
    configs = {(s.name, name): run_config(sweep, s, name) for s in mine for name in objectives}
    pending = [(s, name) for s in mine for name in objectives if not (run_dir(sweep, s.name, name) / DONE).is_file()]
    check_finished_runs(sweep, [(s, n) for s in mine for n in objectives if (s, n) not in pending], configs)
    if pending or not all(evaluated(sweep, s.name, objectives) for s in mine):
        check_models(sweep, {(s.name, n): configs[s.name, n] for s, n in pending}, mine)
    if len(pending) < len(configs):
        write_line(f"sweep: {len(configs) - len(pending)} of {len(configs)} runs already done, skipped")
    for subject, name in progress(pending, desc="sweep", dynamic_ncols=True):
        write_line(f"sweep: {subject.name} / {name}")
        train_and_generate(sweep, subject, name, configs[subject.name, name])
    import torch

    backbones = Backbones(sweep.dino_model, sweep.clip_model,
                          torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")), keys=SWEEP_KEYS)
    for subject in mine:
        report = evaluation_dir(sweep, subject.name)
        if not evaluated(sweep, subject.name, objectives):
            staging = report.with_name(report.name + ".partial")  # renamed when complete: never half a report
            shutil.rmtree(staging, ignore_errors=True)
            evaluate([generated_dir(sweep, subject.name, name) for name in objectives], subject, staging,
                     sweep.metrics, sweep.identifier, backbones=backbones)
            shutil.rmtree(report, ignore_errors=True)
            staging.rename(report)
    if all(evaluated(sweep, s.name, objectives) for s in folders):
        from rewardbooth.experiments.sweep_report import aggregate

        return aggregate(Path(sweep.output), [s.name for s in folders], list(objectives), sweep.metrics)
    return None


def evaluation_dir(sweep: SweepConfig, subject: str) -> Path:
    return Path(sweep.output) / "evaluation" / subject


def evaluated(sweep: SweepConfig, subject: str, objectives: dict[str, dict]) -> bool:
    """Whether the subject's report scores exactly the sweep's objectives with its metrics (one written before
    an objective or a metric was added is redone)."""
    report = evaluation_dir(sweep, subject) / "evaluation.json"
    if not report.is_file():
        return False
    written = json.loads(report.read_text())
    return set(written["runs"]) == set(objectives) and set(written["protocol"]) == set(sweep.metrics)


def parse_shard(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise UserError(f"shard {text!r}: write it as INDEX/COUNT with 0 <= INDEX < COUNT, e.g. 0/4")
    return int(index), int(count)


def launch_per_device(argv: list[str], devices: list[str]) -> None:
    """One `rewardbooth sweep` process per device (CUDA_VISIBLE_DEVICES), each on its shard."""
    processes = []
    for index, device in enumerate(devices):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": device.removeprefix("cuda:")}
        processes.append(subprocess.Popen([sys.executable, "-m", "rewardbooth", "sweep", *argv,
                                           "--shard", f"{index}/{len(devices)}"], env=env))
    failed = sum(process.wait() != 0 for process in processes)
    if failed:
        raise UserError(f"{failed} of {len(devices)} sweep processes failed (see above); run the same command "
                        "again to resume")
