"""One contract every registered evaluation metric passes: registering a metric enrolls it here.

Backbones are tiny random models of the real classes saved to disk (and a random toy judge), loaded once
through `evaluate.Backbones` as `rewardbooth evaluate` loads them; images come in two sizes, as generated
folders and subject photos do.
"""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import save_tiny_clip, save_tiny_vit
from rewardbooth.evaluation.evaluate import Backbones, protocol
from rewardbooth.evaluation.metrics import BACKBONES, Metric, RunImages, metrics


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    from rewardbooth.toyworld.judge import Judge, save_judge

    torch.manual_seed(0)
    judge = tmp_path_factory.mktemp("judge")
    save_judge(Judge(num_train_subjects=4), judge, report={})
    return Backbones(str(save_tiny_vit(tmp_path_factory.mktemp("vit"))),
                     str(save_tiny_clip(tmp_path_factory.mktemp("clip"))), torch.device("cpu"), judge_dir=str(judge))


def random_images(count, size, seed):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)]


def references_for(name):
    if name == "face":  # a real face photo (scikit-image's astronaut), as the face metric needs one
        pytest.importorskip("dlib")
        from skimage.data import astronaut

        return [Image.fromarray(astronaut()), Image.fromarray(astronaut()).resize((300, 300))]
    return random_images(3, (40, 40), seed=1)


def run_of(name, prompts=True):
    images = random_images(3, (48, 48), seed=2) + random_images(2, (64, 40), seed=3)
    texts = ["a photo of sks dog", "a sks ball in the snow", "a photo of sks dog", "a red sks cat", "a sks dog"]
    return RunImages(images, texts if prompts else [None] * len(images), references_for(name), ["sks"],
                     torch.device("cpu"))


@pytest.fixture(params=metrics.names())
def metric(request):
    return metrics.get(request.param)


def score(metric, backbones, run):
    return metric(run, None if metric.backbone is None else backbones.get(metric.backbone))


def test_one_finite_float_per_image_and_deterministic(metric, backbones):
    values = score(metric, backbones, run_of(metric.name))
    assert isinstance(values, torch.Tensor) and values.shape == (5,)
    rows = [float(value) for value in values]
    assert all(math.isfinite(value) for value in rows)
    assert torch.equal(values, score(metric, backbones, run_of(metric.name)))


def test_needs_prompts_is_honest(metric, backbones):
    """A metric that says it does without prompts scores a folder without generation.json."""
    if metric.needs_prompts:
        pytest.skip("needs the prompts: evaluate refuses a folder without them first")
    assert score(metric, backbones, run_of(metric.name, prompts=False)).shape == (5,)


def test_registration_is_complete(metric, backbones):
    """What the report records and `--list-metrics` prints: the backbone and how the score is computed."""
    assert isinstance(metric, Metric) and metric.name in metrics
    assert metric.backbone is None or metric.backbone in BACKBONES
    entry = protocol((metric.name,), backbones)[metric.name]
    assert isinstance(entry["backbone"], str) and entry["backbone"] and isinstance(entry["score"], str)
    assert all(isinstance(value, str) for value in entry.values())
