"""`rewardbooth sweep`: subjects, prompts and configs per run; a two-subject toy sweep sharded, interrupted and
resumed, redoing nothing finished."""

import dataclasses
import json

import pytest
import yaml

from helpers import run_cli, save_tiny_vit
from rewardbooth.core.errors import UserError
from rewardbooth.data import dreambench
from rewardbooth.experiments import sweep
from rewardbooth.toyworld import subjects


def write_sweep(path, **keys):
    path.write_text(yaml.safe_dump(keys, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy-dataset")
    subjects.main([str(root), "--indices", "100", "101", "--views", "3"])
    return root


def test_class_noun_from_class_txt_then_dreambench_then_toy_subject(tmp_path, toy_dataset):
    (tmp_path / "my_mug").mkdir()
    (tmp_path / "my_mug" / "class.txt").write_text("mug\n")
    (tmp_path / "dog6").mkdir()
    assert sweep.subject_class(tmp_path / "my_mug") == "mug"
    assert sweep.subject_class(tmp_path / "dog6") == "dog"
    assert sweep.subject_class(toy_dataset / "subject_100") == subjects.make_subject(100).object_class
    (tmp_path / "unknown").mkdir()
    with pytest.raises(UserError, match="class.txt"):
        sweep.subject_class(tmp_path / "unknown")


def test_prompts_from_prompts_txt_else_dreambench_lists(tmp_path, toy_dataset):
    assert sweep.subject_prompts(toy_dataset / "subject_100", "ball", "sks") == subjects.prompt_set(
        subjects.make_subject(100))
    assert sweep.subject_prompts(tmp_path, "dog", "zwx") == dreambench.prompts_for("dog6", "zwx")
    assert sweep.subject_prompts(tmp_path, "backpack", "sks") == dreambench.prompts_for("backpack", "sks")


def test_run_config_layers_shared_then_objective_then_subject(tmp_path, toy_dataset):
    spec = sweep.load_sweep(write_sweep(
        tmp_path / "s.yaml", dataset=str(toy_dataset), output=str(tmp_path / "out"),
        overrides={"model.pretrained": "toy", "train.max_steps": 7, "validation.prompts": ["a sks ball, twice"]},
        objectives={"a": {"objective.name": "baseline", "train.max_steps": 9}},
        instance_prompt="a {identifier} {class_noun}"))
    config = sweep.run_config(spec, toy_dataset / "subject_100", "a")
    noun = subjects.make_subject(100).object_class
    assert config.train.max_steps == 9 and config.objective.name == "baseline"
    assert config.validation.prompts == ("a sks ball, twice",)
    assert config.data.instance_prompt == f"a sks {noun}" and config.data.class_prompt == f"a photo of {noun}"
    assert config.train.output_dir == str(tmp_path / "out" / "runs" / "subject_100" / "a" / "model")


@pytest.mark.parametrize("keys, message", [
    ({}, "sets no dataset"),
    ({"dataset": "nowhere"}, "is not a folder"),
    ({"dataset": "DATA", "colour": 1}, "unknown config key 'colour'"),
    ({"dataset": "DATA", "subjects": ["subject_999"]}, "'subject_999' is not a folder"),
    ({"dataset": "DATA", "objectives": {"x": {"train.max_step": 3}}}, "unknown config key 'train.max_step'"),
    ({"dataset": "DATA", "overrides": {"model.pretrained": "toy", "train.lr": -1}}, "train.lr"),
    ({"dataset": "DATA", "sampler_steps": 5}, "sampler_steps was renamed num_inference_steps (0.1.0)"),
    ({"dataset": "DATA", "images_per_prompt": 5}, "images_per_prompt was renamed num_images (0.1.0)"),
    ({"dataset": "DATA", "overrides": {"method.lora_rank": 2}}, "method.lora_rank was renamed method.lora.rank"),
])
def test_bad_sweep_fails_at_once_with_one_line(keys, message, tmp_path, toy_dataset, capsys):
    keys = {k: str(toy_dataset) if v == "DATA" else v for k, v in keys.items()}
    path = write_sweep(tmp_path / "s.yaml", output=str(tmp_path / "out"), **keys)
    assert run_cli(["sweep", str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error
    assert not (tmp_path / "out" / "runs").exists()


def test_missing_sweep_file_and_bad_shard(tmp_path, capsys):
    assert run_cli(["sweep", str(tmp_path / "none.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    assert run_cli(["sweep", str(write_sweep(tmp_path / "s.yaml", dataset=str(tmp_path))), "--shard", "2/2"]) == 2
    assert "--shard '2/2'" in capsys.readouterr().err


def test_help_config_lists_every_key(capsys):
    assert run_cli(["sweep", "--help-config"]) == 0
    text = capsys.readouterr().out
    assert all(f"{key} = " in text for key in ("dataset", "objectives", "metrics", "keep_models"))


def test_two_toy_subjects_sharded_interrupted_and_resumed(toy_dataset, tmp_path, monkeypatch, capsys):
    vit = save_tiny_vit(tmp_path / "vit")
    out = tmp_path / "sweep"
    path = write_sweep(
        tmp_path / "toy.yaml", dataset=str(toy_dataset), output=str(out), config="default",
        overrides={"model.pretrained": "toy", "data.resolution": 32, "data.prior_preservation": False,
                   "train.max_steps": 2, "train.lr": 1e-4, "train.report_to": "none", "train.checkpoint_every": 0,
                   "validation.every": 0},
        objectives={"dreambooth": {"objective.name": "baseline"}, "dpg": {"objective.name": "dpg"}},
        instance_prompt="a {identifier} {class_noun}", class_prompt="a {class_noun}", num_images=1,
        num_inference_steps=2, guidance_scale=4.0, metrics=["toy_fidelity", "toy_alignment", "dino"], dino_model=str(vit))
    trained = []
    real = sweep.train_and_generate

    def recording(spec, subject, objective, config):
        trained.append((subject.name, objective))
        if (subject.name, objective) == ("subject_101", "dpg") and interrupt:
            (sweep.run_dir(spec, subject.name, objective) / "model").mkdir(parents=True)
            (sweep.run_dir(spec, subject.name, objective) / "model" / "half-written").write_text("x")
            raise KeyboardInterrupt
        real(spec, subject, objective, config)

    monkeypatch.setattr(sweep, "train_and_generate", recording)

    # Shard 0 of 2: the first subject only, evaluated; no table while the other shard is unfinished.
    interrupt = True
    assert run_cli(["sweep", str(path), "--shard", "0/2"]) == 0
    assert trained == [("subject_100", "dreambooth"), ("subject_100", "dpg")]
    assert "shard 0/2 finished" in capsys.readouterr().out
    assert (out / "evaluation" / "subject_100" / "evaluation.json").is_file() and not (out / "results.md").exists()
    first_done = (out / "runs" / "subject_100" / "dpg" / sweep.DONE).stat().st_mtime_ns

    # The whole sweep, interrupted in its last run.
    assert run_cli(["sweep", str(path)]) == 130
    assert trained[2:] == [("subject_101", "dreambooth"), ("subject_101", "dpg")]
    assert not (out / "runs" / "subject_101" / "dpg" / sweep.DONE).exists()

    # Resumed: only the interrupted run trains again, from scratch; then the table.
    interrupt = False
    assert run_cli(["sweep", str(path)]) == 0
    assert trained[4:] == [("subject_101", "dpg")]
    assert "3 of 4 runs already done" in capsys.readouterr().err  # a progress line, like the runs' own
    assert (out / "runs" / "subject_100" / "dpg" / sweep.DONE).stat().st_mtime_ns == first_done
    assert not (out / "runs" / "subject_101" / "dpg" / "model" / "half-written").exists()
    assert not list((out / "runs").rglob("*.safetensors"))  # keep_models is off: weights dropped, samples kept
    assert (out / "runs" / "subject_101" / "dpg" / "model" / "metrics.jsonl").is_file()

    result = json.loads((out / "results.json").read_text())
    assert result["subjects"] == ["subject_100", "subject_101"] and list(result["table"]) == ["dreambooth", "dpg"]
    report = json.loads((out / "evaluation" / "subject_101" / "evaluation.json").read_text())
    assert len(report["runs"]["dpg"]["images"]) == 25  # the toy subject's prompts.txt, one image each
    for metric in ("toy_fidelity", "toy_alignment", "dino"):
        expected = sum(json.loads((out / "evaluation" / s / "evaluation.json").read_text())["runs"]["dpg"]["summary"]
                       [metric] for s in result["subjects"]) / 2
        assert result["table"]["dpg"][metric] == pytest.approx(expected)
        assert f"{metric}_delta" in result["table"]["dpg"] and f"{metric}_delta" not in result["table"]["dreambooth"]
    assert "| dpg |" in (out / "results.md").read_text() and (out / "results.png").is_file()


def test_a_run_interrupted_after_a_checkpoint_resumes_from_it(toy_dataset, tmp_path, monkeypatch):
    import rewardbooth.inference.generate
    import rewardbooth.training.loop

    out = tmp_path / "sweep"
    path = write_sweep(
        tmp_path / "toy.yaml", dataset=str(toy_dataset), output=str(out), subjects=["subject_100"],
        overrides={"model.pretrained": "toy", "data.resolution": 32, "data.prior_preservation": False,
                   "train.max_steps": 2, "train.report_to": "none", "train.checkpoint_every": 1,
                   "validation.every": 0},
        objectives={"dpg": {"objective.name": "dpg"}}, num_images=1, num_inference_steps=1,
        metrics=["toy_fidelity"])
    steps, real_step, real_generate = [], rewardbooth.training.loop.accumulate_gradients, rewardbooth.inference.generate.generate

    def counted(*args, **kwargs):
        steps.append(args[3])
        return real_step(*args, **kwargs)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rewardbooth.training.loop, "accumulate_gradients", counted)
    monkeypatch.setattr(rewardbooth.inference.generate, "generate", interrupted)
    assert run_cli(["sweep", str(path)]) == 130
    assert steps == [0, 1]
    monkeypatch.setattr(rewardbooth.inference.generate, "generate", real_generate)
    assert run_cli(["sweep", str(path)]) == 0
    assert steps == [0, 1]  # resumed at its step-2 checkpoint: nothing left to train
    assert len((out / "runs" / "subject_100" / "dpg" / "model" / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "results.md").is_file()


@pytest.mark.parametrize("example", ["sweep-dreambench.yaml", "sweep-toy.yaml"])
def test_shipped_example_sweeps_build_every_run_config(example, tmp_path):
    from pathlib import Path

    (tmp_path / "dog6").mkdir()
    path = Path(__file__).parents[2] / "examples" / example
    spec = sweep.load_sweep(path, [f"dataset={tmp_path}", f"output={tmp_path / 'out'}"])
    for objective in sweep.objectives_of(spec):
        config = sweep.run_config(spec, tmp_path / "dog6", objective)
        assert config.data.identifier == "sks" and "dog" in config.data.instance_prompt


def toy_sweep(tmp_path, toy_dataset, **keys):
    """A one-subject toy sweep file, cheap to build configs for."""
    settings = dict(dataset=str(toy_dataset), output=str(tmp_path / "sweep"), subjects=["subject_100"],
                    overrides={"model.pretrained": "toy", "data.resolution": 32, "train.max_steps": 2,
                               "train.report_to": "none", "train.checkpoint_every": 0, "validation.every": 0},
                    objectives={"dreambooth": {"objective.name": "baseline"}}, num_images=1,
                    num_inference_steps=1, metrics=["toy_fidelity"])
    return write_sweep(tmp_path / "s.yaml", **{**settings, **keys})


@pytest.mark.parametrize("keys, expected", [
    ({"metrics": ["dino"], "dino_model": "NOWHERE"}, "set dino_model"),
    ({"metrics": ["clip_t"], "clip_model": "NOWHERE"}, "set clip_model"),
    ({"objectives": {"dreambooth": {"objective.name": "baseline"},
                     "dpg-dino": {"objective.name": "dpg", "objective.reward": "dino",
                                  "objective.reward_options": {"dino": {"model": "NOWHERE"}}}}},
     "objective.reward_options"),
], ids=["dino_model", "clip_model", "reward-model"])
def test_an_unloadable_model_fails_before_the_first_run(keys, expected, tmp_path, toy_dataset, monkeypatch, capsys):
    trained = []
    monkeypatch.setattr(sweep, "train_and_generate", lambda *args: trained.append(args))
    nowhere = str(tmp_path / "nowhere")
    keys = json.loads(json.dumps(keys).replace("NOWHERE", nowhere))
    assert run_cli(["sweep", str(toy_sweep(tmp_path, toy_dataset, **keys))]) == 2
    error = capsys.readouterr().err.strip()
    assert expected in error and "nowhere" in error and "\n" not in error, error
    if expected != "objective.reward_options":
        assert "reward_options" not in error
    assert trained == [] and not (tmp_path / "sweep" / "runs").exists()


def finish_by_hand(spec, subject, objective, config):
    """What a finished run leaves behind for the resume logic: its config, and done.json."""
    from rewardbooth.core.config import save_config

    folder = sweep.run_dir(spec, subject.name, objective)
    (folder / "model").mkdir(parents=True)
    save_config(config, folder / "model" / "config.yaml")
    (folder / sweep.DONE).write_text(json.dumps({"generation": sweep.generation_settings(spec, subject, config)}))


@pytest.mark.parametrize("change, expected", [
    ("overrides.train.max_steps=3", "train.max_steps was 2 and is 3 now"),
    ("num_inference_steps=5", "num_inference_steps was 1 and is 5 now"),
    ("overrides.method.lora.rank=8", "method.lora.rank was 4 and is 8 now"),  # a nested key, named in full
])
def test_a_finished_run_made_with_other_settings_is_not_reused(change, expected, tmp_path, toy_dataset, monkeypatch,
                                                              capsys):
    path = toy_sweep(tmp_path, toy_dataset)
    spec = sweep.load_sweep(path)
    subject = toy_dataset / "subject_100"
    finish_by_hand(spec, subject, "dreambooth", sweep.run_config(spec, subject, "dreambooth"))
    assert sweep.stale_setting(spec, subject, "dreambooth", sweep.run_config(spec, subject, "dreambooth")) is None
    key, value = change.split("=")
    tree = yaml.safe_load(path.read_text())
    if key.startswith("overrides."):
        tree["overrides"][key.removeprefix("overrides.")] = int(value)
    else:
        tree[key] = int(value)
    path.write_text(yaml.safe_dump(tree))
    monkeypatch.setattr(sweep, "train_and_generate", lambda *args: pytest.fail("nothing may train"))
    assert run_cli(["sweep", str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert "finished run subject_100/dreambooth" in error and expected in error and "\n" not in error, error


def test_a_report_without_every_objective_or_metric_is_redone(tmp_path, toy_dataset):
    spec = sweep.load_sweep(toy_sweep(tmp_path, toy_dataset, metrics=["dino"]))
    report = sweep.evaluation_dir(spec, "subject_100")
    report.mkdir(parents=True)
    (report / "evaluation.json").write_text(json.dumps({"runs": {"dreambooth": {}}, "protocol": {"dino": {}}}))
    assert sweep.evaluated(spec, "subject_100", {"dreambooth": {}})
    assert not sweep.evaluated(spec, "subject_100", {"dreambooth": {}, "dpg": {}})  # an objective was added
    assert not sweep.evaluated(dataclasses.replace(spec, metrics=("dino", "clip_t")), "subject_100", {"dreambooth": {}})


def test_a_one_subject_table_says_why_it_has_no_interval(tmp_path):
    from rewardbooth.experiments.sweep_report import aggregate

    runs = {"a": {"summary": {"dino": 0.5}}, "b": {"summary": {"dino": 0.3}}}
    (tmp_path / "evaluation" / "s1").mkdir(parents=True)
    (tmp_path / "evaluation" / "s1" / "evaluation.json").write_text(json.dumps({"runs": runs}))
    aggregate(tmp_path, ["s1"], ["a", "b"], ("dino",))
    table = (tmp_path / "results.md").read_text()
    assert "| b | 0.3000 | -0.2000 [n/a: one subject] |" in table and "nan" not in table
    json.loads((tmp_path / "results.json").read_text(), parse_constant=pytest.fail)  # strict JSON: no NaN


def test_docs_and_example_agree_on_what_an_interrupted_run_does():
    from pathlib import Path

    root = Path(__file__).parents[2]
    text = " ".join((root / "docs" / "sweep.md").read_text().split())
    example = yaml.safe_load((root / "examples" / "sweep-dreambench.yaml").read_text())
    assert "continues from its last checkpoint" in text
    assert example["overrides"]["train.checkpoint_every"] == 0 and "checkpoint_every: 0" in text
    assert "starts over" in text  # what it does with the shipped examples, said as such
    # The backbones are named where a user changes them.
    assert {"dino_model", "clip_model"} <= example.keys()
