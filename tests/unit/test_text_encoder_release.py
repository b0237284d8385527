"""`train.offload_text_encoders`: where the frozen text encoders go once every prompt is encoded."""

from types import SimpleNamespace

import pytest
from torch import nn

from rewardbooth.core.config import TrainConfig
from rewardbooth.training.frozen_text import release_text_encoders


class MoveRecorder(nn.Linear):
    """A module that records where it was asked to move (on a CPU-only machine every move lands on the CPU)."""

    def __init__(self):
        super().__init__(1, 1)
        self.moves = []

    def to(self, *args, **kwargs):
        self.moves.append(args or tuple(kwargs.values()))
        return super().to(*args, **kwargs)


@pytest.mark.parametrize("mode, moves", [("cpu", [("cpu",)]), ("free", [("meta",)]), ("none", [])])
def test_release_moves_every_frozen_encoder_off_the_accelerator_drops_it_or_leaves_it(mode, moves):
    parts = SimpleNamespace(text_encoders=[MoveRecorder(), MoveRecorder()])
    release_text_encoders(parts, mode)
    assert [encoder.moves for encoder in parts.text_encoders] == [moves, moves]
    if mode == "free":  # the weights are gone: no storage left behind
        assert all(p.is_meta for encoder in parts.text_encoders for p in encoder.parameters())


def test_the_default_moves_them_to_the_cpu():
    assert TrainConfig().offload_text_encoders == "cpu"
