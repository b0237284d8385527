"""The flux-lora preset trains tiny-flux through the CLI for 2 steps, and its training options reach the
transformer there (issue 22 item 5: setup carries them from the config to the family)."""

from __future__ import annotations

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
