"""The flux-lora preset trains tiny-flux through the CLI for 2 steps, and its training options reach the
transformer there (issue 22 item 5: setup carries them from the config to the family)."""

from __future__ import annotations

import json

import yaml
from diffusers import FluxTransformer2DModel
from tests.helpers import TINY_RUN, run_cli


def test_the_flux_preset_trains_tiny_flux_with_its_guidance_and_shift(subject_dir, tmp_path, monkeypatch):
    received, forward = [], FluxTransformer2DModel.forward

    def recording(self, *args, **kwargs):
        received.append(kwargs["guidance"])
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(FluxTransformer2DModel, "forward", recording)
    out = tmp_path / "run"
    tiny = [arg for arg in TINY_RUN if not arg.startswith("model.pretrained=")]
    assert run_cli(["train", "flux-lora", *tiny, "model.pretrained=tiny-flux", f"data.instance_dir={subject_dir}",
                    f"train.output_dir={out}", "train.max_steps=2", "validation.every=0",
                    "train.mixed_precision=no", "train.gradient_accumulation_steps=1"]) == 0
    assert received and all(g is not None and g.tolist() == [1.0] * len(g) for g in received)
    recorded = yaml.safe_load((out / "config.yaml").read_text())["model"]
    assert (recorded["timestep_density"], recorded["timestep_shift"], recorded["training_guidance"]) == \
        ("logit_normal", 3.1582, 1.0)


def test_the_recipe_preset_trains_with_both_rewards_and_the_anchor(subject_dir, tmp_path):
    """sd15-lora-scenes on the tiny model (tiny DINO and CLIP in place of the hub's): photo rows scored by DINO,
    prompt-only rows by CLIP-T, the anchor logged; its YAML mappings reach the config."""
    from tests.helpers import save_tiny_clip, save_tiny_vit

    out = tmp_path / "run"
    tiny = [arg for arg in TINY_RUN if not arg.startswith("model.pretrained=")]
    options = (f"objective.reward_options={{dino: {{model: '{save_tiny_vit(tmp_path / 'vit')}'}}, "
               f"clip_text: {{model: '{save_tiny_clip(tmp_path / 'clip')}'}}}}")
    assert run_cli(["train", "sd15-lora-scenes", *tiny, "model.pretrained=tiny", f"data.instance_dir={subject_dir}",
                    f"train.output_dir={out}", "train.max_steps=4", "validation.every=0", "train.batch_size=2",
                    "train.mixed_precision=no", "data.prior_preservation=false", "objective.reward_resolution=32",
                    options]) == 0
    recorded = yaml.safe_load((out / "config.yaml").read_text())["objective"]
    assert (recorded["name"], recorded["reward"], recorded["scene_reward"]) == ("direct", {"dino": 1}, {"clip_text": 1})
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(row.get("scene/share", 0) > 0 for row in rows)
    assert any("scene/reward" in row for row in rows)
    assert all("anchor" in row for row in rows if row.get("scene/share", 0) > 0)
