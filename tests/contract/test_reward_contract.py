"""One contract every registered reward passes: registering a reward enrolls it here.

Every reward as the trainer calls it (`make_reward`: an image scorer on decode(x0_hat)); every image scorer
also as selection and the evaluator call it (`make_scorer`, `score_images` on images).
"""

import functools

import pytest
import torch

from helpers import save_tiny_clip, save_tiny_vit
from rewardbooth.core.config import ModelConfig
from rewardbooth.models import load_model
from rewardbooth.models.families import LatentSpace
from rewardbooth.rewards import (
    OnDecodedImages,
    RewardContext,
    RewardOutput,
    RewardSetup,
    declared_kind,
    kind_of,
    make_reward,
    make_scorer,
    rewards,
)
from rewardbooth.training.batches import decode_latents


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    """A randomly initialised judge saved the real way: the contract is about plumbing, not accuracy."""
    from rewardbooth.toyworld.judge import Judge, save_judge

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("judge")
    save_judge(Judge(num_train_subjects=4), folder, report={})
    return folder


@pytest.fixture(scope="module")
def vae():
    return load_model(ModelConfig("tiny")).vae


@pytest.fixture(scope="module")
def backbone_dirs(tmp_path_factory):
    return {"vit": save_tiny_vit(tmp_path_factory.mktemp("vit")), "clip": save_tiny_clip(tmp_path_factory.mktemp("clip"))}


def options_for(name, judge_dir, backbone_dirs):
    """Every reward's backbone, as a user would point at it: tiny models of the real classes on disk."""
    return {"toy_identity": {"judge_dir": str(judge_dir)}, "toy_identity_blackbox": {"judge_dir": str(judge_dir)},
            "toy_alignment": {"judge_dir": str(judge_dir)},
            "dino": {"model": str(backbone_dirs["vit"])},
            "clip_image": {"model": str(backbone_dirs["clip"])},
            "clip_text": {"model": str(backbone_dirs["clip"])}}.get(name, {})


def references_for(name):
    if name == "face":  # a real face photo (scikit-image's astronaut), as the face reward needs one
        from skimage.data import astronaut

        return torch.from_numpy(astronaut()).permute(2, 0, 1)[None].float() / 255
    return torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def build(name, judge_dir, backbone_dirs, make=make_reward):
    if name == "face":
        pytest.importorskip("dlib")
    setup = RewardSetup(reference_images=references_for(name), identifier="sks", device=torch.device("cpu"))
    return make(name, setup, **options_for(name, judge_dir, backbone_dirs))


@pytest.fixture(params=rewards.names())
def reward_name(request):
    return request.param


@pytest.fixture
def reward(reward_name, judge_dir, backbone_dirs):
    return build(reward_name, judge_dir, backbone_dirs)


def context_for(x0, vae, prompts=None):
    return RewardContext(x0=x0, prompts=prompts or ["a photo of sks dog"] * len(x0),
                         decode=functools.partial(decode_latents, vae, LatentSpace.of(vae)))


def batch(size=6):
    generator = torch.Generator().manual_seed(2)
    return torch.randn(size, 4, 16, 16, generator=generator), torch.randn(size, 4, 16, 16, generator=generator)


def scores_of(reward, x0_hat, context):
    output = reward(x0_hat, context)
    assert isinstance(output, RewardOutput), "built-in rewards return a RewardOutput"
    for name, values in output.diagnostics.items():
        assert values.shape == output.scores.shape and values.dtype == torch.float32, name
        assert torch.isfinite(values).all(), name
    return output.scores


