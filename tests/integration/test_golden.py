"""The golden runs (tests/golden.py) still train exactly as recorded: a refactor changes no behaviour."""

import json
import os

import pytest

from golden import RUNS, golden_file, platform, run_golden

RECORD = os.environ.get("REWARDBOOTH_RECORD_GOLDEN") == "1"  # only when a change of behaviour is meant


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNS))
def test_golden_run_is_unchanged(name, subject_dir, tmp_path, monkeypatch):
    # Each run generates its own class images: a cache shared with earlier tests would hand it images drawn in
    # other batches (another batch size rounds differently), and the run would depend on what ran before it.
    monkeypatch.setenv("REWARDBOOTH_CACHE", str(tmp_path / "cache"))
    now = run_golden(name, subject_dir, tmp_path / name)
    file = golden_file(name)
    if RECORD:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(now, indent=1) + "\n")
        pytest.skip(f"recorded {file}")
    if not file.exists():
        pytest.skip(f"no golden runs recorded on {platform()}: record them here (REWARDBOOTH_RECORD_GOLDEN=1) "
                    f"before a refactor, compare after")
    recorded = json.loads(file.read_text())
    assert now["metrics"] == recorded["metrics"]
    assert now["tensors"] == recorded["tensors"]  # bitwise: the hash of every saved tensor
