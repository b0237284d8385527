"""Routes trained on the toy scene prompts are scored only on prompts naming none of those scenes, and one
benchmark folder never mixes runs scored on different prompt sets."""

import json

import pytest

from rewardbooth.core.errors import UserError
from rewardbooth.experiments.toyworld.benchmark import _recorded
from rewardbooth.experiments.toyworld.experiment import OBJECTIVES, Setting, check_prompt_leak
from rewardbooth.toyworld import subjects
from rewardbooth.toyworld.world import POSITIONS, SCENES

SCENE_ROUTES = [name for name, overrides in OBJECTIVES.items() if any("scene_prompts" in o for o in overrides)]


def test_there_are_scene_routes():
    assert len(SCENE_ROUTES) >= 3


@pytest.mark.parametrize("objective", SCENE_ROUTES)
def test_a_scene_route_is_refused_on_the_prompts_it_trained_on(objective):
    with pytest.raises(UserError, match="--prompts unseen"):
        check_prompt_leak(objective, Setting())
    check_prompt_leak(objective, Setting(prompts="unseen"))


def test_an_override_that_adds_scene_prompts_is_refused_too():
    with pytest.raises(UserError, match="leak"):
        check_prompt_leak("baseline", Setting(overrides=("data.scene_prompts=toy",)))


@pytest.mark.parametrize("index", [1, 100, 107])
def test_the_unseen_prompts_name_no_training_scene_or_position(index):
    subject = subjects.make_subject(index)
    unseen = Setting(prompts="unseen").prompt_list(subject)
    trained = [SCENES[s] for s in subjects.TRAINING_SCENES] + [POSITIONS[p] for p in subjects.TRAINING_POSITIONS]
    assert len(unseen) >= 10
    assert not [prompt for prompt in unseen if any(phrase in prompt for phrase in trained)]
    assert set(unseen) < set(Setting().prompt_list(subject))


def test_an_unknown_prompt_set_is_refused():
    with pytest.raises(UserError, match="unseen"):
        Setting(prompts="train").prompt_list(subjects.make_subject(1))


def test_a_results_folder_of_one_prompt_set_refuses_the_other(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"setting": {"prompts": "unseen"}, "per_subject": {}}))
    with pytest.raises(UserError, match="--prompts unseen"):
        _recorded(tmp_path, Setting())
    assert _recorded(tmp_path, Setting(prompts="unseen")) == {}


def test_results_from_before_the_field_count_as_all_prompts(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"setting": {"steps": 600}, "per_subject": {}}))
    assert _recorded(tmp_path, Setting()) == {}
    with pytest.raises(UserError, match="--prompts all"):
        _recorded(tmp_path, Setting(prompts="unseen"))


def test_the_benchmark_refuses_a_leaking_route_before_any_run(tmp_path, monkeypatch):
    from rewardbooth.experiments.toyworld import benchmark

    def no_run(task):
        raise AssertionError(f"a run started: {task[1:4]}")

    monkeypatch.setattr(benchmark, "_run_one", no_run)
    with pytest.raises(UserError, match="leak"):
        benchmark.run_toyworld_benchmark(tmp_path, num_subjects=1, seeds=(0,), objectives=(SCENE_ROUTES[0],))


def test_a_results_folder_of_one_toy_model_refuses_the_other(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"setting": {"prompts": "all", "model": "toy-flow"},
                                                       "per_subject": {}}))
    with pytest.raises(UserError, match="holds runs of the 'toy-flow' model, not 'toy': pass --model toy-flow"):
        _recorded(tmp_path, Setting())
    assert _recorded(tmp_path, Setting(model="toy-flow")) == {}
    (tmp_path / "results.json").write_text(json.dumps({"setting": {"prompts": "all"}, "per_subject": {}}))
    with pytest.raises(UserError, match="--model toy"):  # results from before the field: the toy model's
        _recorded(tmp_path, Setting(model="toy-flow"))


def test_an_unknown_toy_model_is_refused_and_the_cli_offers_every_known_one():
    from rewardbooth.cli import TOY_MODEL_CHOICES
    from rewardbooth.experiments.toyworld.experiment import TOY_MODELS

    assert TOY_MODEL_CHOICES == TOY_MODELS
    with pytest.raises(UserError, match="unknown toy-world model 'flux': use one of toy, toy-flow"):
        Setting(model="flux")
