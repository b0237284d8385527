"""The image-backbone scorers (dino, clip_image, clip_text, face) and their preprocessing.

Backbones are tiny random models of the real transformers classes, saved to disk and loaded through the real
`from_pretrained` path; expected scores are computed by hand from the same weights. They are scored as image
scorers (`score_images`), as selection and the evaluator call them (the trainer's adapter is in the contract). The face reward runs the
real dlib models on a real photo (scikit-image's bundled astronaut).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import rewardbooth.rewards.backbones  # noqa: F401  (registers dino, clip_image, clip_text)
from helpers import save_tiny_clip, save_tiny_vit
from rewardbooth.core.errors import UserError
from rewardbooth.rewards import RewardSetup, face, make_scorer
from rewardbooth.rewards.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    center_crop,
    clip_preprocess,
    dino_preprocess,
    resize_short_side,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    return save_tiny_vit(tmp_path_factory.mktemp("tiny-dino"))


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def rand_images(count, height, width, seed):
    return torch.rand(count, 3, height, width, generator=torch.Generator().manual_seed(seed))


def setup_for(references, identifier="sks"):
    return RewardSetup(reference_images=references, identifier=identifier, device=CPU)


def score(reward, images, prompts=None):
    return reward.score_images(images, prompts or ["a photo of sks dog"] * len(images))


def by_hand_normalized(images, mean, std):
    return (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# --- preprocessing -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("height,width", [(512, 512), (300, 400), (600, 250)])
def test_dino_preprocess_gives_the_crop_with_imagenet_normalisation(height, width):
    gray = torch.full((2, 3, height, width), 0.5)
    pixels = dino_preprocess(gray)
    assert pixels.shape == (2, 3, 224, 224) and pixels.dtype == torch.float32
    expected = [(0.5 - mean) / std for mean, std in zip(IMAGENET_MEAN, IMAGENET_STD)]
    torch.testing.assert_close(pixels, torch.tensor(expected).view(1, 3, 1, 1).expand_as(pixels))


def test_clip_preprocess_gives_the_crop_with_clip_normalisation():
    pixels = clip_preprocess(torch.full((1, 3, 256, 320), 0.5))
    assert pixels.shape == (1, 3, 224, 224)
    expected = [(0.5 - mean) / std for mean, std in zip(CLIP_MEAN, CLIP_STD)]
    torch.testing.assert_close(pixels, torch.tensor(expected).view(1, 3, 1, 1).expand_as(pixels))


def test_sizes_follow_torchvision():
    """Resize truncates the long side (int(256 * 400 / 300) = 341); CenterCrop rounds its offsets."""
    assert resize_short_side(torch.rand(1, 3, 300, 400), 256).shape[-2:] == (256, 341)
    assert resize_short_side(torch.rand(1, 3, 400, 300), 256).shape[-2:] == (341, 256)
    grid = torch.arange(5 * 8, dtype=torch.float32).view(1, 1, 5, 8)
    assert torch.equal(center_crop(grid, 3), grid[..., 1:4, 2:5])  # top round(1.0), left round(2.5) = 2
    assert dino_preprocess(torch.rand(1, 3, 64, 64), crop_size=32).shape[-2:] == (32, 32)  # via 37


@pytest.mark.parametrize("shape,size", [((97, 131), 64), ((16, 20), 64), ((131, 97), 37)])
def test_resize_matches_pil_bicubic_within_a_grey_level(shape, size):
    """The worst case for bicubic overshoot, uniform noise, downscaled and upscaled, against PIL's resize."""
    pixels = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ours = resize_short_side(torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255, size)
    expected_size = tuple(ours.shape[-1:-3:-1])  # PIL sizes are (width, height)
    pil = np.asarray(Image.fromarray(pixels).resize(expected_size, Image.BICUBIC), dtype=np.float32) / 255
    difference = np.abs(ours[0].permute(1, 2, 0).numpy() - pil)
    assert difference.max() <= 1.5 / 255 and difference.mean() <= 0.5 / 255


def test_preprocessing_passes_gradients():
    images = torch.rand(2, 3, 48, 40, requires_grad=True)
    (dino_preprocess(images, crop_size=32).sum() + clip_preprocess(images, size=32).sum()).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


# --- dino and clip_image: mean pairwise cosine to the references ---------------------------------------------

def test_dino_is_the_mean_pairwise_cosine_of_final_cls_features(vit_folder):
    from transformers import ViTModel

    references = rand_images(3, 37, 37, seed=1)  # 37 px: DINO's pipeline for a 32 px ViT only crops
    samples = torch.cat([references[1:2], rand_images(2, 37, 37, seed=2)])
    output = score(make_scorer("dino", setup_for(references), model=str(vit_folder)), samples)

    vit = ViTModel.from_pretrained(vit_folder, add_pooling_layer=False).eval()
    with torch.no_grad():
        def features(images):  # crop offset round(2.5) = 2, then ImageNet normalisation
            pixels = by_hand_normalized(images[..., 2:34, 2:34], IMAGENET_MEAN, IMAGENET_STD)
            return F.normalize(vit(pixel_values=pixels).last_hidden_state[:, 0], dim=-1)

        cosines = features(samples) @ features(references).T  # (3 samples, 3 references)
    assert output.scores.shape == (3,) and output.scores.dtype == torch.float32
    torch.testing.assert_close(output.scores, cosines.mean(dim=1))
    torch.testing.assert_close(output.diagnostics["max_cosine"], cosines.amax(dim=1))
    assert output.diagnostics["max_cosine"][0] == pytest.approx(1.0, abs=1e-5)  # a reference matches itself
    assert (output.diagnostics["max_cosine"][1:] < 0.9999).all()


