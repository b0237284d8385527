"""The flow-matching families end to end on their tiny built-ins: training through the CLI with each method
and objective, results that stock diffusers loads and that reproduce `generate`'s images, the family's
sampling defaults, and refusals that are one line and write nothing."""

import json

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline, ZImagePipeline
from PIL import Image
from safetensors.torch import load_file

from helpers import StepRecorder, run_cli, tiny_args
from rewardbooth.core.config import ModelConfig
from rewardbooth.inference.generate import generate
from rewardbooth.models import load_model
from rewardbooth.models.families import family_for_pipeline
from rewardbooth.models.flow import FlowProcess
from rewardbooth.training.batches import decode_latents

TRAIN = ["train.max_steps=2", "validation.every=0", "train.lr=1e-3", "data.num_class_images=2"]
PROMPT = "a photo of sks dog"
# (built-in, stock pipeline, default guidance, the guidance_scale that samples without classifier-free guidance:
# SD3 takes CFG above 1, Z-Image above 0; FLUX-dev embeds its guidance, which training sets to 3.5)
FAMILIES = {"sd3": ("tiny-sd3", StableDiffusion3Pipeline, 7.0, 1.0), "flux": ("tiny-flux", FluxPipeline, 3.5, 3.5),
            "zimage": ("tiny-zimage", ZImagePipeline, 5.0, 0.0)}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return request.param


@pytest.fixture(scope="module")
def stock_folder(family, tmp_path_factory):
    """The family's tiny built-in saved as a stock pipeline folder (the path users pass)."""
    folder = tmp_path_factory.mktemp(family)
    load_model(ModelConfig(FAMILIES[family][0])).pipeline().save_pretrained(folder)
    return folder


def train(subject_dir, out, model, *overrides):
    assert run_cli(tiny_args(subject_dir, out, f"model.pretrained={model}", *TRAIN, *overrides)) == 0
    return out


def stock_image(pipeline, steps=2):
    return np.asarray(pipeline(PROMPT, num_inference_steps=steps, height=64, width=64,
                               generator=torch.Generator().manual_seed(0)).images[0]).astype(int)


def test_denoise_is_what_the_stock_sampler_steps_with(family):
    """From pure noise, one stock Euler step (σ 1 -> 0) lands on the x̂0 of the family's own `denoise`: the time
    value the transformer is fed, the sign of its output (Z-Image's −v), the packing and the text conditioning
    are the pipeline's."""
    model, _, _, unguided = FAMILIES[family]
    parts = load_model(ModelConfig(model))
    pipeline = parts.pipeline()
    pipeline.set_progress_bar_config(disable=True)
    with torch.no_grad():
        stock = pipeline([PROMPT], height=64, width=64, num_inference_steps=1, guidance_scale=unguided,
                         output_type="pt", generator=torch.Generator().manual_seed(0)).images
        side = 64 // parts.vae_scale_factor  # the pipeline draws its (B, C, h, w) noise from the generator first
        noise = torch.randn(1, parts.latent_channels, side, side, generator=torch.Generator().manual_seed(0))
        t = torch.full((1,), 1000.0)
        conditioning = parts.family.encode_text(parts.text_encoders, parts.family.tokenize(parts.tokenizers, [PROMPT]))
        action, _ = parts.family.denoise(parts.denoiser, noise, t, conditioning, parts.text_encoders)
        ours = decode_latents(parts.vae, parts.latent_space, parts.process.look_forward(noise, action, t))
    torch.testing.assert_close(ours, stock, atol=1e-4, rtol=0)


def test_lora_dpg_loads_in_the_stock_pipeline_and_reproduces_generate(family, stock_folder, subject_dir, tmp_path):
    _, pipeline_class, guidance, _ = FAMILIES[family]
    out = train(subject_dir, tmp_path / "lora", stock_folder, "method.name=lora", "objective.name=dpg")
    saved = load_file(out / "pytorch_lora_weights.safetensors")
    # Every default target the family names (both streams of an MMDiT: add_{q,k,v}_proj, to_add_out), no other.
    targets, layers = family_for_pipeline(pipeline_class.__name__).lora_targets["denoiser"], {
        key.split(".lora_")[0] for key in saved}
    assert all(any(layer.endswith(target) for layer in layers) for target in targets)
    assert all(any(layer.endswith(target) for target in targets) for layer in layers)
    assert any("lora_B" in key and value.abs().sum() > 0 for key, value in saved.items())  # it trained
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("critic_loss" in row and np.isfinite(row["loss"]) for row in rows)

    ours = generate(str(out), [PROMPT], tmp_path / "images", num_images=1, num_inference_steps=2, resolution=64)
    record = json.loads((tmp_path / "images" / "generation.json").read_text())
    assert record["guidance_scale"] == guidance  # the family's own default (SD3 7, FLUX-dev 3.5), not SD's 7.5
    stock = pipeline_class.from_pretrained(stock_folder)
    base = stock_image(stock)
    stock.load_lora_weights(str(out))
    expected = stock_image(stock)
    assert np.abs(np.asarray(Image.open(ours[0])).astype(int) - expected).max() <= 1
    assert np.abs(base - expected).max() > 0  # the adapters change the images


