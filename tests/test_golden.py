"""The golden runs (tests/golden.py) still train exactly as recorded: a refactor changes no behaviour."""

import json
import os

import pytest

from golden import GOLDEN_DIR, RUNS, platform, run_golden

RECORD = os.environ.get("REWARDBOOTH_RECORD_GOLDEN") == "1"  # only when a change of behaviour is meant


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNS))
def test_golden_run_is_unchanged(name, subject_dir, tmp_path):
    now = run_golden(name, subject_dir, tmp_path / name)
    if RECORD:
        GOLDEN_DIR.mkdir(exist_ok=True)
        (GOLDEN_DIR / f"{name}.json").write_text(json.dumps(now, indent=1) + "\n")
        pytest.skip(f"recorded {name}")
    recorded = json.loads((GOLDEN_DIR / f"{name}.json").read_text())
    if recorded["platform"] != platform():
        pytest.skip(f"golden runs recorded on {recorded['platform']}, this is {platform()}: record them here "
                    f"(REWARDBOOTH_RECORD_GOLDEN=1) before a refactor, compare after")
    assert now["metrics"] == recorded["metrics"]
    assert now["tensors"] == recorded["tensors"]  # bitwise: the hash of every saved tensor
