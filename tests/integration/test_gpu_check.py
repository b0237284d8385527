"""benchmarks/gpu-check.sh on the CPU (--dry-run): every part's commands run at tiny scale, so the script a
GPU lease depends on cannot rot between leases."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu-check.sh"


def run_script(*args: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1200)


@pytest.mark.slow
def test_dry_run_runs_every_part(tmp_path):
    result = run_script("--dry-run", "all", out=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    benches = sorted(path.name for path in tmp_path.glob("*.json"))
    assert benches == ["evaluation.json", "flux-1024-nf4-lora.json", "flux-512-bf16-lora.json",
                       "flux-512-nf4-lora.json", "sd15-512-fp16-lora.json", "sd15-512-fp16.json",
                       "sd35m-1024-bf16-lora.json", "sdxl-1024-bf16-lora.json"]
    for name in benches:
        report = json.loads((tmp_path / name).read_text())
        if name != "evaluation.json":  # a step bench: DPG timed against the baseline
            assert report["ratios"]["dpg-look-forward"]["time"] > 0
    assert "exit 0" in (tmp_path / "summary.txt").read_text()
    # The quantized part: nf4 (CUDA only) runs as int8 on the CPU, and its targets are checked (not enforced).
    assert "model.quantize=int8" in json.loads((tmp_path / "flux-512-nf4-lora.json").read_text())["overrides"]
    verdicts = (tmp_path / "flux-512-nf4-lora-targets.log").read_text()
    assert "dpg-look-forward: peak" in verdicts and "(target <= 24 GiB)" in verdicts


def test_unknown_part_is_refused(tmp_path):
    result = run_script("--dry-run", "sd16", out=tmp_path)
    assert result.returncode == 2
    assert "unknown part 'sd16'" in result.stderr