def test_one_finite_float32_score_per_sample(reward, vae):
    x0_hat, x0 = batch()
    scores = scores_of(reward, x0_hat, context_for(x0, vae))
    assert scores.shape == (6,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()


def test_deterministic_and_batch_split_invariant(reward, vae):
    x0_hat, x0 = batch()
    whole = scores_of(reward, x0_hat, context_for(x0, vae))
    assert torch.equal(whole, scores_of(reward, x0_hat, context_for(x0, vae)))
    halves = torch.cat([scores_of(reward, x0_hat[:2], context_for(x0[:2], vae)),
                        scores_of(reward, x0_hat[2:], context_for(x0[2:], vae))])
    torch.testing.assert_close(whole, halves, atol=1e-5, rtol=1e-5)


def test_registered_factory_declares_its_differentiability(reward_name, reward):
    """`rewardbooth rewards` and the early config checks read the flag without building the reward."""
    assert getattr(rewards.get(reward_name), "differentiable", None) is reward.differentiable


# A prompt naming none of the toy world's attributes gives caption agreement nothing to agree with (0).
PROMPTS = {"toy_alignment": ["a sks ball in the snow"] * 6}


def test_differentiability_flag_is_honest(reward_name, reward, vae):
    x0_hat, x0 = batch()
    x0_hat.requires_grad_(True)
    scores = scores_of(reward, x0_hat, context_for(x0, vae, PROMPTS.get(reward_name)))
    if reward.differentiable:
        scores.sum().backward()
        assert x0_hat.grad is not None and x0_hat.grad.abs().sum() > 0
    else:
        assert not scores.requires_grad


def test_better_samples_score_higher(vae):
    """The look-forward reward prefers x0_hat closer to x0."""
    reward = make_reward("look_forward", RewardSetup(torch.rand(1, 3, 8, 8), "sks", torch.device("cpu")))
    x0_hat, x0 = batch(2)
    close = scores_of(reward, x0 + 0.1 * x0_hat, context_for(x0, vae))
    far = scores_of(reward, x0 + 1.0 * x0_hat, context_for(x0, vae))
    assert (close > far).all()


def test_toy_identity_is_the_cosine_to_the_reference_centroid(judge_dir, vae):
    """Scoring the references themselves gives each one's cosine to the normalised mean reference embedding."""
    from rewardbooth.toyworld.judge import load_judge

    judge = load_judge(judge_dir)
    references = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    reward = make_reward("toy_identity", RewardSetup(references, "sks", torch.device("cpu")), judge_dir=str(judge_dir))
    context = RewardContext(x0=torch.zeros(3, 4, 16, 16), prompts=["a sks ball"] * 3, decode=lambda _: references)
    scores = scores_of(reward, torch.zeros(3, 4, 16, 16), context)
    embedding, _ = judge(references)
    expected = embedding @ torch.nn.functional.normalize(embedding.mean(0), dim=0)
    torch.testing.assert_close(scores, expected)


def test_toy_identity_blackbox_is_the_quantised_cosine_without_a_gradient(judge_dir):
    """Outside autograd (no graph even for inputs that ask for one) and rounded to steps of 0.05, so the
    critic's regression target is all it can give; toy_identity, its declared twin, is the cosine itself."""
    from rewardbooth.rewards import differentiable_twin

    references = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    setup = RewardSetup(references, "sks", torch.device("cpu"))
    blackbox = make_scorer("toy_identity_blackbox", setup, judge_dir=str(judge_dir))
    twin = make_scorer("toy_identity", setup, judge_dir=str(judge_dir))
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
    scores = blackbox.score_images(images, ["a sks ball"] * 5).scores
    assert not scores.requires_grad and not blackbox.differentiable
    torch.testing.assert_close(scores, torch.round(twin.score_images(images, ["a sks ball"] * 5).scores / 0.05) * 0.05)
    assert torch.allclose(scores / 0.05, torch.round(scores / 0.05), atol=1e-4)
    assert differentiable_twin("toy_identity_blackbox", {"toy_identity_blackbox": {"judge_dir": "j", "step": 0.1}}) \
        == ({"toy_identity": 1.0}, {"toy_identity": {"judge_dir": "j"}})
    assert differentiable_twin({"user_rewards:DarkImages": 1.0, "look_forward": 1.0}, None) is None  # no twin


# --- the two kinds -------------------------------------------------------------------------------------------

IMAGE_SCORERS = [name for name in rewards.names() if declared_kind(rewards.get(name)) == "image"]


def test_every_registered_reward_declares_its_kind(reward_name, judge_dir, backbone_dirs):
    """`rewardbooth rewards` and validation.reward read the kind without building; the built object agrees."""
    kind = declared_kind(rewards.get(reward_name))
    assert kind in ("image", "latent")
    built = build(reward_name, judge_dir, backbone_dirs, make=lambda name, setup, **options:
                  rewards.get(name)(setup, **options))
    assert kind_of(built) == kind


@pytest.fixture(params=IMAGE_SCORERS)
def scorer(request, judge_dir, backbone_dirs):
    return build(request.param, judge_dir, backbone_dirs, make=make_scorer)


def images(size=5):
    return torch.rand(size, 3, 64, 64, generator=torch.Generator().manual_seed(4))


def test_an_image_scorer_scores_images_directly(scorer):
    prompts = [f"a photo of sks dog {index}" for index in range(5)]
    output = scorer.score_images(images(), prompts)
    assert isinstance(output, RewardOutput)
    assert output.scores.shape == (5,) and output.scores.dtype == torch.float32 and torch.isfinite(output.scores).all()
    assert torch.equal(output.scores, scorer.score_images(images(), prompts).scores)
    halves = torch.cat([scorer.score_images(images()[:2], prompts[:2]).scores,
                        scorer.score_images(images()[2:], prompts[2:]).scores])
    torch.testing.assert_close(output.scores, halves, atol=1e-5, rtol=1e-5)


def test_training_scores_an_image_scorer_on_the_decoded_x0_hat(reward_name, reward, vae, judge_dir, backbone_dirs):
    """The trainer's reward is the image scorer itself on decode(x0_hat): same scores, same flag."""
    if reward_name not in IMAGE_SCORERS:
        pytest.skip("a latent reward")
    x0_hat, x0 = batch(3)
    context = context_for(x0, vae)
    assert isinstance(reward, OnDecodedImages) and reward.differentiable is reward.scorer.differentiable
    direct = build(reward_name, judge_dir, backbone_dirs, make=make_scorer).score_images(
        context.decode(x0_hat), context.prompts)
    assert torch.equal(scores_of(reward, x0_hat, context), direct.scores)


def test_an_image_scorer_without_a_decoder_is_a_clear_error(judge_dir):
    reward = make_reward("toy_identity", RewardSetup(torch.rand(2, 3, 32, 32), "sks", torch.device("cpu")),
                         judge_dir=str(judge_dir))
    with pytest.raises(ValueError, match="'toy_identity' reward scores images: the trainer must give it context.decode"):
        reward(torch.zeros(1, 4, 8, 8), RewardContext(x0=torch.zeros(1, 4, 8, 8), prompts=["x"]))


def test_a_latent_reward_is_no_image_scorer():
    from rewardbooth.core.errors import UserError

    with pytest.raises(UserError, match="'look_forward' scores latents, not images"):
        make_scorer("look_forward", RewardSetup(torch.rand(1, 3, 8, 8), "sks", torch.device("cpu")))


def test_the_rewards_command_states_each_kind():
    from rewardbooth.rewards.base import describe_rewards

    listing = describe_rewards(["look_forward", "dino", "user_scorers:make_brightness"]).split("\n")
    assert listing[2].strip().startswith("latent reward") and listing[7].strip().startswith("image scorer")
    assert listing[12].strip() == "kind is declared when built"
