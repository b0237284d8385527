"""The model card's text: Hub front matter (base_model only for a hub id, no license), and a body that names
the run's trigger, method, objective, reward, critic and hyperparameters, with the stock loading calls."""

import yaml

from rewardbooth.core.config import load_config
from rewardbooth.methods.custom_diffusion import CustomDiffusion
from rewardbooth.methods.dreambooth import DreamBooth
from rewardbooth.methods.lora import LoRA
from rewardbooth.models.loaders import hub_id_of
from rewardbooth.training.model_card import render_card


def card(*overrides, loading_code="pipeline = DiffusionPipeline.from_pretrained(here)"):
    config = load_config("default", ["data.instance_prompt=a photo of zwx cat", "data.identifier=zwx",
                                     "train.max_steps=7", "train.lr=3e-4", "data.resolution=256", *overrides])
    text = render_card(config, "stable-diffusion-xl", 7, loading_code, ["samples/step_000007.png"])
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), front, body


def test_front_matter_is_the_hubs_and_leaves_the_license_to_the_user():
    fields, front, _ = card("model.pretrained=stabilityai/stable-diffusion-xl-base-1.0", "method.name=lora")
    assert fields["base_model"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert fields["library_name"] == "diffusers" and fields["instance_prompt"] == "a photo of zwx cat"
    assert {"text-to-image", "diffusers", "rewardbooth", "lora", "stable-diffusion-xl"} <= set(fields["tags"])
    assert "license" not in fields and "# license:" in front


def test_base_model_is_left_out_unless_the_base_is_a_hub_id(tmp_path):
    assert "base_model" not in card("model.pretrained=tiny")[0]
    assert "base_model" not in card(f"model.pretrained={tmp_path}")[0]
    assert hub_id_of("tiny") is None and hub_id_of(str(tmp_path)) is None and hub_id_of("pkg.mod:factory") is None
    assert hub_id_of("./runs/base") is None and hub_id_of("owner/name") == "owner/name"
    assert "lora" not in card("method.name=dreambooth")[0]["tags"]


def test_body_names_the_trigger_method_objective_reward_critic_and_settings():
    _, _, body = card("method.name=lora", "method.lora.rank=8", "objective.name=dpg", "critic.name=pooled")
    for words in ("`zwx`", "a photo of zwx cat", "method: `lora` (rank 8", "objective: `dpg`", "reward: `",
                  "critic: `pooled`", "steps: 7", "learning rate 0.0003", "resolution: 256 px",
                  "`stable-diffusion-xl`", "[config.yaml](config.yaml)", "](samples/step_000007.png)",
                  "pipeline = DiffusionPipeline.from_pretrained(here)", "image = pipeline('a photo of zwx cat')"):
        assert words in body, words
    assert "critic:" not in card("objective.name=baseline")[2]


def test_every_method_says_how_stock_diffusers_loads_it(tmp_path):
    (tmp_path / "<new1>.safetensors").write_bytes(b"")
    assert LoRA.loading_code("owner/base", tmp_path).splitlines() == [
        "pipeline = DiffusionPipeline.from_pretrained('owner/base')",
        "pipeline.load_lora_weights(here, weight_name='pytorch_lora_weights.safetensors')"]
    assert DreamBooth.loading_code("owner/base", tmp_path) == "pipeline = DiffusionPipeline.from_pretrained(here)"
    assert CustomDiffusion.loading_code("owner/base", tmp_path).splitlines()[1:] == [
        "pipeline.unet.load_attn_procs(here, weight_name='pytorch_custom_diffusion_weights.safetensors')",
        "pipeline.load_textual_inversion(here, weight_name='<new1>.safetensors')"]
