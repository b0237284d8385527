"""The train and generate commands end to end on the tiny model (CPU, no network)."""

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors.torch import load_file

from helpers import assert_same_weights, run_cli, tiny_args, weights
from rewardbooth.core.config import ModelConfig
from rewardbooth.models import load_model


def read_metrics(output_dir):
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective", ["baseline", "dpg"])
def test_train_end_to_end(objective, subject_dir, tmp_path):
    out = tmp_path / "run"
    assert run_cli(tiny_args(subject_dir, out, f"objective.name={objective}", "train.max_steps=3",
                             "validation.every=2")) == 0
    # A stock pipeline folder that diffusers reloads offline, with the fine-tuned UNet in it.
    pipeline = StableDiffusionPipeline.from_pretrained(out)
    image = pipeline("a photo of sks dog", num_inference_steps=2, height=64, width=64).images[0]
    assert image.size == (64, 64)
    base = load_model(ModelConfig("tiny")).unet.state_dict()
    changed = [k for k, v in pipeline.unet.state_dict().items() if not torch.equal(v, base[k])]
    assert len(changed) > len(base) // 2
    assert (out / "critic.safetensors").exists() == (objective == "dpg")
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_000000.png", "step_000002.png",
                                                                  "step_000003.png"]
    rows = read_metrics(out)
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert all(row["skipped"] == 0 and row["loss"] == row["loss"] for row in rows)
    if objective == "dpg":
        assert {"critic_loss", "reward", "q", "policy_term", "discount_mean"} <= rows[0].keys()
        assert all(v.dtype == torch.float32 for v in load_file(out / "critic.safetensors").values())
    assert (out / "config.yaml").read_text().count(f"name: {objective}") == 1


def test_paper_preset_trains_text_encoder_with_prior(subject_dir, tmp_path):
    out = tmp_path / "paper"
    assert run_cli(tiny_args(subject_dir, out, "train.max_steps=2", "validation.every=0", preset="paper")) == 0
    base = load_model(ModelConfig("tiny")).text_encoder.state_dict()
    trained = weights(out, "text_encoder")
    assert any(not torch.equal(trained[k], base[k]) for k in trained if k in base)
    assert {"prior_loss", "critic_loss", "discount_mean"} <= read_metrics(out)[0].keys()


def test_class_images_are_generated_once_and_reused(subject_dir, tmp_path):
    args = ["train.max_steps=1", "validation.every=0", "data.prior_preservation=true",
            f"data.class_dir={tmp_path / 'class'}"]
    assert run_cli(tiny_args(subject_dir, tmp_path / "a", *args)) == 0
    images = sorted((tmp_path / "class").glob("class_*.png"))
    assert len(images) == 2
    stamps = [p.stat().st_mtime_ns for p in images]
    assert run_cli(tiny_args(subject_dir, tmp_path / "b", *args, "data.num_class_images=3")) == 0
    topped_up = sorted((tmp_path / "class").glob("class_*.png"))
    assert len(topped_up) == 3 and [p.stat().st_mtime_ns for p in topped_up[:2]] == stamps


@pytest.mark.parametrize("extra", [
    ["train.gradient_accumulation_steps=2", "train.batch_size=2"],
    ["train.mixed_precision=bf16"],
    ["train.gradient_checkpointing=true", "method.train_text_encoder=true"],
    ["train.cache_latents=false", "critic.input=state_action", "critic.name=pooled",
     "critic.condition_on_text=true"],
], ids=["accumulation", "bf16", "checkpointing", "uncached-stateaction"])
def test_training_options(extra, subject_dir, tmp_path):
    out = tmp_path / "run"
    assert run_cli(tiny_args(subject_dir, out, "train.max_steps=2", "validation.every=0", *extra)) == 0
    assert all(row["loss"] == row["loss"] for row in read_metrics(out))
    assert all(v.dtype == torch.float32 for v in load_file(out / "critic.safetensors").values())


def test_v_prediction_model(subject_dir, tiny_folder, tmp_path):
    import shutil

    model = tmp_path / "v-model"
    shutil.copytree(tiny_folder, model)
    config_file = model / "scheduler" / "scheduler_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "prediction_type": "v_prediction"}))
    out = tmp_path / "run"
    assert run_cli(tiny_args(subject_dir, out, f"model.pretrained={model}", "train.max_steps=2",
                             "validation.every=0")) == 0
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == "v_prediction"


def test_nan_loss_skips_the_step_and_continues(subject_dir, tmp_path, caplog):
    out = tmp_path / "run"
    assert run_cli(tiny_args(subject_dir, out, "objective.reward=nan_reward:make", "train.max_steps=3",
                             "validation.every=0")) == 0
    assert "step 1: non-finite loss, skipped" in caplog.text
    assert [row["skipped"] for row in read_metrics(out)] == [0.0, 1.0, 0.0]
    assert all(torch.isfinite(v).all() for v in weights(out).values())


