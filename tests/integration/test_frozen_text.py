"""Frozen text encoders: every prompt of a run is encoded at setup, then nothing runs them (validation samples
from the embeddings computed then, the final save writes them from host memory), and the result is the one a
stock pipeline given the prompts reproduces, to the bit."""

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusionPipeline
from PIL import Image

from helpers import run_cli, tiny_args
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


def test_a_trained_text_encoder_stays_and_runs(released, subject_dir, tmp_path):
    out = tmp_path / "run"
    assert run_cli(tiny_args(subject_dir, out, "method.name=dreambooth", "method.train_text_encoder=true",
                             "objective.name=baseline", "train.max_steps=1", "validation.every=1",
                             "data.prior_preservation=false")) == 0
    assert released == []  # it trains: encoded every step, validation from prompts
