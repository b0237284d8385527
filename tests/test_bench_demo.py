"""The bench and demo commands end to end on the tiny model."""

import json

import pytest
from PIL import Image

from helpers import run_cli


@pytest.mark.slow
def test_bench_reports_ratios(tmp_path, capsys):
    output = tmp_path / "bench.json"
    assert run_cli(["bench", "--steps", "2", "--warmup", "1", "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert set(report["variants"]) == {"baseline", "dpg-look-forward"}
    for values in report["variants"].values():
        assert values["median_step_s"] > 0 and values["peak_memory_mib"] > 100
    time_ratio = report["variants"]["dpg-look-forward"]["median_step_s"] / report["variants"]["baseline"]["median_step_s"]
    assert report["ratios"]["time"] == pytest.approx(time_ratio)
    assert "DPG-LF / baseline: time" in capsys.readouterr().out


def test_demo_end_to_end(tmp_path, capsys):
    output = tmp_path / "demo"
    assert run_cli(["demo", "--output", str(output), "--steps", "2"]) == 0
    assert len(list((output / "subject").glob("*.png"))) == 4
    assert Image.open(output / "generated" / "grid.png").size == (128, 128)  # 2 prompts x 2 images of 64 px
    assert Image.open(output / "model" / "metrics.png").size[0] > 0
    assert (output / "model" / "model_index.json").is_file()
    assert run_cli(["demo", "--output", str(output), "--steps", "2"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run_cli(["demo", "--output", str(output), "--steps", "2", "--overwrite"]) == 0
