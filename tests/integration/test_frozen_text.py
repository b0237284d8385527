"""Frozen text encoders: every prompt of a run is encoded at setup, then nothing runs them (validation samples
from the embeddings computed then, the final save writes them from host memory), and the result is the one a
stock pipeline given the prompts reproduces, to the bit."""

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusionPipeline
from PIL import Image

from helpers import run_cli, tiny_args
from rewardbooth.core.config import ModelConfig
from rewardbooth.models import load_model
from rewardbooth.training import setup

MODELS = {"tiny": (StableDiffusionPipeline, 7.5), "tiny-flux": (FluxPipeline, 3.5)}  # the family's guidance
PROMPT = "a photo of sks dog"


@pytest.fixture
def released(monkeypatch):
    """Make every frozen text encoder fail the run if anything runs it after setup released it; the modes
    setup released them with."""
    modes = []

    def refuse(module, args):
        raise AssertionError(f"{type(module).__name__} ran after setup released it")

    def release(parts, mode):
        modes.append(mode)
        real_release(parts, mode)
        for encoder in parts.text_encoders:
            assert all(p.is_meta == (mode == "free") for p in encoder.parameters())
            encoder.register_forward_pre_hook(refuse)

    real_release = setup.release_text_encoders
    monkeypatch.setattr(setup, "release_text_encoders", release)
    return modes


@pytest.mark.parametrize("model", sorted(MODELS))
def test_frozen_encoders_never_run_after_setup_and_the_saved_pipeline_draws_the_validation_images(
        model, released, subject_dir, tmp_path):
    pipeline_class, guidance = MODELS[model]
    out = tmp_path / "run"
    assert run_cli(tiny_args(subject_dir, out, f"model.pretrained={model}", "method.name=dreambooth",
                             "objective.name=baseline", "train.max_steps=1", "validation.every=1",
                             f"validation.prompts=[{PROMPT}]", "data.prior_preservation=false")) == 0
    assert released == ["cpu"]  # the default
    validation = np.asarray(Image.open(out / "samples" / "step_000001.png"))  # the last step's, one image
    stock = pipeline_class.from_pretrained(out)  # the final save wrote the released encoders too
    stock.set_progress_bar_config(disable=True)
    drawn = stock(PROMPT, height=64, width=64, num_inference_steps=2, guidance_scale=guidance,
                  generator=torch.Generator().manual_seed(1234)).images[0]
    assert np.array_equal(np.asarray(drawn), validation)


def test_free_drops_the_encoders_of_a_lora_run_and_its_result_still_draws_the_validation_image(
        released, subject_dir, tmp_path):
    out = tmp_path / "run"
    assert run_cli(tiny_args(subject_dir, out, "model.pretrained=tiny-flux", "method.name=lora",
                             "objective.name=baseline", "train.max_steps=1", "train.lr=1e-3", "validation.every=1",
                             f"validation.prompts=[{PROMPT}]", "data.prior_preservation=false",
                             "train.offload_text_encoders=free")) == 0
    assert released == ["free"]
    stock = load_model(ModelConfig("tiny-flux")).pipeline()
    stock.load_lora_weights(str(out))
    stock.set_progress_bar_config(disable=True)
    drawn = stock(PROMPT, height=64, width=64, num_inference_steps=2, guidance_scale=3.5,
                  generator=torch.Generator().manual_seed(1234)).images[0]
    validation = np.asarray(Image.open(out / "samples" / "step_000001.png"))
    assert np.abs(np.asarray(drawn).astype(int) - validation.astype(int)).max() <= 1  # LoRA reloaded: ≤ 1 level


def test_free_is_refused_where_the_result_saves_the_encoders(subject_dir, tmp_path, capsys):
    args = tiny_args(subject_dir, tmp_path / "run", "method.name=dreambooth", "train.offload_text_encoders=free",
                     "train.max_steps=1", "validation.every=0")  # (a mutant that lets it run ends soon)
    assert run_cli(args) == 2
    error = capsys.readouterr().err.strip()
    assert "use train.offload_text_encoders=cpu" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_trained_text_encoder_stays_and_runs(released, subject_dir, tmp_path):
    out = tmp_path / "run"
    assert run_cli(tiny_args(subject_dir, out, "method.name=dreambooth", "method.train_text_encoder=true",
                             "objective.name=baseline", "train.max_steps=1", "validation.every=1",
                             "data.prior_preservation=false")) == 0
    assert released == []  # it trains: encoded every step, validation from prompts
