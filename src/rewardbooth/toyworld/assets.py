"""Where the toy world's shipped weights live (written by the pretrain and judge scripts)."""

from pathlib import Path

from rewardbooth.core.errors import UserError

ASSETS = Path(__file__).parent / "assets"
BASE_MODEL_DIR = ASSETS / "base"
BASE_FLOW_MODEL_DIR = ASSETS / "base-flow"  # `toy-flow`: the same world as a rectified-flow transformer (SD3)
JUDGE_DIR = ASSETS / "judge"
HELDOUT_JUDGE_DIR = ASSETS / "judge-heldout"  # scores only, never a reward (see toyworld.judge)
# A third identity network (seed 2, subjects 30,000+): what a feature critic may read, never a reward or a judge.
FEATURE_ENCODER_DIR = ASSETS / "feature-encoder"


def require(folder: Path, marker: str, script: str) -> Path:
    if not (folder / marker).is_file():
        raise UserError(f"the toy world's weights are missing from {folder}; rebuild them with "
                        f"'python -m {script} --output {folder}'")
    return folder