def test_tensorboard_logs(subject_dir, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    assert run_cli(tiny_args(subject_dir, out, "train.max_steps=1", "validation.every=0",
                             "train.report_to=tensorboard")) == 0
    assert list((out / "logs").rglob("events.out.tfevents.*"))


def test_generate_writes_images_and_grid(subject_dir, tmp_path, capsys):
    out = tmp_path / "gen"
    argv = ["generate", "tiny", "--prompt", "a sks dog", "--prompt", "a sks dog on the beach",
            "--num-images", "2", "--seed", "5", "--num-inference-steps", "2", "--resolution", "64", "--output", str(out)]
    assert run_cli(argv) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["000_a-sks-dog_00005.png", "000_a-sks-dog_00006.png", "001_a-sks-dog-on-the-beach_00005.png",
                     "001_a-sks-dog-on-the-beach_00006.png", "generation.json", "grid.png"]
    record = json.loads((out / "generation.json").read_text())
    assert record["seeds"] == [5, 6] and record["num_inference_steps"] == 2 and record["sampler"]
    assert {(i["file"], i["prompt"], i["seed"]) for i in record["images"]} >= {("000_a-sks-dog_00006.png",
                                                                                "a sks dog", 6)}
    first = (out / "000_a-sks-dog_00005.png").read_bytes()
    # grid.png: a row per prompt, its text at the left, a column per seed; 64 px images enlarged 2x.
    assert Image.open(out / "grid.png").size == (260 + 2 * 128, 18 + 2 * 128)
    assert run_cli(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the first run's progress lines
    # The library says overwrite=True and output_dir; the command says its flags.
    assert error.startswith("error: ") and "already exists; pass --overwrite or choose another --output" in error
    assert run_cli([*argv, "--overwrite"]) == 0
    assert (out / "000_a-sks-dog_00005.png").read_bytes() == first  # same seeds, same images


def test_generate_keeps_prompts_apart_whose_names_agree(tmp_path, capsys):
    long = "a photo of sks dog sitting on a wooden bench in a park on a sunny afternoon"  # > 60 characters
    prompts = ["a sks dog", "A sks dog!", f"{long}, watercolour", f"{long}, oil painting"]
    out = tmp_path / "gen"
    argv = ["generate", "tiny", "--num-images", "2", "--num-inference-steps", "1", "--resolution", "64", "--output", str(out)]
    assert run_cli([*argv, *(arg for prompt in prompts for arg in ("--prompt", prompt))]) == 0
    assert "wrote 8 images" in capsys.readouterr().out
    record = json.loads((out / "generation.json").read_text())
    files = [image["file"] for image in record["images"]]
    assert len(set(files)) == 8 and sorted(p.name for p in out.glob("0*.png")) == sorted(files)
    # The mapping is exact: each prompt owns its own two files, in order, seed by seed.
    assert [(image["prompt"], image["seed"]) for image in record["images"]] == [(p, k) for p in prompts for k in (0, 1)]


def test_generate_checks_the_resolution_before_it_writes(tmp_path, capsys):
    out = tmp_path / "gen"
    assert run_cli(["generate", "tiny", "--prompt", "a sks dog", "--resolution", "60", "--output", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "--resolution=60 is not a multiple of 8" in error and "use 56 or 64" in error and "\n" not in error
    assert run_cli(["generate", "tiny", "--prompt", "a sks dog", "--resolution", "0", "--output", str(out)]) == 2
    assert "--resolution must be at least 8" in capsys.readouterr().err
    assert run_cli(["generate", "tiny", "--prompt", "a sks dog", "--num-images", "0", "--output", str(out)]) == 2
    assert "--num-images must be at least 1" in capsys.readouterr().err  # the flag, not generate's num_images
    assert not out.exists()


def test_generate_renders_a_dreambench_prompt_set(tmp_path):
    out = tmp_path / "bench"
    assert run_cli(["generate", "tiny", "--dreambench", "dog3", "--identifier", "zwx", "--num-images", "1",
                    "--num-inference-steps", "1", "--resolution", "64", "--output", str(out)]) == 0
    record = json.loads((out / "generation.json").read_text())
    prompts = [image["prompt"] for image in record["images"]]
    assert len(prompts) == 25 and prompts[10] == "a zwx dog wearing a red hat"


def test_resume_latest_on_a_finished_run_changes_nothing(subject_dir, tmp_path):
    out = tmp_path / "run"
    args = tiny_args(subject_dir, out, "train.max_steps=2", "validation.every=0", "train.checkpoint_every=2")
    assert run_cli(args) == 0
    before = weights(out)
    assert run_cli([*args, "train.resume=latest"]) == 0
    assert_same_weights(before, weights(out))


def test_metrics_png_plots_what_the_readme_promises():
    from pathlib import Path

    from rewardbooth.training.monitoring import PLOTTED_METRICS

    row = next(line for line in (Path(__file__).parents[2] / "README.md").read_text().splitlines()
               if line.startswith("| `metrics.jsonl`, `metrics.png`"))
    promised = {"lr": "lr", "grad norm": "grad_norm", "γ-weight `discount_mean`": "discount_mean", "Q": "q",
                "critic loss": "critic_loss", "reward": "reward"}
    for words, key in promised.items():
        assert words in row and key in PLOTTED_METRICS