def test_clip_image_is_the_mean_pairwise_cosine_of_clip_image_embeddings(clip_folder):
    from transformers import CLIPModel

    references = rand_images(2, 32, 32, seed=3)  # the tiny CLIP's own size: only normalisation applies
    samples = torch.cat([references[:1], rand_images(2, 32, 32, seed=4)])
    output = score(make_scorer("clip_image", setup_for(references), model=str(clip_folder)), samples)

    clip = CLIPModel.from_pretrained(clip_folder).eval()
    tokens = torch.tensor([[clip.config.text_config.bos_token_id, clip.config.text_config.eos_token_id]])
    with torch.no_grad():
        def embeds(images):  # CLIPModel's own forward normalises image_embeds
            pixels = by_hand_normalized(images, CLIP_MEAN, CLIP_STD)
            return clip(input_ids=tokens, pixel_values=pixels).image_embeds

        cosines = embeds(samples) @ embeds(references).T
    torch.testing.assert_close(output.scores, cosines.mean(dim=1))
    assert output.diagnostics["max_cosine"][0] == pytest.approx(1.0, abs=1e-5)


def test_clip_text_scores_the_prompt_without_the_identifier(clip_folder):
    from transformers import CLIPModel, CLIPTokenizer

    images = rand_images(3, 32, 32, seed=5)
    prompts = ["a photo of sks dog", "a sks dog on the beach", "a photo of sks dog"]
    reward = make_scorer("clip_text", setup_for(images, identifier="sks"), model=str(clip_folder))
    output = score(reward, images, prompts)
    assert output.scores.shape == (3,) and torch.isfinite(output.scores).all()

    clip = CLIPModel.from_pretrained(clip_folder).eval()
    tokenizer = CLIPTokenizer.from_pretrained(clip_folder)
    pixels = by_hand_normalized(images, CLIP_MEAN, CLIP_STD)

    def cosines(texts):
        tokens = tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            result = clip(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                          pixel_values=pixels)
        return (result.image_embeds * result.text_embeds).sum(dim=-1)

    without = ["a photo of dog", "a dog on the beach", "a photo of dog"]
    torch.testing.assert_close(output.scores, cosines(without))
    assert not torch.allclose(output.scores, cosines(prompts), atol=1e-4)
    assert sorted(reward._text_embeddings) == ["a dog on the beach", "a photo of dog"]  # one per distinct text


# --- what every backbone reward promises -----------------------------------------------------------------------

BACKBONE_REWARDS = [("dino", "vit_folder"), ("clip_image", "clip_folder"), ("clip_text", "clip_folder")]


@pytest.mark.parametrize("name,folder", BACKBONE_REWARDS)
def test_deterministic_split_invariant_and_differentiable_in_the_image_only(name, folder, request):
    """The gradient reaches the decoded image (direct mode, critic diagnostics), never the frozen backbone."""
    folder = request.getfixturevalue(folder)
    reward = make_scorer(name, setup_for(rand_images(2, 48, 64, seed=6)), model=str(folder))
    images = rand_images(5, 48, 64, seed=7)
    prompts = [f"a sks dog number {index % 2}" for index in range(5)]
    pixels = images.clone().requires_grad_(True)
    whole = reward.score_images(pixels, prompts)
    assert reward.differentiable is True
    whole.scores.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    extractor = getattr(reward, "features", None) or getattr(reward.embed_fn, "__self__", reward.embed_fn)
    parameters = [p for module in vars(extractor).values() if isinstance(module, torch.nn.Module)
                  for p in module.parameters()]
    assert parameters and all(p.grad is None for p in parameters)
    assert torch.equal(whole.scores.detach(), score(reward, images, prompts).scores)
    halves = torch.cat([score(reward, images[:2], prompts[:2]).scores, score(reward, images[2:], prompts[2:]).scores])
    torch.testing.assert_close(whole.scores, halves, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["dino", "clip_image", "clip_text"])
def test_a_missing_model_folder_is_one_line_naming_the_folder_and_the_option(name, tmp_path):
    missing = tmp_path / "no-such-backbone"
    with pytest.raises(UserError) as error:
        make_scorer(name, setup_for(rand_images(1, 32, 32, seed=0)), model=str(missing))
    message = str(error.value)
    assert str(missing) in message and "objective.reward_options" in message and "\n" not in message