def test_dreambooth_trains_the_transformer_only_and_saves_a_stock_folder(family, stock_folder, subject_dir, tmp_path):
    pipeline_class = FAMILIES[family][1]
    out = train(subject_dir, tmp_path / "db", stock_folder, "method.name=dreambooth", "objective.name=baseline")
    trained, base = pipeline_class.from_pretrained(out), pipeline_class.from_pretrained(stock_folder)
    moved = [k for k, v in trained.transformer.state_dict().items() if not torch.equal(v, base.transformer.state_dict()[k])]
    assert moved
    encoders = [name for name in ("text_encoder", "text_encoder_2", "text_encoder_3") if hasattr(base, name)]
    for name in (*encoders, "vae"):  # T5 never trains
        for key, value in getattr(trained, name).state_dict().items():
            assert torch.equal(value, getattr(base, name).state_dict()[key]), f"{name}.{key}"


def test_direct_objective_runs(family, subject_dir, tmp_path):
    out = train(subject_dir, tmp_path / "direct", FAMILIES[family][0], "method.name=lora", "objective.name=direct",
                "data.prior_preservation=false")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("reward" in row and np.isfinite(row["loss"]) for row in rows)


@pytest.mark.parametrize("overrides, message", [
    (["method.name=custom_diffusion", "data.identifier=<new1>", "data.instance_prompt=a photo of <new1> dog"],
     "use method.name=lora or method.name=dreambooth"),
    (["method.name=dreambooth", "method.train_text_encoder=true"], "set method.train_text_encoder=false"),
    (["data.resolution=60"], "data.resolution=60 is not a multiple of 8"),
], ids=["custom-diffusion", "text-encoder", "resolution"])
def test_refusals_are_one_line_and_write_nothing(family, overrides, message, subject_dir, tmp_path, capsys):
    model = FAMILIES[family][0]
    assert run_cli(tiny_args(subject_dir, tmp_path / "run", f"model.pretrained={model}", *TRAIN, *overrides)) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert not (tmp_path / "run").exists()



@pytest.mark.parametrize("model", ["tiny-flux", "tiny-zimage"])
def test_fp16_is_refused_where_the_family_overflows(model, subject_dir, tmp_path, capsys):
    args = tiny_args(subject_dir, tmp_path / "run", f"model.pretrained={model}", *TRAIN, "train.mixed_precision=fp16")
    assert run_cli(args) == 2
    error = capsys.readouterr().err.strip()
    assert "train.mixed_precision=fp16" in error and "use train.mixed_precision=bf16" in error
    assert len(error.splitlines()) == 1 and not (tmp_path / "run").exists()


FLUX_RESUME = ["model.pretrained=tiny-flux", "method.name=lora", "validation.every=0", "train.lr=1e-3",
               "train.max_steps=5", "train.checkpoint_every=2", "train.lr_scheduler=cosine",
               "train.lr_warmup_steps=2", "objective.name=dpg", "objective.reward=look_forward",
               "data.num_class_images=2"]


def result_files(folder):
    return {str(path.relative_to(folder)): load_file(path) for path in folder.rglob("*.safetensors")
            if path.relative_to(folder).parts[0] not in ("checkpoints", "samples", "best")}


