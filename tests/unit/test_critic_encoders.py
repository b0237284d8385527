"""The frozen image encoders a feature critic reads: loaded from a folder the real way, unit features,
differentiable in the image, frozen, and refused in one line when the folder holds another model."""

import pytest
import torch

from helpers import reachable_tensors, save_tiny_clip, save_tiny_vit
from rewardbooth.core.errors import UserError
from rewardbooth.rewards.encoders import encoders, make_encoder

SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


def save_tiny_dinov2(folder):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(image_size=32, patch_size=8, **SIZES)).save_pretrained(folder)
    return folder


def save_tiny_siglip(folder):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    SiglipVisionModel(SiglipVisionConfig(image_size=32, patch_size=8, **SIZES)).save_pretrained(folder)
    return folder


FOLDERS = {"dino": save_tiny_vit, "dinov2": save_tiny_dinov2, "clip": save_tiny_clip, "siglip": save_tiny_siglip,
           "toy_encoder": None}


def test_every_registered_encoder_is_tested_here():
    assert set(encoders.names()) == set(FOLDERS)


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_unit_features_differentiable_in_the_image_with_frozen_weights(name, tmp_path):
    save = FOLDERS[name]
    encoder = make_encoder(name, torch.device("cpu"), str(save(tmp_path / name)) if save else None)
    images = torch.rand(3, 3, 48, 40, requires_grad=True)
    features = encoder(images)
    assert features.shape == (3, encoder.dim) and features.dtype == torch.float32
    assert torch.allclose(features.norm(dim=1), torch.ones(3), atol=1e-5)
    features[:, 0].sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    weights = [t for t in reachable_tensors(encoder) if t.numel() > 1]
    assert weights and not any(t.requires_grad for t in weights)  # frozen: a gradient reaches the image only


def test_a_folder_of_another_model_is_refused_in_one_line(tmp_path):
    folder = save_tiny_vit(tmp_path / "vit")
    with pytest.raises(UserError, match="not a Dinov2Model checkpoint") as error:
        make_encoder("dinov2", torch.device("cpu"), str(folder))
    assert "\n" not in str(error.value)
