"""Captions and aspect buckets through the real setup (issue 22 item 3): what the batches hold, and a
non-square step of every objective, critic and kind of reward on tiny SD and tiny-flux."""

import contextlib

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from helpers import TINY_RUN, StepRecorder, assert_same_weights, run_cli, tiny_args
from rewardbooth.core.config import load_config
from rewardbooth.data.images import make_example_subject
from rewardbooth.training.loop import accumulate_gradients, make_policy
from rewardbooth.training.setup import build_run

CAPTION = "a dog on a sofa"  # subject_00's caption, without the identifier: 'insert' completes it
INSERTED = "a sks dog on a sofa"


def write_subject(folder, portrait=True, caption=True):
    """Three photos of the example subject, 64x96 portraits (or 96x96 squares); the first one captioned."""
    for index, path in enumerate(make_example_subject(folder, num_images=3, size=96, seed=1)):
        if portrait:
            Image.open(path).crop((16, 0, 80, 96)).save(path)
        if caption and index == 0:
            path.with_suffix(".txt").write_text(CAPTION + "\n")
    return folder


@pytest.fixture(scope="module")
def portraits(tmp_path_factory):
    return write_subject(tmp_path_factory.mktemp("portraits"))


@contextlib.contextmanager
def built(subject, tmp_path, *overrides, model="tiny"):
    from accelerate.state import AcceleratorState, GradientState

    config = load_config("default", [*TINY_RUN, f"model.pretrained={model}", f"data.instance_dir={subject}",
                                     f"train.output_dir={tmp_path / 'run'}", "validation.every=0", *overrides])
    try:
        yield build_run(config), config
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def draws(run, config, steps=12, batch_size=2):
    return [run.data.draw(step, 0, batch_size, 0, 1) for step in range(steps)]


def test_captions_reach_the_batches_with_the_identifier_inserted(portraits, tmp_path):
    with built(portraits, tmp_path) as (run, config):
        batches = draws(run, config)
    prompts = {prompt for batch in batches for prompt in batch.prompts[:batch.num_instance]}
    assert prompts == {INSERTED, config.data.instance_prompt}  # the caption, completed, and the bare prompt
    batch, row = next((batch, i) for batch in batches for i, p in enumerate(batch.prompts) if p == INSERTED)
    caption, bare = run.data.conditioning[INSERTED].embeds, run.data.conditioning[config.data.instance_prompt].embeds
    assert torch.equal(batch.conditioning.embeds["embeds"][row], caption["embeds"][0])  # the caption's embedding
    assert not torch.equal(caption["embeds"], bare["embeds"])


def test_a_portrait_photo_gets_portrait_latents_and_the_class_images_follow(portraits, tmp_path):
    with built(portraits, tmp_path, "data.aspect_buckets=true", "data.prior_preservation=true") as (run, config):
        batch = run.data.draw(0, 0, 2, 0, 1)
    height, width = batch.x0.shape[-2:]
    assert height > width and batch.size == (80, 48)  # 64x96 -> the 48x80 bucket of the 64 px run, latents f=4
    assert batch.x0.shape[0] == 4 and batch.noise.shape == batch.x0.shape  # prior rows share the bucket
    with built(portraits, tmp_path, "data.prior_preservation=true") as (run, config):  # buckets off: squares
        assert run.data.draw(0, 0, 2, 0, 1).x0.shape[-2:] == (16, 16)


def test_caption_dropout_trains_the_bare_prompt_on_about_its_share(portraits, tmp_path):
    with built(portraits, tmp_path, "data.caption_dropout=0.5") as (run, config):
        batches = draws(run, config, steps=60, batch_size=4)
    captioned = [p for batch in batches for p in batch.prompts if p in (INSERTED,)]
    with built(portraits, tmp_path) as (run, config):
        undropped = draws(run, config, steps=60, batch_size=4)
    drawn = [p for batch in undropped for p in batch.prompts if p == INSERTED]
    assert 0.3 < len(captioned) / len(drawn) < 0.7, (len(captioned), len(drawn))
    for a, b in zip(batches, undropped):  # dropout draws from its own stream: the rest is unchanged
        assert torch.equal(a.x0, b.x0) and torch.equal(a.noise, b.noise) and torch.equal(a.timesteps, b.timesteps)


def test_require_refuses_a_caption_without_the_identifier_before_writing(portraits, tmp_path, capsys):
    out = tmp_path / "refused"
    assert run_cli(tiny_args(portraits, out, "data.caption_identifier=require", "train.max_steps=1")) == 2
    error = capsys.readouterr().err
    assert "subject_00.txt" in error and "data.caption_identifier=insert" in error
    assert not out.exists()
    assert (portraits / "subject_00.txt").read_text() == CAPTION + "\n"  # the user's file is left alone