def test_a_folder_of_another_architecture_is_refused(clip_folder):
    with pytest.raises(UserError, match="not a ViTModel checkpoint"):
        make_scorer("dino", setup_for(rand_images(1, 32, 32, seed=0)), model=str(clip_folder))


def test_clip_text_refuses_a_folder_without_a_tokenizer(tmp_path):
    folder = save_tiny_clip(tmp_path / "clip-without-tokenizer", with_tokenizer=False)
    with pytest.raises(UserError, match="no CLIP tokenizer"):
        make_scorer("clip_text", setup_for(rand_images(1, 32, 32, seed=0)), model=str(folder))


def test_an_unknown_dtype_is_refused(vit_folder):
    with pytest.raises(UserError, match="float32, float16, bfloat16"):
        make_scorer("dino", setup_for(rand_images(1, 32, 32, seed=0)), model=str(vit_folder), dtype="fp8")


# --- face: the real dlib models on a real photo --------------------------------------------------------------

def as_tensor(pixels):
    """(H, W, 3) uint8 -> (1, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="module")
def astronaut():
    pytest.importorskip("dlib")
    from skimage.data import astronaut

    return as_tensor(astronaut())  # (1, 3, 512, 512): Eileen Collins, a frontal face


@pytest.fixture(scope="module")
def face_reward(astronaut):
    return make_scorer("face", setup_for(astronaut))


@pytest.fixture(scope="module")
def no_face(astronaut):
    from skimage.data import coffee

    return F.interpolate(as_tensor(coffee()), size=(512, 512), mode="bilinear", antialias=True)  # a coffee cup


def test_face_same_photo_scores_one_and_a_photo_without_a_face_scores_no_face_score(face_reward, astronaut, no_face):
    output = score(face_reward, torch.cat([astronaut, no_face]))
    assert output.scores.dtype == torch.float32 and torch.isfinite(output.scores).all()
    assert output.diagnostics["face_found"].tolist() == [1.0, 0.0]
    assert output.diagnostics["distance"][0] == pytest.approx(0.0, abs=1e-6)
    assert output.scores.tolist() == pytest.approx([1.0, 0.0], abs=1e-6)
    assert output.diagnostics["distance"][1] == 1.0  # the distance the no-face score stands for, never NaN


def test_face_mirrored_smaller_copy_is_the_same_person(face_reward, astronaut, no_face):
    mirrored = F.interpolate(astronaut.flip(-1), size=(256, 256), mode="bicubic", antialias=True).clamp(0, 1)
    gray = torch.full_like(mirrored, 0.5)
    output = score(face_reward, torch.cat([mirrored, gray]))
    assert output.diagnostics["face_found"].tolist() == [1.0, 0.0]
    assert output.diagnostics["distance"][0] < 0.6  # dlib's same-person threshold
    assert output.scores[0] > output.scores[1]
    halves = torch.cat([score(face_reward, mirrored).scores, score(face_reward, gray).scores])
    assert torch.equal(output.scores, halves)


def test_face_no_face_score_is_an_option(astronaut, no_face):
    reward = make_scorer("face", setup_for(astronaut), no_face_score=-1.0)
    output = score(reward, no_face)
    assert output.scores.tolist() == [-1.0] and output.diagnostics["distance"].tolist() == [2.0]


def test_face_refuses_references_without_a_face(astronaut, no_face):
    with pytest.raises(UserError, match="no face found in any of the 2 reference photos"):
        make_scorer("face", setup_for(torch.cat([no_face, torch.full_like(no_face, 0.5)])))


def test_face_without_its_models_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(face.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"rewardbooth\[face\]"):
        face.face_models_folder()


def test_clip_text_scores_prompt_only_states_by_their_own_prompt_without_a_reference(clip_folder):
    """A prompt-only row (objective.scene_share) has no reference latent: clip_text needs none, and scores
    decode(x0_hat) against the row's scene prompt, with a gradient (objective.name=direct)."""
    from rewardbooth.rewards import make_reward
    from rewardbooth.training.objectives.prompt_only import row_scorer

    prompts = ["a sks dog sleeping on a sofa", "a photo of sks dog", "a sks dog at a picnic"]
    setup = setup_for(rand_images(2, 32, 32, seed=6), identifier="sks")
    reward = make_reward("clip_text", setup, model=str(clip_folder))
    x0_hat = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7)).requires_grad_(True)
    scorer = row_scorer(torch.zeros(3, 3, 32, 32), prompts, torch.tensor([True, False, True]), torch.sigmoid)
    output = scorer(reward, x0_hat)
    assert [context.x0 is None for _, context in scorer.groups] == [False, True]
    expected = make_scorer("clip_text", setup, model=str(clip_folder)).score_images(torch.sigmoid(x0_hat), prompts)
    torch.testing.assert_close(output.scores, expected.scores)
    output.scores[[0, 2]].sum().backward()
    assert x0_hat.grad[[0, 2]].abs().sum() > 0 and x0_hat.grad[1].abs().sum() == 0
