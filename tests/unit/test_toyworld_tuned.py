"""Each toy base model has its own tuned DreamBooth (tuned on subjects below 100 for that model), and a run of
`baseline-tuned` on a model trains with that model's setting, after the benchmark's own learning rate."""

import pytest

from rewardbooth.experiments.toyworld.experiment import (
    TOY_MODELS,
    TUNED_DREAMBOOTH,
    TUNED_OBJECTIVES,
    Setting,
    objective_overrides,
    training_overrides,
)
from rewardbooth.toyworld import subjects


def test_every_toy_model_has_a_tuned_dreambooth():
    assert set(TUNED_DREAMBOOTH) == set(TOY_MODELS)


@pytest.mark.parametrize("model", TOY_MODELS)
@pytest.mark.parametrize("objective", TUNED_OBJECTIVES)
def test_the_tuned_objectives_carry_their_models_setting(model, objective):
    overrides = objective_overrides(objective, model)
    assert overrides[0] == "objective.name=baseline"
    assert all(item in overrides for item in TUNED_DREAMBOOTH[model])
    assert objective_overrides("baseline", model) == ["objective.name=baseline"]  # the untuned one is shared


@pytest.mark.parametrize("model", TOY_MODELS)
def test_a_run_of_the_tuned_dreambooth_trains_with_its_models_setting(tmp_path, model):
    overrides = training_overrides(subjects.make_subject(100), "baseline-tuned", 0, tmp_path, tmp_path,
                                   Setting(model=model))
    assert f"model.pretrained={model}" in overrides
    for item in TUNED_DREAMBOOTH[model]:  # given after the setting's lr and steps, so it wins where it sets them
        key = item.split("=")[0] + "="
        assert [o for o in overrides if o.startswith(key)][-1] == item



def test_the_model_picks_the_tuned_setting(tmp_path, monkeypatch):
    monkeypatch.setitem(TUNED_DREAMBOOTH, "toy-flow", ["train.lr=3e-4"])
    subject = subjects.make_subject(100)
    flow = training_overrides(subject, "baseline-tuned", 0, tmp_path, tmp_path, Setting(model="toy-flow"))
    ddpm = training_overrides(subject, "baseline-tuned", 0, tmp_path, tmp_path, Setting(model="toy"))
    assert flow[-1] == "train.lr=3e-4" and "train.lr=3e-4" not in ddpm
