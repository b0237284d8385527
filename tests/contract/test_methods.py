"""The base-method contract: every registered method trains end to end under every objective, and its saved
result reloads with stock diffusers calls and changes what the base model draws (CPU, no network)."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from helpers import load_custom_diffusion, load_dreambooth, load_lora, run_cli, tiny_args
from rewardbooth.methods import methods

# The stock diffusers calls a user makes to load each method's result; a new method must add its own.
STOCK_LOADERS = {"dreambooth": load_dreambooth, "lora": load_lora, "custom_diffusion": load_custom_diffusion}
TRAIN = ["train.max_steps=3", "validation.every=0", "train.lr=1e-3"]
METHOD_ARGS = {"custom_diffusion": ["data.identifier=<new1>", "data.instance_prompt=a photo of <new1> dog"]}
PROMPT = {"custom_diffusion": "a photo of <new1> dog"}


def draw(pipeline, prompt="a photo of sks dog"):
    pipeline.set_progress_bar_config(disable=True)
    return pipeline(prompt, num_inference_steps=2, height=64, width=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]


def test_every_method_has_a_stock_loader():
    assert set(methods.names()) == set(STOCK_LOADERS)


@pytest.mark.parametrize("objective", ["baseline", "dpg"])
@pytest.mark.parametrize("method", sorted(STOCK_LOADERS))
def test_result_reloads_with_stock_diffusers_and_changes_the_images(method, objective, tiny_folder, subject_dir,
                                                                      tmp_path):
    out = tmp_path / "run"
    assert run_cli(tiny_args(subject_dir, out, f"model.pretrained={tiny_folder}", f"method.name={method}",
                             f"objective.name={objective}", *TRAIN, *METHOD_ARGS.get(method, []))) == 0
    prompt = PROMPT.get(method, "a photo of sks dog")
    trained = draw(STOCK_LOADERS[method](tiny_folder, out), prompt)
    base = StableDiffusionPipeline.from_pretrained(tiny_folder)
    assert np.abs(trained - draw(base, prompt.replace("<new1>", "sks"))).max() > 1e-3
    # `rewardbooth generate OUTPUT` applies the result the same way.
    assert run_cli(["generate", str(out), "--prompt", prompt, "--num-images", "1", "--num-inference-steps", "2", "--output",
                    str(tmp_path / "images")]) == 0


def test_lora_saves_only_adapters_and_generate_finds_the_base_model(tiny_folder, subject_dir, tmp_path, capsys):
    out = tmp_path / "lora"
    assert run_cli(tiny_args(subject_dir, out, f"model.pretrained={tiny_folder}", "method.name=lora",
                             "method.train_text_encoder=true", "method.lora.rank=2", *TRAIN)) == 0
    saved = load_file(out / "pytorch_lora_weights.safetensors")
    assert saved and all(".lora" in key for key in saved)
    assert {key.split(".")[0] for key in saved} == {"unet", "text_encoder"}
    assert all(min(tensor.shape) <= 2 for tensor in saved.values())  # rank 2
    assert not (out / "unet").exists()  # adapters only, no copy of the base weights
    # `rewardbooth generate OUTPUT` reads the base model from config.yaml and applies the adapters.
    assert run_cli(["generate", str(out), "--prompt", "a photo of sks dog", "--num-images", "1", "--num-inference-steps", "2",
                    "--output", str(tmp_path / "images")]) == 0
    stock = load_lora(tiny_folder, out)
    stock.set_progress_bar_config(disable=True)
    expected = stock("a photo of sks dog", num_inference_steps=2, height=64, width=64, guidance_scale=7.5,
                     generator=torch.Generator().manual_seed(0)).images[0]
    from PIL import Image

    written = np.asarray(Image.open(tmp_path / "images" / "000_a-photo-of-sks-dog_00000.png"))
    assert np.abs(written.astype(int) - np.asarray(expected).astype(int)).max() <= 1


def test_lora_leaves_the_base_weights_untouched(subject_dir, tmp_path):
    from rewardbooth.core.config import load_config
    from rewardbooth.training.setup import build_run

    config = load_config("default", tiny_args(subject_dir, tmp_path / "x", "method.name=lora")[2:])
    run = build_run(config)
    trainable = {name for name, p in run.parts.unet.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert {id(p) for p in run.policy_parameters} == {id(p) for p in run.parts.unet.parameters() if p.requires_grad}


@pytest.mark.parametrize("denoiser_modules", [None, ["to_q"]], ids=["family-default", "from-config"])
def test_lora_targets_are_the_model_familys_unless_the_config_names_them(denoiser_modules, subject_dir, tmp_path):
    from rewardbooth.core.config import load_config
    from rewardbooth.training.setup import build_run

    chosen = [] if denoiser_modules is None else [f"method.lora.denoiser_modules={denoiser_modules}"]
    config = load_config("default", tiny_args(subject_dir, tmp_path / "x", "method.name=lora", *chosen)[2:])
    run = build_run(config)
    layers = {name.split(".lora_")[0] for name, p in run.parts.unet.named_parameters() if p.requires_grad}
    targets = tuple(denoiser_modules or run.parts.family.lora_targets["denoiser"])
    assert {next(t for t in targets if layer.endswith("." + t)) for layer in layers} == set(targets)


# What each method writes as its result (besides critic.safetensors): the resume test compares these bitwise.
def test_bad_lora_rank_is_a_user_error(subject_dir, tmp_path, capsys):
    assert run_cli(tiny_args(subject_dir, tmp_path / "bad", "method.name=lora", "method.lora.rank=0")) == 2
    assert "bad value 0 for method.lora.rank" in capsys.readouterr().err


def test_custom_diffusion_trains_only_cross_attention_kv_and_the_new_token(tiny_folder, subject_dir, tmp_path):
    from rewardbooth.core.config import ModelConfig
    from rewardbooth.models import load_model

    out = tmp_path / "cd"
    assert run_cli(tiny_args(subject_dir, out, f"model.pretrained={tiny_folder}", "method.name=custom_diffusion",
                             *METHOD_ARGS["custom_diffusion"], *TRAIN)) == 0
    saved = load_file(out / "pytorch_custom_diffusion_weights.safetensors")
    assert saved and all("attn2.processor.to_" in k and ("to_k_custom" in k or "to_v_custom" in k) for k in saved)
    base = load_model(ModelConfig(str(tiny_folder)))
    pipeline = load_custom_diffusion(tiny_folder, out)
    # Every base weight outside the custom processors is untouched; the processors' K/V moved.
    base_unet = base.unet.state_dict()
    for name, value in pipeline.unet.state_dict().items():
        if "custom_diffusion" not in name:
            assert torch.equal(value, base_unet[name]), name
    layer = next(k for k in saved if "to_k_custom" in k).removesuffix(".processor.to_k_custom_diffusion.weight")
    assert not torch.equal(saved[f"{layer}.processor.to_k_custom_diffusion.weight"], base_unet[f"{layer}.to_k.weight"])
    # The text encoder: every old row of the embedding table as it was, plus one new learned row.
    new_id = pipeline.tokenizer.convert_tokens_to_ids("<new1>")
    table = pipeline.text_encoder.get_input_embeddings().weight
    base_table = base.text_encoder.get_input_embeddings().weight
    assert new_id == len(base_table) and torch.equal(table[:new_id], base_table)
    assert torch.equal(table[new_id], load_file(out / "<new1>.safetensors")["<new1>"])


def test_custom_diffusion_refuses_an_existing_token_as_identifier(subject_dir, tmp_path):
    from rewardbooth.core.config import ModelConfig, load_config
    from rewardbooth.core.errors import UserError
    from rewardbooth.methods import make_method
    from rewardbooth.models import load_model

    parts = load_model(ModelConfig("tiny"))
    parts.tokenizer.add_tokens("<new1>")  # as if the identifier were a word the tokenizer already knows
    config = load_config("default", tiny_args(subject_dir, tmp_path, "method.name=custom_diffusion",
                                              *METHOD_ARGS["custom_diffusion"])[2:])
    with pytest.raises(UserError, match="already in the tokenizer"):
        make_method(parts, config)
