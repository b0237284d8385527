"""One contract every model loader passes, plus the real diffusers-folder path on a saved tiny model."""

import json

import pytest
import torch

from rewardbooth.core.config import ModelConfig
from rewardbooth.core.errors import UserError
from rewardbooth.models import ModelParts, load_model, loaders

FROM_DISK = {"diffusers", "toy", "toy-flow"}  # loaders that read weights from a folder


def load_by_name(name, tiny_folder):
    return load_model(ModelConfig(str(tiny_folder) if name == "diffusers" else name))


@pytest.mark.parametrize("name", loaders.names())
def test_loader_contract(name, tiny_folder):
    # Architectures built in code are built on the meta device: the contract is about shapes and wiring, not
    # weights, and sd15-random would otherwise allocate 4 GB.
    with torch.device("cpu") if name in FROM_DISK else torch.device("meta"):
        parts = load_by_name(name, tiny_folder)
    assert isinstance(parts, ModelParts)
    assert parts.denoiser is getattr(parts, parts.denoiser_name)
    assert parts.latent_channels == parts.vae.config.latent_channels  # unpacked C (FLUX packs inside denoise)
    assert parts.text_embedding_dim > 0
    for tokenizer, encoder in zip(parts.tokenizers, parts.text_encoders, strict=True):
        assert len(tokenizer) <= encoder.config.vocab_size
        if hasattr(encoder.config, "max_position_embeddings"):  # CLIP's; T5's positions are relative
            assert tokenizer.model_max_length == encoder.config.max_position_embeddings
    flow = parts.prediction_type == "flow_prediction"
    assert flow or parts.prediction_type in {"epsilon", "v_prediction", "sample"}
    assert flow == (type(parts.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler")
    assert parts.process.num_train_timesteps == 1000
    if parts.family.name == "stable-diffusion-xl":  # the added "text_time" embedding takes 6 size ids and the pooled projection
        expected = 6 * parts.unet.config.addition_time_embed_dim + parts.text_encoder_2.config.projection_dim
        assert parts.unet.config.projection_class_embeddings_input_dim == expected


def test_sdxl_random_has_the_sdxl_unet_size():
    with torch.device("meta"):
        parts = load_model(ModelConfig("sdxl-random"))
    num_parameters = sum(p.numel() for p in parts.unet.parameters())
    assert 2.55e9 < num_parameters < 2.6e9  # SDXL 1.0 base's UNet has 2.567 B parameters
    assert parts.text_embedding_dim == 2048 and parts.text_encoder_2.config.projection_dim == 1280


def test_sd15_random_has_the_sd15_unet_size():
    with torch.device("meta"):
        parts = load_model(ModelConfig("sd15-random"))
    num_parameters = sum(p.numel() for p in parts.unet.parameters())
    assert 855e6 < num_parameters < 865e6  # SD-1.5's UNet has 859.5 M parameters
    assert parts.vae_scale_factor == 8


def test_flux_random_has_flux_dev_sizes():
    with torch.device("meta"):
        parts = load_model(ModelConfig("flux-random"))
    num_parameters = sum(p.numel() for p in parts.transformer.parameters())
    assert 11.85e9 < num_parameters < 11.95e9  # FLUX.1-dev's transformer: 11.9 B
    assert 4.7e9 < sum(p.numel() for p in parts.text_encoder_2.parameters()) < 4.8e9  # T5-XXL's encoder: 4.76 B
    assert parts.latent_channels == 16 and parts.family.native_resolution(parts) == 1024


def test_sd35m_random_has_sd35_medium_sizes():
    with torch.device("meta"):
        parts = load_model(ModelConfig("sd35m-random"))
    transformer = parts.transformer
    # 2.47 B in SD3.5-medium's checkpoint, 0.23 B of which is the 384 x 384 position table (a buffer here).
    weights = sum(p.numel() for p in transformer.parameters()) + transformer.pos_embed.pos_embed.numel()
    assert 2.4e9 < weights < 2.5e9
    assert parts.latent_channels == 16 and parts.text_embedding_dim == 4096


def test_tiny_is_deterministic():
    a, b = load_model(ModelConfig("tiny")), load_model(ModelConfig("tiny"))
    for (name, x), (_, y) in zip(a.unet.state_dict().items(), b.unet.state_dict().items()):
        assert torch.equal(x, y), name


def test_tiny_generates_and_reloads_offline(tiny_folder):
    parts = load_model(ModelConfig(str(tiny_folder)))
    image = parts.pipeline()("a photo of sks dog", num_inference_steps=2, height=64, width=64,
                             generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)
    original = load_model(ModelConfig("tiny"))
    for (name, x), (_, y) in zip(original.unet.state_dict().items(), parts.unet.state_dict().items()):
        assert torch.equal(x, y), name


def test_v_prediction_is_read_from_the_scheduler_config(tiny_folder, tmp_path):
    import shutil

    folder = tmp_path / "v-model"
    shutil.copytree(tiny_folder, folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    scheduler_config = json.loads(config_file.read_text())
    scheduler_config["prediction_type"] = "v_prediction"
    config_file.write_text(json.dumps(scheduler_config))
    parts = load_model(ModelConfig(str(folder)))
    assert parts.prediction_type == "v_prediction"
    assert parts.process.prediction_type == "v_prediction"


@pytest.mark.parametrize("pretrained, message", [
    ("/no/such/folder", "does not exist"),  # a path is never sent to the hub
    ("no-such-org/no-such-model", "nor in this machine's hub cache"),  # the suite runs with HF_HUB_OFFLINE=1
])
def test_unreadable_models_are_one_line_errors(pretrained, message):
    with pytest.raises(UserError, match=message) as error:
        load_model(ModelConfig(pretrained))
    assert "\n" not in str(error.value)


def test_folder_without_model_index(tmp_path):
    with pytest.raises(UserError, match="no model_index.json"):
        load_model(ModelConfig(str(tmp_path)))