def test_a_bucket_size_off_the_models_step_is_refused_before_writing(portraits, tmp_path, capsys):
    out = tmp_path / "refused"
    assert run_cli(tiny_args(portraits, out, "data.aspect_buckets=[50x80]", "train.max_steps=1")) == 2
    assert "data.aspect_buckets" in capsys.readouterr().err and not out.exists()


STEPS = [  # (model, objective, extra overrides): every objective, critic and kind of reward, non-square
    ("tiny", "baseline", ["data.prior_preservation=true"]),
    ("tiny", "dpg", ["data.prior_preservation=true", "critic.name=conv"]),
    ("tiny", "dpg", ["critic.name=pooled", "critic.condition_on_text=true"]),
    ("tiny", "dpg", ["critic.name=released", "critic.input=residual"]),
    ("tiny", "dpg", ["critic.name=feature", "critic.input=prediction", "critic.encoder=toy_encoder",
                     "objective.reward=toy_identity_blackbox", "critic.replay_batch=4"]),
    ("tiny", "direct", ["objective.reward=toy_identity", "objective.reward_resolution=32"]),
    ("tiny", "grpo", ["method.name=lora", "objective.grpo.num_steps=2", "objective.grpo.group_size=2",
                      "objective.grpo.trained_steps=1", "objective.reward=toy_identity_blackbox"]),
    ("tiny-flux", "baseline", ["method.name=lora", "data.prior_preservation=true"]),
    ("tiny-flux", "dpg", ["method.name=lora"]),
    ("tiny-flux", "direct", ["method.name=lora", "objective.reward=toy_identity"]),
    ("tiny-flux", "grpo", ["method.name=lora", "objective.grpo.num_steps=2", "objective.grpo.group_size=2",
                           "objective.grpo.trained_steps=1"]),
    ("tiny-sd3", "dpg", ["method.name=lora"]),
    ("tiny-sdxl", "dpg", ["method.name=lora"]),  # its size ids: the bucket's (test_training_data.py)
    ("tiny-zimage", "dpg", ["method.name=lora"]),
]


@pytest.mark.parametrize("model,objective,overrides", STEPS, ids=[f"{m}-{o}-{i}" for i, (m, o, _) in enumerate(STEPS)])
def test_every_objective_steps_on_portrait_latents(portraits, tmp_path, model, objective, overrides):
    with built(portraits, tmp_path, "data.aspect_buckets=true", f"objective.name={objective}", *overrides,
               model=model) as (run, config):
        batch = run.data.draw(0, 0, 1, 0, 1)
        assert batch.x0.shape[-2] > batch.x0.shape[-1]  # the portrait bucket
        terms, _ = accumulate_gradients(run, make_policy(run), config, step=0)
        assert all(torch.isfinite(value).all() for value in terms.values()), terms
        grads = [p.grad for p in run.policy_parameters if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("model", ["tiny", "tiny-flux"])
def test_a_bucketed_captioned_run_trains_validates_and_saves(portraits, tmp_path, model):
    out = tmp_path / model
    assert run_cli(tiny_args(portraits, out, f"model.pretrained={model}", "method.name=lora", "train.max_steps=2",
                             "validation.every=2", "data.aspect_buckets=true", "data.caption_dropout=0.2")) == 0
    assert (out / "pytorch_lora_weights.safetensors").is_file() and any((out / "samples").iterdir())


def test_a_bucketed_run_with_caption_dropout_resumes_bitwise(portraits, tmp_path, monkeypatch):
    """Ctrl-C after the step-2 checkpoint, then train.resume=latest: the buckets and dropped captions of
    steps 2-5 are drawn again exactly, so result and metrics are those of the uninterrupted run."""
    mixed = write_subject(tmp_path / "mixed", portrait=False)  # squares and portraits: two buckets to draw from
    for index, path in enumerate(sorted(portraits.glob("*.png"))[1:]):
        Image.open(path).save(mixed / f"portrait_{index}.png")
    args = ["method.name=lora", "train.lr=1e-3", "train.max_steps=6", "train.checkpoint_every=2",
            "validation.every=0", "data.aspect_buckets=true", "data.caption_dropout=0.5", "train.batch_size=2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_cli(tiny_args(mixed, straight, *args)) == 0
    recorder = StepRecorder(monkeypatch, interrupt_at=3)
    assert run_cli(tiny_args(mixed, resumed, *args)) == 130
    recorder.interrupt_at = None
    assert run_cli(tiny_args(mixed, resumed, *args, "train.resume=latest")) == 0
    name = "pytorch_lora_weights.safetensors"
    assert_same_weights(load_file(straight / name), load_file(resumed / name))
    assert (straight / "metrics.jsonl").read_text() == (resumed / "metrics.jsonl").read_text()
