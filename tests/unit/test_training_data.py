"""Every random draw of a step comes from (seed, step), for the global batch."""

import pytest
import torch

from rewardbooth.core.config import ModelConfig
from rewardbooth.models import load_model
from rewardbooth.models.families import conditioning_of_prompts
from rewardbooth.training.batches import ImageSet, TrainingData, step_generator, with_flips


def make_data(cache=True, prior=True):
    parts = load_model(ModelConfig("tiny"))
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    instance = ImageSet(with_flips(images, True), ["a sks dog"] * 6, parts.vae, cache=cache)
    prior_set = ImageSet(images.flip(1), ["a dog"] * 3, parts.vae, cache=cache) if prior else None
    conditioning = conditioning_of_prompts(parts, ["a sks dog", "a dog"], trained=("text_encoder",))
    return TrainingData(parts.vae, parts.latent_space, parts.process, instance, prior_set, conditioning, seed=7)


def test_step_generators_are_distinct_and_reproducible():
    draws = {(seed, s): torch.rand(4, generator=step_generator(seed, s)) for s in range(3) for seed in range(2)}
    assert len({tuple(v.tolist()) for v in draws.values()}) == 6
    assert torch.equal(draws[(1, 2)], torch.rand(4, generator=step_generator(1, 2)))


def test_batch_layout():
    batch = make_data().draw(step=0, micro=0, batch_size=2, process_index=0, num_processes=1)
    assert batch.x0.shape == (4, 4, 16, 16) and batch.noise.shape == batch.x0.shape
    assert batch.num_instance == 2 and batch.prompts == ["a sks dog"] * 2 + ["a dog"] * 2
    assert [ids.shape for ids in batch.conditioning.token_ids] == [(4, 77)] and batch.timesteps.dtype == torch.int64
    assert 0 <= batch.timesteps.min() and batch.timesteps.max() < 1000


@pytest.mark.parametrize("num_processes,accumulation", [(2, 1), (1, 2), (2, 2)])
def test_processes_and_micro_steps_split_the_global_batch_exactly(num_processes, accumulation):
    """Micro-step j of process p is slice p*k + j of the global batch: k micro-steps of batch b on N processes
    see exactly what one process with batch N*k*b sees."""
    data = make_data()
    whole = data.draw(step=3, micro=0, batch_size=4, process_index=0, num_processes=1)
    size = 4 // (num_processes * accumulation)

    def field_of(batch, field):
        return batch.conditioning.token_ids[0] if field == "conditioning" else getattr(batch, field)

    for process in range(num_processes):
        for micro in range(accumulation):
            piece = data.draw(step=3, micro=micro, batch_size=size, process_index=process,
                              num_processes=num_processes, accumulation=accumulation)
            first = (process * accumulation + micro) * size
            for field in ("x0", "noise", "timesteps", "conditioning"):
                full = field_of(whole, field)  # 4 instance rows, then 4 prior rows
                expected = torch.cat([full[first:first + size], full[4 + first:4 + first + size]])
                assert torch.equal(field_of(piece, field), expected), (field, process, micro)


def test_uncached_latents_match_cached():
    cached, live = make_data(cache=True), make_data(cache=False)
    a = cached.draw(step=1, micro=0, batch_size=2, process_index=0, num_processes=1)
    b = live.draw(step=1, micro=0, batch_size=2, process_index=0, num_processes=1)
    torch.testing.assert_close(a.x0, b.x0, atol=1e-5, rtol=1e-5)
    assert torch.equal(a.noise, b.noise)
