"""Per-family presets (issue 22 item 5): each loads, validates and is taken by its family; each value it
sets carries a reason and a source (`_why`, no stale ones) and `--help-config` prints them next to the values."""

from __future__ import annotations

from dataclasses import replace

import pytest

from rewardbooth.cli import main
from rewardbooth.core.config import check_values, load_config, preset_names, read_source
from rewardbooth.core.errors import UserError
from rewardbooth.core.presets import preset_notes, set_keys
from rewardbooth.models import load_model

# Each family preset and the tiny built-in of its family (what the test can load without the hub).
FAMILY_PRESETS = {"flux-lora": "tiny-flux", "sd3-lora": "tiny-sd3", "sdxl-lora": "tiny-sdxl", "sd15-lora": "tiny",
                  "sd15-lora-scenes": "tiny"}


def test_the_family_presets_are_shipped():
    assert set(FAMILY_PRESETS) <= set(preset_names())


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_validates_and_has_no_stale_reason(name):
    config = load_config(name, ["data.instance_dir=photos"])
    if config.model.pretrained is None:  # default and paper leave the model to the user
        config = load_config(name, ["data.instance_dir=photos", "model.pretrained=tiny"])
    check_values(config)
    reasons = preset_notes(name).reasons  # refuses a reason for a key the preset does not set
    assert set(reasons) <= set_keys(read_source(name))


@pytest.mark.parametrize("name", sorted(FAMILY_PRESETS))
def test_a_family_preset_gives_every_value_a_reason_a_source_and_an_estimated_memory(name):
    notes = preset_notes(name)
    assert set(notes.reasons) == set_keys(read_source(name))
    assert all(reason.why and reason.source for reason in notes.reasons.values())
    assert notes.vram["estimate_gb"] > 0 and "estimate" in notes.vram["source"]


@pytest.mark.parametrize(("name", "tiny"), sorted(FAMILY_PRESETS.items()))
def test_a_family_presets_training_options_are_taken_by_its_family(name, tiny):
    config = load_config(name, ["data.instance_dir=photos"])
    parts = load_model(replace(config.model, pretrained=tiny))  # a family refuses an option it lacks
    if name == "flux-lora":
        assert parts.family.training.guidance == 1.0 and parts.process.density == "logit_normal"
        assert parts.process.sigmas[500].item() == pytest.approx(3.1582 * 0.5 / (1 + 2.1582 * 0.5), abs=2e-3)


def help_lines(capsys, *argv: str) -> dict[str, str]:
    """--help-config's line of each key."""
    assert main(["train", *argv, "--help-config"]) in (0, None)
    lines = capsys.readouterr().out.splitlines()
    return {line.split(" = ")[0].strip(): line for line in lines if " = " in line}


def test_help_config_prints_each_preset_values_reason_and_source(capsys):
    lines = help_lines(capsys, "flux-lora")
    reasons = preset_notes("flux-lora").reasons
    for key, reason in reasons.items():
        assert reason.why in lines[key] and f"[source: {reason.source}]" in lines[key], key
    assert "README_flux.md LoRA example (--guidance_scale=1)" in lines["model.training_guidance"]
    # A key the preset does not set keeps the field's help.
    assert lines["model.logit_mean"].endswith("# timestep_density=logit_normal: mean of the logit of σ (default 0)")
    # An overridden value is the user's, not the preset's: its reason goes.
    overridden = help_lines(capsys, "flux-lora", "train.lr=3e-5")
    assert "3e-05" in overridden["train.lr"] and "source:" not in overridden["train.lr"]


def test_help_config_states_the_presets_memory_as_an_estimate(capsys):
    main(["train", "sd3-lora", "--help-config"])
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("# memory: ~14 GB") and "ESTIMATE" in first


def test_a_stale_or_sourceless_reason_is_refused_in_one_line(tmp_path):
    stale = tmp_path / "stale.yaml"
    stale.write_text("_why:\n  train.lr: {why: fast, source: estimate}\ntrain:\n  max_steps: 10\n")
    with pytest.raises(UserError, match="_why names 'train.lr', which the file does not set"):
        preset_notes(stale)
    sourceless = tmp_path / "sourceless.yaml"
    sourceless.write_text("_why:\n  train.lr: {why: fast}\ntrain:\n  lr: 1.0e-4\n")
    with pytest.raises(UserError, match="_why.train.lr must be"):
        preset_notes(sourceless)
    assert load_config(sourceless).train.lr == 1e-4  # loading ignores the notes
