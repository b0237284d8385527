"""Reward-based checkpoint selection: the maths, the tracker, and keep-best / early stop end to end."""

import json

import pytest
import torch

from helpers import run_cli, tiny_args, weights
from rewardbooth.training.selection import BestTracker, mix_scores

SCRIPTED = "user_scorers:Scripted"


def test_mix_scores_weighted_and_harmonic():
    parts = {"dino": (1.0, 0.8), "clip_text": (1.0, 0.2)}
    assert mix_scores(parts, "weighted") == pytest.approx(1.0)
    assert mix_scores(parts, "harmonic") == pytest.approx(2 / (1 / 0.8 + 1 / 0.2))  # 0.32
    assert mix_scores({"a": (3.0, 0.5), "b": (1.0, 0.5)}, "harmonic") == pytest.approx(0.5)
    assert mix_scores({"a": (1.0, 0.9), "b": (1.0, -0.3)}, "harmonic") < 1e-5  # a failed part sinks the mix


def test_tracker_keeps_the_earliest_best_and_counts_patience():
    tracker = BestTracker(patience=2)
    improved = [tracker.update(step, score) for step, score in [(0, 0.1), (2, 0.5), (4, 0.5), (6, 0.3)]]
    assert improved == [True, True, False, False]
    assert tracker.best_step == 2 and tracker.best_score == 0.5 and tracker.should_stop
    assert not BestTracker(patience=0, since_best=10).should_stop


def read_rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_keep_best_saves_the_best_step(subject_dir, tmp_path):
    common = ["validation.every=2", "validation.num_inference_steps=1", "train.lr=1e-3", "objective.name=baseline"]
    out = tmp_path / "run"
    assert run_cli(tiny_args(subject_dir, out, *common, "train.max_steps=6", f"validation.reward={SCRIPTED}",
                             f"validation.reward_options={{'{SCRIPTED}': {{values: [0.1, 0.5, 0.3, 0.2]}}}}")) == 0
    best = json.loads((out / "best" / "best.json").read_text())
    assert best["best_step"] == 2 and best["best_score"] == 0.5
    validations = [(r["step"], r["val/score"]) for r in read_rows(out) if "val/score" in r]
    assert validations == [(0, pytest.approx(0.1)), (2, 0.5), (4, pytest.approx(0.3)), (6, pytest.approx(0.2))]
    # The kept model is the step-2 model: the same as a run of the same seed that stops at step 2.
    two_steps = tmp_path / "two"
    assert run_cli(tiny_args(subject_dir, two_steps, *common, "train.max_steps=2")) == 0
    kept, final, reference = weights(out / "best"), weights(out), weights(two_steps)
    assert all(torch.equal(kept[k], reference[k]) for k in kept)
    assert any(not torch.equal(kept[k], final[k]) for k in kept)


def test_early_stop_after_patience_validations_without_improvement(subject_dir, tmp_path):
    out = tmp_path / "stop"
    assert run_cli(tiny_args(subject_dir, out, "validation.every=2", "validation.num_inference_steps=1",
                             "train.max_steps=20", f"validation.reward={SCRIPTED}", "validation.patience=2",
                             f"validation.reward_options={{'{SCRIPTED}': {{values: [0.5, 0.1, 0.2, 0.9]}}}}")) == 0
    rows = read_rows(out)
    assert max(r["step"] for r in rows if "loss" in r) == 4  # validations at 0 (best), 2, 4: stop before step 5
    assert json.loads((out / "best" / "best.json").read_text())["best_step"] == 0
    assert (out / "model_index.json").is_file()  # the run still saves its (last) result


@pytest.mark.parametrize("overrides, message", [
    (["validation.reward=dino", "validation.every=0"], "validation.reward needs validation.every > 0"),
    (["validation.patience=3"], "validation.patience needs validation.reward"),
    (["validation.reward=look_forward"], "compares latents to a training image"),
])
def test_bad_selection_settings(overrides, message, subject_dir, tmp_path, capsys):
    assert run_cli(tiny_args(subject_dir, tmp_path / "bad", "train.max_steps=1", *overrides)) == 2
    assert message in capsys.readouterr().err


def scorer_for(reward, setups, mix="weighted"):
    import yaml

    from rewardbooth.core.config import load_config
    from rewardbooth.training.selection import ValidationScorer

    config = load_config("default", [f"validation.reward={yaml.safe_dump(reward, default_flow_style=True).strip()}",
                                     "validation.every=2", f"validation.mix={mix}"])
    return ValidationScorer(config, setups, torch.device("cpu"))


def setup_named(identifier):
    from rewardbooth.rewards import RewardSetup

    return RewardSetup(torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)), identifier,
                       torch.device("cpu"))


def test_validation_scores_the_images_themselves_with_the_image_scorers():
    """score_images sees the PIL images as tensors and the prompts as they are; each part is logged."""
    from PIL import Image

    from rewardbooth.data.images import pil_to_tensor
    from user_scorers import Recorder

    images = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 51))]
    prompts = ["a sks dog", "a sks dog on grass"]
    Recorder.seen.clear()
    values = scorer_for({"user_scorers:Recorder": 2.0, "user_scorers:make_brightness": 1.0},
                        [setup_named("sks")]).scores(images, prompts)
    (seen, seen_prompts), = Recorder.seen
    assert torch.equal(seen, torch.stack([pil_to_tensor(image) for image in images])) and seen_prompts == prompts
    brightness = [1 / 3, 0.2 / 3]  # red (1, 0, 0); dark blue (0, 0, 0.2)
    assert values["val/user_scorers:Recorder"] == pytest.approx(sum(brightness) / 2)
    assert values["val/score"] == pytest.approx(3 * sum(brightness) / 2)


def test_each_validation_image_is_scored_by_its_own_concepts_scorer():
    from PIL import Image

    from user_scorers import Recorder

    images = [Image.new("RGB", (8, 8), (255, 255, 255)), Image.new("RGB", (8, 8), (0, 0, 0))]
    Recorder.seen.clear()
    scorer_for("user_scorers:Recorder", [setup_named("<new1>"), setup_named("<new2>")]).scores(
        images, ["a <new2> cat", "a <new1> dog"])
    assert [(float(seen.mean()), prompts) for seen, prompts in Recorder.seen] == [
        (0.0, ["a <new1> dog"]), (1.0, ["a <new2> cat"])]


@pytest.mark.parametrize("reward", ["look_forward", "user_rewards:DarkImages", "user_scorers:NeverBuilt",
                                    "user_scorers:make_latent", {"user_scorers:Recorder": 1, "look_forward": 1}])
def test_a_latent_reward_is_refused_as_validation_reward_by_its_kind(reward):
    """Declared (a registered reward, a class without score_images, a `kind`) before building anything; a plain
    function's result once built."""
    from rewardbooth.core.errors import UserError

    with pytest.raises(UserError, match="validation.reward scores generated images, but .* compares latents"):
        scorer_for(reward, [setup_named("sks")])