def test_flux_interrupted_and_resumed_run_matches_an_uninterrupted_one(subject_dir, tmp_path, monkeypatch):
    """Float 1000σ timesteps, packed latents and the critic resume bitwise, as the DDPM families do."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_cli(tiny_args(subject_dir, straight, *FLUX_RESUME)) == 0
    recorder = StepRecorder(monkeypatch, interrupt_at=3)
    assert run_cli(tiny_args(subject_dir, resumed, *FLUX_RESUME)) == 130
    recorder.steps.clear()
    recorder.interrupt_at = None
    assert run_cli(tiny_args(subject_dir, resumed, *FLUX_RESUME, "train.resume=latest")) == 0
    assert recorder.steps == [2, 3, 4]
    expected, got = result_files(straight), result_files(resumed)
    assert {"pytorch_lora_weights.safetensors", "critic.safetensors"} <= expected.keys() == got.keys()
    for name, tensors in expected.items():
        for key, value in tensors.items():
            assert torch.equal(value, got[name][key]), f"{name}:{key}"
    assert (straight / "metrics.jsonl").read_text() == (resumed / "metrics.jsonl").read_text()


@pytest.mark.slow
def test_flux_two_cpu_processes_match_one(subject_dir, tmp_path):
    """Two gloo processes with batch 1 each see what one process with batch 2 sees (test_distributed.py's
    check, on the packed flow family)."""
    import os
    import shutil
    import socket
    import subprocess
    import sys

    run = ["model.pretrained=tiny-flux", "method.name=lora", "train.max_steps=3", "validation.every=0",
           "data.prior_preservation=true", "critic.residual_prior=false", "data.num_class_images=2"]
    single, double = tmp_path / "single", tmp_path / "double"
    assert run_cli(tiny_args(subject_dir, single, *run, "train.batch_size=2")) == 0
    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "rewardbooth", *tiny_args(subject_dir, double, *run, "train.batch_size=1")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [[json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
            for folder in (single, double)]
    for single_row, double_row in zip(*rows, strict=True):
        for key in ("loss", "critic_loss", "reward"):
            assert double_row[key] == pytest.approx(single_row[key], rel=1e-5), key
    a, b = (load_file(folder / "pytorch_lora_weights.safetensors") for folder in (single, double))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-3)


def test_grpo_trains_lora_with_the_pipelines_own_schedule(family, stock_folder, subject_dir, tmp_path, monkeypatch):
    """Rollout policy gradients on a flow family: Flow-GRPO's SDE step over the schedule the stock pipeline
    samples with at this resolution (SD3's static shift, FLUX's token-count shift); only the policy term trains
    (instance weight 0) and it moves the adapters, with the KL anchor to the base."""
    model, pipeline_class, *_ = FAMILIES[family]
    stock = pipeline_class.from_pretrained(stock_folder)
    stock_image(stock, steps=3)
    process = load_model(ModelConfig(model)).process
    schedule = stock.scheduler.timesteps.float()
    torch.testing.assert_close(process.sampling_timesteps(3, (16, 16)), schedule)
    seen, step = [], FlowProcess.stochastic_step

    def recorded(self, x_t, action, t, *args, **kwargs):
        seen.append(t[0].item())
        return step(self, x_t, action, t, *args, **kwargs)

    monkeypatch.setattr(FlowProcess, "stochastic_step", recorded)
    out = train(subject_dir, tmp_path / "grpo", model, "method.name=lora", "objective.name=grpo",
                "objective.instance_weight=0", "data.prior_preservation=false", "objective.reward=look_forward",
                "objective.grpo.group_size=2", "objective.grpo.num_steps=3", "objective.grpo.trained_steps=1",
                "objective.grpo.eta=0.7", "objective.grpo.kl_weight=0.04")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(row["skipped"] == 0 and np.isfinite(row["loss"]) for row in rows)
    assert all(row["grpo/ratio"] == pytest.approx(1, abs=1e-3) and row["grpo/kl"] >= 0 for row in rows)
    assert all(row["grpo/advantage_abs"] > 0 for row in rows)
    assert sorted(set(seen), reverse=True) == pytest.approx(schedule.tolist())  # the run's own rollouts, 64 px
    adapters = load_file(out / "pytorch_lora_weights.safetensors")
    assert any(value.abs().max() > 0 for key, value in adapters.items() if "lora_B" in key)


def test_the_feature_critic_carries_a_black_box_on_a_flow_family(subject_dir, tmp_path):
    """The feature critic reads x0_hat through the family's own decoder: on tiny-flux (packed latents, σ time
    values) it fits the black box's values and logs its probes, as on SD."""
    out = train(subject_dir, tmp_path / "feature", "tiny-flux", "method.name=lora", "objective.name=dpg",
                "critic.name=feature", "critic.input=prediction", "critic.encoder=toy_encoder",
                "objective.reward=toy_identity_blackbox", "data.prior_preservation=false")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(row["critic_loss"]) and "critic/trust" in row for row in rows)
    assert (out / "critic.safetensors").is_file()
