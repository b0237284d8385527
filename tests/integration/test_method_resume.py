"""Every method's interrupted-and-resumed run equals the uninterrupted one, file for file (the resumable-run
contract of the methods, end to end: several short training runs per method)."""

import pytest
from safetensors.torch import load_file

from helpers import StepRecorder, assert_same_weights, run_cli, tiny_args
from rewardbooth.methods import methods

METHOD_ARGS = {"custom_diffusion": ["data.identifier=<new1>", "data.instance_prompt=a photo of <new1> dog"]}


RESULT_FILES = {"dreambooth": ["unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"],
                "lora": ["pytorch_lora_weights.safetensors"],
                "custom_diffusion": ["pytorch_custom_diffusion_weights.safetensors", "<new1>.safetensors"]}
# DPG with look_forward (the preset's objective: the critic and its optimizer resume too), the text encoder
# training, and a warm-up + cosine schedule that only comes out right if the LR state resumes.
RESUME_RUN = ["validation.every=0", "train.lr=1e-3", "train.max_steps=5", "train.checkpoint_every=2",
              "train.lr_scheduler=cosine", "train.lr_warmup_steps=2", "method.train_text_encoder=true",
              "objective.name=dpg", "objective.reward=look_forward"]


def result_files(folder):
    """Every safetensors file of a finished run outside its checkpoints, by path relative to the run."""
    return {str(path.relative_to(folder)): load_file(path) for path in folder.rglob("*.safetensors")
            if path.relative_to(folder).parts[0] not in ("checkpoints", "samples", "best")}


def test_every_method_has_result_files_for_the_resume_test():
    assert set(methods.names()) == set(RESULT_FILES)


@pytest.mark.parametrize("method", sorted(RESULT_FILES))
def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(method, tiny_folder, subject_dir, tmp_path,
                                                                   monkeypatch):
    """Ctrl-C one step after the step-2 checkpoint (step 3 done and logged, never checkpointed), then
    train.resume=latest: the result, critic and metrics log are bitwise those of a run never interrupted."""
    args = [f"model.pretrained={tiny_folder}", f"method.name={method}", *RESUME_RUN, *METHOD_ARGS.get(method, [])]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_cli(tiny_args(subject_dir, straight, *args)) == 0

    recorder = StepRecorder(monkeypatch, interrupt_at=3)
    assert run_cli(tiny_args(subject_dir, resumed, *args)) == 130
    assert recorder.steps == [0, 1, 2] and not (resumed / RESULT_FILES[method][0]).exists()
    assert len((resumed / "metrics.jsonl").read_text().splitlines()) == 3  # step 3's line, to be dropped

    recorder.steps.clear()
    recorder.interrupt_at = None
    assert run_cli(tiny_args(subject_dir, resumed, *args, "train.resume=latest")) == 0
    assert recorder.steps == [2, 3, 4]  # continued from the checkpoint, not retrained from scratch

    expected, got = result_files(straight), result_files(resumed)
    assert expected.keys() == got.keys()
    assert {*RESULT_FILES[method], "critic.safetensors"} <= expected.keys()
    for name, tensors in expected.items():
        assert_same_weights(tensors, got[name])
    assert (straight / "metrics.jsonl").read_text() == (resumed / "metrics.jsonl").read_text()
