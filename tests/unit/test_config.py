"""Config loading: every shipped preset loads, overrides are typed, and errors name the key."""

import dataclasses
from pathlib import Path

import pytest

from rewardbooth.core.config import (
    PRESET_DIR,
    Config,
    check_values,
    load_config,
    preset_names,
    to_dict,
)
from rewardbooth.core.errors import UserError
from rewardbooth.core.presets import describe

PRESET_FILES = sorted(PRESET_DIR.glob("*.yaml"))


def test_presets_exist():
    assert {"default", "paper"} <= set(preset_names())


@pytest.mark.parametrize("path", PRESET_FILES, ids=lambda p: p.stem)
def test_every_preset_file_loads_and_passes_checks(path):
    config = load_config(path, ["data.instance_dir=photos", "model.pretrained=tiny"])
    check_values(config)
    assert load_config(path.stem, ["data.instance_dir=photos", "model.pretrained=tiny"]) == config


def test_paper_preset_is_the_released_recipe():
    config = load_config("paper")
    assert config.objective.instance_weight == 0.0
    assert config.objective.gamma == 0.9986
    assert config.critic.input == "residual"
    assert (config.critic.optimizer, config.critic.lr) == ("sgd", 0.01)
    assert (config.train.lr, config.train.max_steps, config.train.batch_size) == (1e-6, 1000, 1)
    assert config.data.num_class_images == 8 and config.data.prior_preservation
    assert config.method.train_text_encoder


def test_default_preset_differs_where_documented():
    config = load_config("default")
    assert config.objective.gamma == 1.0 and config.objective.instance_weight == 1.0


def test_overrides_are_typed():
    config = load_config(None, ["train.max_steps=12", "train.lr=1e-6", "objective.name=baseline",
                                "validation.prompts=[a, b]", "train.resume=null", "data.identifier=zwx"])
    assert config.train.max_steps == 12 and config.train.lr == 1e-6
    assert config.objective.name == "baseline" and config.validation.prompts == ("a", "b")
    assert config.train.resume is None and config.data.identifier == "zwx"


def test_yaml_no_stays_a_word_for_choices(tmp_path):
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  mixed_precision: no\n")
    assert load_config(path).train.mixed_precision == "no"


