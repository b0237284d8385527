"""The flow families' training knobs (model.timestep_density, logit_mean/std, mode_scale, timestep_shift,
training_guidance): each changes what the process samples or what the transformer receives, and a family
without one refuses it in one line (issue 22 item 5)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from rewardbooth.core.config import ModelConfig, check_values, load_config
from rewardbooth.core.errors import UserError
from rewardbooth.models import load_model
from rewardbooth.models.families import TrainingOptions, conditioning_of_prompts


def sigmas(parts, count: int = 4000) -> torch.Tensor:
    """σ of `count` training draws. Shape: -> (count,)"""
    process = parts.process
    return process.noise_level(process.sample_timesteps(count, torch.Generator().manual_seed(0)))


def test_the_density_and_its_logit_parameters_change_the_sigmas_drawn():
    uniform = sigmas(load_model(ModelConfig("tiny-flux")))  # FLUX's own density: uniform, unshifted
    middle = lambda s: ((s > 0.4) & (s < 0.6)).float().mean().item()  # noqa: E731
    assert middle(uniform) == pytest.approx(0.2, abs=0.03)
    logit_normal = sigmas(load_model(ModelConfig("tiny-flux", timestep_density="logit_normal")))
    assert middle(logit_normal) == pytest.approx(0.31, abs=0.03)  # P(|N(0,1)| < logit 0.6) = 0.31
    narrow = sigmas(load_model(ModelConfig("tiny-flux", timestep_density="logit_normal", logit_std=0.2)))
    assert middle(narrow) > 0.9
    late = sigmas(load_model(ModelConfig("tiny-flux", timestep_density="logit_normal", logit_mean=2.0)))
    # The table descends from index 0: u = sigmoid(2) picks σ = 1 - sigmoid(2) (the scripts do the same).
    assert late.median().item() == pytest.approx(1 - torch.sigmoid(torch.tensor(2.0)).item(), abs=0.03)
    mode = load_model(ModelConfig("tiny-flux", timestep_density="mode", mode_scale=0.5)).process
    assert (mode.density, mode.mode_scale) == ("mode", 0.5)


def test_sd3s_density_default_is_logit_normal_and_uniform_replaces_it():
    default = sigmas(load_model(ModelConfig("tiny-sd3")))
    uniform = sigmas(load_model(ModelConfig("tiny-sd3", timestep_density="uniform")))
    # The same static shift 3 over both: uniform u puts more draws at the ends than logit-normal u.
    ends = lambda s: ((s < 0.3) | (s > 0.97)).float().mean().item()  # noqa: E731
    assert ends(uniform) > ends(default) + 0.1


def test_the_shift_replaces_the_training_table_and_leaves_the_sampling_schedule_alone():
    base = load_model(ModelConfig("tiny-flux")).process
    shifted = load_model(ModelConfig("tiny-flux", timestep_shift=3.0)).process
    expected = 3.0 * base.sigmas / (1 + 2.0 * base.sigmas)
    torch.testing.assert_close(shifted.sigmas, expected)
    assert shifted.sigmas[len(expected) // 2] > base.sigmas[len(expected) // 2] + 0.2
    torch.testing.assert_close(shifted.sampling_timesteps(8, (16, 16)), base.sampling_timesteps(8, (16, 16)))
    sd3 = load_model(ModelConfig("tiny-sd3")).process  # its scheduler's shift 3 ...
    unshifted = load_model(ModelConfig("tiny-sd3", timestep_shift=1.0)).process  # ... replaced by none
    assert unshifted.sigmas[len(sd3.sigmas) // 2] < sd3.sigmas[len(sd3.sigmas) // 2] - 0.2


def guidance_received(parts) -> torch.Tensor:
    """The `guidance` tensor FLUX's transformer gets from one training `denoise`."""
    seen = {}
    hook = parts.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(guidance=kwargs["guidance"]), with_kwargs=True)
    conditioning = conditioning_of_prompts(parts, ["a photo of sks dog"], ())["a photo of sks dog"]
    try:
        with torch.no_grad():
            parts.family.denoise(parts.transformer, torch.randn(2, 4, 16, 16), torch.tensor([500.0, 250.0]),
                                 conditioning.select([0, 0]))
    finally:
        hook.remove()
    return seen["guidance"]


def test_fluxs_training_guidance_is_what_the_transformer_receives():
    assert guidance_received(load_model(ModelConfig("tiny-flux"))).tolist() == [3.5, 3.5]
    assert guidance_received(load_model(ModelConfig("tiny-flux", training_guidance=1.0))).tolist() == [1.0, 1.0]


@pytest.mark.parametrize(("model", "key"), [("tiny", "timestep_density=uniform"), ("tiny", "timestep_shift=3"),
                                            ("tiny-sdxl", "training_guidance=1"), ("tiny-sdxl", "logit_std=2"),
                                            ("tiny-sd3", "training_guidance=1"), ("tiny-zimage", "training_guidance=1")])
def test_a_family_without_the_knob_refuses_it_in_one_line(model, key):
    config = load_config(None, [f"model.pretrained={model}", f"model.{key}"])
    with pytest.raises(UserError, match=f"model.{key.split('=')[0]}") as error:
        load_model(config.model)
    assert "\n" not in str(error.value)


def test_flux_schnell_refuses_a_training_guidance():
    parts = load_model(ModelConfig("tiny-flux"))
    parts.transformer.register_to_config(guidance_embeds=False)  # schnell: no guidance embedding
    with pytest.raises(UserError, match="model.training_guidance.*schnell"):
        _ = replace(parts, training=TrainingOptions(guidance=1.0)).family
    assert replace(parts, training=TrainingOptions(shift=2.0)).family.training.shift == 2.0  # schnell takes a shift


@pytest.mark.parametrize("key", ["logit_std=0", "timestep_shift=0", "training_guidance=-1", "timestep_density=cosmap"])
def test_bad_values_are_refused_before_loading(key):
    with pytest.raises(UserError, match="model."):
        check_values(load_config(None, ["model.pretrained=tiny-flux", "data.instance_dir=x", f"model.{key}"]))
