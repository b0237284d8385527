"""Golden runs: a few steps of each method and family on the tiny models, recorded before a refactor and
compared after it (tests/integration/test_golden.py). A refactor that is meant to change nothing must leave every logged
metric and every final weight bitwise the same.

    REWARDBOOTH_RECORD_GOLDEN=1 python -m pytest tests/integration/test_golden.py   # record tests/golden/*.json, only
                                                                        # when a change of behaviour is meant

Bitwise equality holds on one platform (same torch, same CPU kernels; every golden run uses one thread, as
reductions split over threads round differently and three Adam steps on a random model amplify the last
bit into the third digit). Each platform keeps its own recording, in tests/golden/<platform>/; where none is
recorded, the test skips and says how to record here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

HERE = Path(__file__).parent
GOLDEN_DIR = HERE / "golden"
STEPS = ["train.max_steps=3", "validation.every=0", "train.log_every=1"]
RUNS = {  # name: (preset, overrides)
    "dreambooth-baseline": ("default", ["objective.name=baseline"]),
    "dreambooth-dpg-look-forward": ("default", ["objective.name=dpg"]),
    # critic.lr 1e-4: at SGD 0.01 the released critic diverges on the random tiny model (residuals ~50, not ~1).
    "paper-dpg-released-critic": ("paper", ["data.resolution=64", "data.num_class_images=2", "critic.lr=1e-4"]),
    "lora-dpg": ("default", ["method.name=lora", "objective.name=dpg"]),
    "custom-diffusion-dpg": ("default", ["method.name=custom_diffusion", "objective.name=dpg",
                                         "data.instance_prompt=a photo of <new1> dog", "data.identifier=<new1>"]),
    "tiny-sdxl-dpg": ("default", ["model.pretrained=tiny-sdxl", "objective.name=dpg"]),
}
METRIC_KEYS_IGNORED = {"time", "step_s", "elapsed_s"}  # wall-clock entries are not behaviour


def platform() -> str:
    """torch's version and the CPU kernels it picks: the vector ISA torch reports, plus AMX where the CPU has
    it (oneDNN and MKL then take other fp32 code paths: Sapphire Rapids and Ice Lake differ in the last bit,
    both "AVX512")."""
    return f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}{'-AMX' if _has_amx() else ''}"


def _has_amx() -> bool:
    try:
        return " amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no way to tell, so no suffix
        return False


def golden_file(name: str) -> Path:
    """tests/golden/<platform>/<name>.json, e.g. tests/golden/torch-2.13.0+cpu-AVX512/lora-dpg.json."""
    return GOLDEN_DIR / platform().replace(", ", "-").replace(" ", "-") / f"{name}.json"


def summarize_run(output: Path) -> dict:
    """Every logged metric (wall-clock entries dropped) and the hash of every saved tensor."""
    rows = []
    for line in (output / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows.append({k: v for k, v in row.items() if k not in METRIC_KEYS_IGNORED and not k.endswith("_s")})
    tensors = {}
    for file in sorted(output.rglob("*.safetensors")):
        # The kohya-layout LoRA is the diffusers file's tensors renamed and stacked (tests/integration/
        # test_lora_formats.py): hashing it too would only re-record every platform's runs.
        if "checkpoints" in file.parts or file.name == "pytorch_lora_weights_kohya.safetensors":
            continue
        for name, tensor in sorted(load_file(str(file)).items()):
            key = f"{file.relative_to(output)}:{name}"
            tensors[key] = hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()
    return {"platform": platform(), "metrics": rows, "tensors": tensors}


def run_golden(name: str, subject_dir: Path, output: Path) -> dict:
    from helpers import run_cli, tiny_args

    preset, overrides = RUNS[name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_cli(tiny_args(subject_dir, output, *STEPS, *overrides, preset=preset)) == 0
    finally:
        torch.set_num_threads(threads)
    return summarize_run(output)


