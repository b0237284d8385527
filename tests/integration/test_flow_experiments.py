"""What a person does around a run, on a flow family (tiny-flux): keep the best validation step, `evaluate` the
images a run generates, and a DreamBench-style `sweep` cell, end to end."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from helpers import run_cli, save_tiny_clip, save_tiny_vit, tiny_args
from rewardbooth.core.config import ModelConfig
from rewardbooth.inference.generate import generate
from rewardbooth.models import load_model

FLUX = ["model.pretrained=tiny-flux", "method.name=lora", "objective.name=baseline", "train.lr=1e-3",
        "data.prior_preservation=false"]
SCRIPTED = "user_scorers:Scripted"
PROMPT = "a photo of sks dog"


def adapters(folder):
    return load_file(str(folder / "pytorch_lora_weights.safetensors"))


def test_keep_best_keeps_the_best_flux_step_and_generate_loads_it(subject_dir, tmp_path):
    common = [*FLUX, "validation.every=2", "validation.num_inference_steps=1"]
    out = tmp_path / "run"
    assert run_cli(tiny_args(subject_dir, out, *common, "train.max_steps=4", f"validation.reward={SCRIPTED}",
                             f"validation.reward_options={{'{SCRIPTED}': {{values: [0.1, 0.5, 0.2]}}}}")) == 0
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["best_step"] == 2 and best["best_score"] == 0.5
    # The kept adapters are the step-2 ones: those of a run of the same seed that stops at step 2.
    two_steps = tmp_path / "two"
    assert run_cli(tiny_args(subject_dir, two_steps, *common, "train.max_steps=2")) == 0
    kept, final, reference = adapters(out / "best"), adapters(out), adapters(two_steps)
    assert kept.keys() == reference.keys() and all(torch.equal(kept[k], reference[k]) for k in kept)
    assert any(not torch.equal(kept[k], final[k]) for k in kept)
    # best/ loads: generate reads its run's config (base model, method) and draws what stock FLUX + its LoRA draws.
    drawn = generate(str(out / "best"), [PROMPT], tmp_path / "images", num_images=1, num_inference_steps=2,
                     resolution=64)
    stock = load_model(ModelConfig("tiny-flux")).pipeline()
    stock.load_lora_weights(str(out / "best"))
    stock.set_progress_bar_config(disable=True)
    expected = stock(PROMPT, height=64, width=64, num_inference_steps=2,
                     generator=torch.Generator().manual_seed(0)).images[0]
    assert np.abs(np.asarray(Image.open(drawn[0])).astype(int) - np.asarray(expected).astype(int)).max() <= 1


def test_evaluate_scores_the_images_of_a_flux_run(subject_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(tiny_args(subject_dir, out, *FLUX, "train.max_steps=1", "validation.every=0")) == 0
    generated = tmp_path / "generated"
    assert run_cli(["generate", str(out), "--prompt", PROMPT, "--prompt", "a sks dog on the beach", "--num-images",
                    "2", "--num-inference-steps", "1", "--resolution", "64", "--output", str(generated)]) == 0
    vit, clip = save_tiny_vit(tmp_path / "vit"), save_tiny_clip(tmp_path / "clip")
    report_dir = tmp_path / "report"
    assert run_cli(["evaluate", str(generated), "--subject", str(subject_dir), "--output", str(report_dir),
                    "--dino-model", str(vit), "--clip-model", str(clip)]) == 0
    assert "| generated | 4 |" in capsys.readouterr().out
    run = json.loads((report_dir / "evaluation.json").read_text())["runs"]["generated"]
    assert run["generation"]["guidance_scale"] == 3.5  # FLUX-dev's embedded guidance, not SD's 7.5
    assert len(run["images"]) == 4 and all(np.isfinite(row[m]) for row in run["images"]
                                           for m in ("dino", "clip_i", "clip_t"))


def test_a_sweep_cell_on_flux_trains_generates_and_scores(subject_dir, tmp_path):
    dataset = tmp_path / "dataset"
    shutil.copytree(subject_dir, dataset / "dog1")
    (dataset / "dog1" / "class.txt").write_text("dog\n")
    (dataset / "dog1" / "prompts.txt").write_text("a sks dog on the beach\na sks dog in the snow\n")
    vit = save_tiny_vit(tmp_path / "vit")
    out = tmp_path / "sweep"
    sweep_file = tmp_path / "flux.yaml"
    sweep_file.write_text(yaml.safe_dump(dict(
        dataset=str(dataset), output=str(out), config="default",
        overrides={"model.pretrained": "tiny-flux", "method.name": "lora", "data.resolution": 32,
                   "data.prior_preservation": False, "train.max_steps": 2, "train.lr": 1e-3,
                   "train.report_to": "none", "train.checkpoint_every": 0, "validation.every": 0},
        objectives={"dpg": {"objective.name": "dpg"}}, num_images=1, num_inference_steps=1, metrics=["dino"],
        dino_model=str(vit)), sort_keys=False))
    assert run_cli(["sweep", str(sweep_file)]) == 0
    report = json.loads((out / "evaluation" / "dog1" / "evaluation.json").read_text())
    images = report["runs"]["dpg"]["images"]
    assert [row["prompt"] for row in images] == ["a sks dog on the beach", "a sks dog in the snow"]
    assert report["runs"]["dpg"]["generation"]["guidance_scale"] == 3.5
    result = json.loads((out / "results.json").read_text())
    assert result["subjects"] == ["dog1"] and result["table"]["dpg"]["dino"] == pytest.approx(
        report["runs"]["dpg"]["summary"]["dino"])