def test_toml_files_load(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[train]\nmax_steps = 3\n[data]\ninstance_dir = "x"\n')
    assert load_config(path).train.max_steps == 3


@pytest.mark.parametrize("override,message", [
    ("train.max_step=3", "unknown config key 'train.max_step'"),
    ("trian.max_steps=3", "unknown config key 'trian'"),
    ("critic.input=pixels", "allowed values are 'state_action', 'residual', 'prediction'"),
    ("train.max_steps=ten", "expected an integer"),
    ("train.overwrite=maybe", "allowed values are true, false"),
    ("train.lr=fast", "expected a number"),
    ("train.max_steps", "has no '='"),
    ("max_steps=3", "section.key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        load_config(None, [override])
    assert "\n" not in str(error.value)


def test_unknown_key_lists_known_keys():
    with pytest.raises(UserError, match="known keys are.*train.max_steps"):
        load_config(None, ["train.max_step=3"])


@pytest.mark.parametrize("override,key", [("train.max_steps=0", "train.max_steps"),
                                          ("objective.gamma=1.5", "objective.gamma"),
                                          ("train.batch_size=-1", "train.batch_size")])
def test_range_checks_name_the_key(override, key):
    with pytest.raises(UserError, match=key):
        check_values(load_config(None, [override, "data.instance_dir=x", "model.pretrained=tiny"]))


def test_missing_model_and_instance_dir_are_explained():
    with pytest.raises(UserError, match="model.pretrained is not set"):
        check_values(Config())
    with pytest.raises(UserError, match="data.instance_dir"):
        check_values(load_config(None, ["model.pretrained=tiny"]))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(UserError, match="not valid"):
        load_config(bad)


def leaf_keys(cls, prefix=""):
    for field in dataclasses.fields(cls):
        if field.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(field.default_factory):
            yield from leaf_keys(field.default_factory, f"{prefix}{field.name}.")
        else:
            yield f"{prefix}{field.name}", field.metadata["help"]


def test_describe_lists_every_key_with_help():
    text = describe()
    keys = dict(leaf_keys(Config))
    assert {"method.lora.rank", "method.lora.denoiser_modules", "method.custom_diffusion.params"} <= set(keys)
    for key, help in keys.items():
        assert f"  {key} = " in text and help and f"# {help}" in text


def test_method_options_are_nested_and_lora_targets_default_to_the_family():
    config = load_config(None, ["method.lora.rank=8", "method.lora.denoiser_modules=[to_q, to_v]",
                                "method.custom_diffusion.params=crossattn"])
    assert config.method.lora.rank == 8 and config.method.lora.denoiser_modules == ("to_q", "to_v")
    assert config.method.custom_diffusion.params == "crossattn"
    assert Config().method.lora.denoiser_modules is None and Config().method.lora.text_encoder_modules is None
    with pytest.raises(UserError, match="bad value 'qkv' for method.custom_diffusion.params"):
        load_config(None, ["method.custom_diffusion.params=qkv"])
    with pytest.raises(UserError, match="unknown config key 'method.lora.ranks'"):
        load_config(None, ["method.lora.ranks=2"])


# The 0.1.0 renames (CHANGELOG.md): an old key fails with one line naming the new one, in a file or an override.
RENAMES = {
    "method.lora_rank": "method.lora.rank", "method.lora_alpha": "method.lora.alpha",
    "method.lora_unet_modules": "method.lora.denoiser_modules",
    "method.lora_text_encoder_modules": "method.lora.text_encoder_modules",
    "method.custom_diffusion_params": "method.custom_diffusion.params",
    "method.initializer_token": "method.custom_diffusion.initializer_token",
    "data.class_generation_steps": "data.class_num_inference_steps",
}


@pytest.mark.parametrize("old,new", sorted(RENAMES.items()))
def test_a_renamed_key_names_its_new_name(old, new, tmp_path):
    with pytest.raises(UserError) as error:
        load_config(None, [f"{old}=2"])
    assert str(error.value) == f"{old} was renamed {new} (0.1.0)"
    section, key = old.split(".")
    path = tmp_path / "old.yaml"
    path.write_text(f"{section}:\n  {key}: 2\n")
    with pytest.raises(UserError) as error:
        load_config(path)
    assert str(error.value) == f"{old} was renamed {new} (0.1.0)"


def test_round_trip_through_dict(tmp_path):
    config = load_config("paper", ["data.instance_dir=x", "validation.prompts=[a]"])
    from rewardbooth.core.config import from_dict, save_config

    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config == from_dict(to_dict(config))
    assert Path(tmp_path / "c.yaml").read_text().startswith("model:")


def test_train_help_config_needs_no_config_and_a_missing_config_is_one_line(capsys):
    from helpers import run_cli

    assert run_cli(["train", "--help-config"]) == 0
    assert "data.concepts = ()" in capsys.readouterr().out
    assert run_cli(["train"]) == 2
    error = capsys.readouterr().err
    assert "no config given" in error and error.count("\n") == 1


def test_concepts_round_trip_through_the_saved_config(tmp_path):
    from rewardbooth.core.config import save_config

    concept = "{instance_dir: cat, instance_prompt: a <new2> cat, identifier: <new2>, class_prompt: a cat}"
    config = load_config("default", ["data.instance_dir=x", f"data.concepts=[{concept}]"])
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config and config.data.concepts[0].identifier == "<new2>"


def test_train_preset_help_config_shows_that_presets_values(capsys):
    from helpers import run_cli

    assert run_cli(["train", "paper", "train.max_steps=7", "--help-config"]) == 0
    text = capsys.readouterr().out
    assert "objective.instance_weight = 0.0  #" in text and "objective.gamma = 0.9986  #" in text
    assert "train.max_steps = 7  #" in text  # overrides too
    assert run_cli(["train", "--help-config"]) == 0
    assert "objective.instance_weight = 1.0  #" in capsys.readouterr().out  # without a config: the defaults


@pytest.mark.parametrize("override,key", [("train.lr=.inf", "train.lr"), ("train.max_grad_norm=.nan", "train.max_grad_norm"),
                                          ("validation.guidance_scale=-.inf", "validation.guidance_scale"),
                                          ("objective.reward={dino: .nan}", "objective.reward")])
def test_non_finite_numbers_name_the_key(override, key):
    with pytest.raises(UserError, match=rf"{key}.*finite"):
        check_values(load_config("default", ["model.pretrained=tiny", "data.instance_dir=photos", override]))


def test_lr_scheduler_is_one_of_diffusers_schedules():
    from diffusers.optimization import SchedulerType

    with pytest.raises(UserError, match="train.lr_scheduler.*'constant'.*'cosine'"):
        load_config("default", ["train.lr_scheduler=cosinee"])
    for name in SchedulerType:
        if name.value != "piecewise_constant":  # needs step rules a config cannot give
            assert load_config("default", [f"train.lr_scheduler={name.value}"]).train.lr_scheduler == name.value
