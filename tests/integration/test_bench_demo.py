"""The bench and demo commands end to end on the tiny model."""

import json
from html.parser import HTMLParser

import pytest
from PIL import Image

from helpers import run_cli


@pytest.mark.slow
def test_bench_reports_ratios(tmp_path, capsys):
    output = tmp_path / "bench.json"
    variants = ["dpg-look-forward", "dpg-dino", "dpg-clip-image", "dpg-clip-text", "dpg-look-forward-diagnosed",
                "dpg-dino-diagnosed"]
    assert run_cli(["bench", "step", "--timed-steps", "2", "--warmup-steps", "1", "--variants", *variants,
                    "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert set(report["variants"]) == {"baseline", *variants}
    for values in report["variants"].values():
        assert values["median_step_s"] > 0 and values["peak_memory_mib"] > 100
    for name, target in (("dpg-look-forward", 1.03), ("dpg-dino", 1.25)):
        ratio = report["variants"][name]["median_step_s"] / report["variants"]["baseline"]["median_step_s"]
        assert report["ratios"][name]["time"] == pytest.approx(ratio) and report["ratios"][name]["target"] == target
    assert (report["timed_steps"], report["warmup_steps"]) == (2, 1)
    printed = capsys.readouterr().out
    assert "dpg-look-forward / baseline: time" in printed and "dpg-dino / baseline: time" in printed


def test_the_black_box_variants_read_random_real_size_backbones(tmp_path):
    """`dpg-dino-feature` reads a DINOv2 ViT-S/14 of random weights saved the real way (the feature critic's
    encoder), beside the DINO reward's ViT-S/16; `grpo-dino` needs no critic."""
    from transformers import Dinov2Config

    from rewardbooth.experiments.bench import variant_overrides

    feature = variant_overrides("dpg-dino-feature", tmp_path, 64)
    assert "critic.name=feature" in feature and "critic.encoder=dinov2" in feature
    folder = next(o.split("=", 1)[1] for o in feature if o.startswith("critic.encoder_model="))
    config = Dinov2Config.from_pretrained(folder)
    assert (config.hidden_size, config.num_hidden_layers, config.patch_size) == (384, 12, 14)
    assert not any(o.startswith("critic.") for o in variant_overrides("grpo-dino", tmp_path, 64))


def test_the_recipe_variants_time_both_rewards_and_the_anchor(tmp_path):
    """The fidelity-with-alignment recipe's rows read a DINO for the photo rows and a CLIP for the prompt-only
    rows, and its step runs (the anchored row with LoRA, which it needs)."""
    from rewardbooth.experiments.bench import variant_overrides

    overrides = variant_overrides("direct-dino-clip-text-scenes-anchored", tmp_path / "backbones", 64)
    options = next(o for o in overrides if o.startswith("objective.reward_options="))
    assert "dino: {model:" in options and "clip_text: {model:" in options
    assert "objective.reward_resolution=64" in overrides and "objective.anchor_weight=1.0" in overrides
    output = tmp_path / "bench.json"
    # Beside a variant without prompt-only rows (the shared run's data switches their share per variant).
    variants = ["dpg-look-forward", "direct-dino-clip-text-scenes", "direct-dino-clip-text-scenes-anchored"]
    assert run_cli(["bench", "step", "--method", "lora", "--variants", *variants, "--timed-steps", "1",
                    "--warmup-steps", "1", "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    for name in variants:  # prompt-only rows are drawn at random: a step's cost varies, so the mean is kept too
        assert report["variants"][name]["mean_step_s"] == pytest.approx(sum(report["variants"][name]["step_s"]) / 1)
        assert report["ratios"][name]["mean_time"] == pytest.approx(
            report["variants"][name]["mean_step_s"] / report["variants"]["baseline"]["mean_step_s"])


def test_the_shared_run_is_built_from_a_variant_with_prompt_only_rows(tmp_path):
    from rewardbooth.experiments.bench import bench_config, host_variant, variant_overrides

    configs = {name: bench_config("tiny", 64, 1, "no", tmp_path, variant_overrides(name, tmp_path, 64))
               for name in ("baseline", "direct-dino-clip-text-scenes", "dpg-look-forward")}
    assert host_variant(configs) == "direct-dino-clip-text-scenes"  # its scene prompts are encoded for all
    del configs["direct-dino-clip-text-scenes"]
    assert host_variant(configs) == "dpg-look-forward"


@pytest.mark.parametrize("method", ["dreambooth", "lora"])
def test_every_default_variant_is_one_the_method_can_run(method, tmp_path, capsys):
    """`rewardbooth bench step` with no --variants times every variant its --method can run: each passes the
    checks a run makes before building anything (the anchored recipe only with LoRA)."""
    from rewardbooth.experiments.bench import METHOD_ONLY, bench_config, variant_overrides, variants_for
    from rewardbooth.training.prompt_only import check_prompt_only

    names = variants_for(method)
    assert ("direct-dino-clip-text-scenes-anchored" in names) == (method == "lora")
    for name in names:
        config = bench_config("tiny", 64, 1, "no", tmp_path,
                              [f"method.name={method}", *variant_overrides(name, tmp_path, 64)])
        check_prompt_only(config)
    anchored = next(iter(METHOD_ONLY))
    assert run_cli(["bench", "step", "--variants", anchored]) == 2
    assert f"bench variant {anchored!r} needs --method lora" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["lora", "custom_diffusion"])
def test_bench_times_each_method_and_sdxl(method, tmp_path):
    model = "tiny" if method == "custom_diffusion" else "tiny-sdxl"  # Custom Diffusion is SD-only
    output = tmp_path / "bench.json"
    assert run_cli(["bench", "step", "--model", model, "--method", method, "--variants", "dpg-look-forward",
                    "--timed-steps", "1", "--warmup-steps", "1", "--set", "train.gradient_checkpointing=true",
                    "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert (report["model"], report["method"]) == (model, method)
    assert report["overrides"] == ["train.gradient_checkpointing=true"]
    assert set(report["variants"]) == {"baseline", "dpg-look-forward"} and report["ratios"]["dpg-look-forward"]["time"] > 0


def test_bench_default_resolution_is_the_models_own(tiny_folder):
    from rewardbooth.experiments.bench import native_resolution

    assert native_resolution("sd15-random") == 512 and native_resolution("sdxl-random") == 1024
    assert native_resolution(str(tiny_folder)) == native_resolution("tiny") == 64  # a folder: its configs only


def test_bench_default_resolution_of_a_flow_family_folder(tmp_path):
    """An SD3 folder has a transformer, no UNet: its sample size and VAE factor give the pixels."""
    from rewardbooth.core.config import ModelConfig
    from rewardbooth.experiments.bench import native_resolution
    from rewardbooth.models import load_model

    load_model(ModelConfig("tiny-sd3")).pipeline().save_pretrained(tmp_path)
    assert native_resolution(str(tmp_path)) == native_resolution("tiny-sd3") == 64


def test_bench_rejects_an_unknown_variant(capsys):
    assert run_cli(["bench", "step", "--variants", "dpg-clip"]) == 2
    assert "unknown bench variant 'dpg-clip'" in capsys.readouterr().err


def test_bench_toyworld_checks_its_objectives_before_any_run(tmp_path, capsys):
    assert run_cli(["bench", "toyworld", "--objectives", "dpg-nope", "--output", str(tmp_path / "toy")]) == 2
    assert "unknown toy-world objective 'dpg-nope'" in capsys.readouterr().err and not (tmp_path / "toy").exists()


def test_bench_without_a_kind_names_the_three(capsys):
    assert run_cli(["bench"]) == 2
    error = capsys.readouterr().err.strip()
    assert all(f"{kind} (" in error for kind in ("step", "toyworld", "evaluation")) and "\n" not in error


@pytest.mark.parametrize("argv", [["bench", "toyworld", "--variants", "dpg-dino"], ["bench", "step", "--jobs", "2"],
                                  ["bench", "evaluation", "--model", "tiny"], ["generate", "tiny", "--steps", "2"],
                                  ["demo", "--steps", "2"]])
def test_each_command_takes_only_its_own_flags(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(argv)
    assert exit_.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_evaluation_bench_times_the_whole_evaluate_path(tmp_path, capsys):
    from helpers import save_tiny_clip, save_tiny_vit
    from rewardbooth.experiments.bench_evaluation import format_evaluation_report, run_evaluation_bench

    output = tmp_path / "evaluation.json"
    report = run_evaluation_bench(num_images=6, image_size=64, dino_model=str(save_tiny_vit(tmp_path / "vit")),
                                  clip_model=str(save_tiny_clip(tmp_path / "clip")), output=output)
    assert json.loads(output.read_text()) == report
    assert report["images"] == 6 and report["images_per_s"] == pytest.approx(6 / report["seconds"])
    assert report["seconds_for_3000"] == pytest.approx(3000 / report["images_per_s"])
    assert "3,000 images would take" in format_evaluation_report(report)
    assert capsys.readouterr().out == ""  # the library returns its report; the command prints it


class _Page(HTMLParser):
    """What a browser would load from the report: every image source, table rows, and the text."""

    def __init__(self):
        super().__init__()
        self.images, self.rows, self.text = [], 0, []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag == "tr":
            self.rows += 1

    def handle_data(self, data):
        self.text.append(data)


def test_demo_end_to_end(tmp_path, capsys):
    """The README's main job on a reduced setting: both methods trained, generated, scored, reported."""
    output = tmp_path / "demo"
    argv = ["demo", "--output", str(output), "--train-steps", "2", "--num-images", "2", "--num-prompts", "3"]
    assert run_cli(argv) == 0
    results = json.loads((output / "results.json").read_text())["results"]
    assert set(results) == {"baseline", "dpg-look-forward", "base-model"}
    for row in results.values():
        assert -1 <= row["heldout_fidelity"] <= 1 and 0 <= row["heldout_alignment"] <= 1
    captured = capsys.readouterr()
    assert captured.out.rstrip().splitlines()[-1].startswith("report:")  # the table, then where the report is
    assert "fidelity" in captured.out and "[3/3] base model" in captured.err
    assert "\r" not in captured.err and len(captured.err.splitlines()) < 60  # a log, not bar redraws
    page = _Page()
    page.feed((output / "report.html").read_text())
    text = " ".join(page.text)
    assert page.images and all((output / src).is_file() for src in page.images)  # every image it names exists
    # One row per prompt (3), plus the header rows of the means table and the prompt table; the prompt text
    # appears next to each method's two images.
    assert page.rows == 3 + 1 + 3 + 1
    from rewardbooth.toyworld import subjects

    assert all(prompt in text for prompt in subjects.prompt_set(subjects.make_subject(0))[:3])
    assert "Floor: the base model" in text and "held-out toy judge" in text
    assert sum("generated" in src for src in page.images) == 3 * 2 * 2
    assert Image.open(output / "scores.png").size[0] > 0
    assert (output / "dpg-look-forward" / "model" / "critic.safetensors").is_file()
    assert run_cli(argv) == 2
    assert "is not empty; pass --overwrite or choose another folder" in capsys.readouterr().err
    (output / "results.json").unlink()  # as if interrupted: --overwrite still recognises the folder
    assert run_cli([*argv, "--overwrite"]) == 0
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    assert run_cli(["demo", "--output", str(stranger), "--overwrite"]) == 2
    assert (stranger / "notes.txt").read_text() == "mine"


def test_toyworld_benchmark_resumes_and_summarizes(tmp_path):
    from rewardbooth.experiments.toyworld.benchmark import run_toyworld_benchmark
    from rewardbooth.experiments.toyworld.experiment import Setting

    setting = Setting(steps=1, images_per_prompt=1, num_prompts=2, num_class_images=2,
                      overrides=("objective.gamma=0.99",))
    objectives = ("baseline", "dpg-toy-identity-x0", "base-model")
    report = run_toyworld_benchmark(tmp_path, num_subjects=2, seeds=(0,), objectives=objectives[1:],
                                    setting=setting, first_subject=3, jobs=2)
    summary = report["summary"]
    assert set(summary) == set(objectives) and {"fidelity", "heldout_fidelity"} <= summary["base-model"].keys()
    comparison = report["comparisons"]["dpg-toy-identity-x0 vs baseline"]["heldout_fidelity"]
    assert comparison["subjects"] == 2 and len(comparison["per_subject"]) == 2 and comparison["interval"][0] <= \
        comparison["delta"] <= comparison["interval"][1]
    assert summary["base-model"]["train_s"] == 0 and not (tmp_path / "runs/subject003-seed0/base-model/model").exists()
    base_prompts = sorted(p.name for p in (tmp_path / "runs/subject003-seed0/base-model/generated").glob("0*.png"))
    assert base_prompts and not any("sks" in name for name in base_prompts)
    assert all(-1 <= value <= 1 for value in report["fidelity_ceiling"].values())
    assert set(report["fidelity_ceiling_per_subject"]) == {3, 4}
    assert report["subjects"] == [3, 4] and report["setting"]["overrides"] == ["objective.gamma=0.99"]
    assert "gamma: 0.99" in (tmp_path / "runs/subject003-seed0/dpg-toy-identity-x0/model/config.yaml").read_text()
    first = sorted(tmp_path.glob("runs/*/*/scores.json"))
    assert len(first) == 6
    stamps = [path.stat().st_mtime_ns for path in first]
    run_toyworld_benchmark(tmp_path, num_subjects=2, seeds=(0,), objectives=objectives, setting=setting,
                           first_subject=3)
    assert [path.stat().st_mtime_ns for path in first] == stamps  # finished runs are not redone
    markdown = (tmp_path / "results.md").read_text()
    assert "| dpg-toy-identity-x0 vs baseline |" in markdown and "Hacking check" in markdown
    assert (tmp_path / "results.png").is_file()
    # Both judges scored every trained run's validation grids (steps 0 and 1); base-model trains nothing.
    assert set(report["hacking"]) == {"baseline", "dpg-toy-identity-x0"}
    assert set(report["hacking"]["baseline"]) == {"0", "1"}
    assert set(report["pareto_front"]) <= set(objectives) and report["pareto_front"]
    # Summarising only what is stored: seed 1 was never run, so nothing runs and every comparison uses seed 0.
    partial = run_toyworld_benchmark(tmp_path, num_subjects=2, seeds=(0, 1), objectives=objectives, setting=setting,
                                     first_subject=3, run_pending=False)
    assert not list(tmp_path.glob("runs/*-seed1")) and partial["runs"]["baseline"] == 2
    assert partial["comparisons"]["dpg-toy-identity-x0 vs baseline"]["heldout_fidelity"]["per_subject"] == \
        comparison["per_subject"]
    assert "Partial: runs stored per objective (of 4)" in (tmp_path / "results.md").read_text()


def test_a_toyworld_benchmark_cell_on_the_flow_toy(tmp_path, capsys):
    """`--model toy-flow`: the same cell (DreamBooth, DPG, the floor) personalizes the rectified-flow toy, and
    the demo runs on it."""
    from rewardbooth.experiments.toyworld.benchmark import run_toyworld_benchmark
    from rewardbooth.experiments.toyworld.experiment import Setting

    setting = Setting(steps=2, images_per_prompt=1, num_prompts=2, num_class_images=2, model="toy-flow")
    report = run_toyworld_benchmark(tmp_path / "bench", num_subjects=1, seeds=(0,), first_subject=3,
                                    objectives=("dpg-look-forward", "base-model"), setting=setting)
    assert set(report["summary"]) == {"baseline", "dpg-look-forward", "base-model"}
    assert report["setting"]["model"] == "toy-flow"
    assert (tmp_path / "bench/results.md").read_text().startswith("Toy-world benchmark on `toy-flow`:")
    config = (tmp_path / "bench/runs/subject003-seed0/dpg-look-forward/model/config.yaml").read_text()
    assert "pretrained: toy-flow" in config
    demo = tmp_path / "demo"
    assert run_cli(["demo", "--model", "toy-flow", "--output", str(demo), "--train-steps", "1", "--num-images", "1",
                    "--num-prompts", "1"]) == 0
    assert json.loads((demo / "results.json").read_text())["model"] == "toy-flow"
    assert "(`toy-flow`)" in (demo / "report.html").read_text()


def test_bootstrap_interval_brackets_the_mean():
    from rewardbooth.maths.statistics import bootstrap_interval

    low, high = bootstrap_interval([0.1, 0.2, 0.3, 0.4])
    assert 0.1 <= low < 0.25 < high <= 0.4
