import os
import sys
from pathlib import Path

import pytest

# The suite never touches the network: hub ids must fail fast, as on CI.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("REWARDBOOTH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def subject_dir(tmp_path_factory):
    from rewardbooth.data.images import make_example_subject

    folder = tmp_path_factory.mktemp("subject")
    make_example_subject(folder, num_images=4, size=64, seed=0)
    return folder


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """The tiny model saved as a stock diffusers folder: the real loading path runs on it."""
    from rewardbooth.core.config import ModelConfig
    from rewardbooth.models import load_model

    folder = tmp_path_factory.mktemp("tiny-model")
    load_model(ModelConfig("tiny")).pipeline().save_pretrained(folder)
    return folder


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
