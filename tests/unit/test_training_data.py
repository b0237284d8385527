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


def make_bucketed(caption_dropout=0.0, scene_share=0.0):
    """Two buckets: three 64x64 photos (16x16 latents) and one 48x80 portrait (12x20), prior sets aligned;
    the instance rows carry captions whose concept prompt is 'a sks dog'."""
    parts = load_model(ModelConfig("tiny"))
    generator = torch.Generator().manual_seed(0)
    squares, portrait = torch.rand(3, 3, 64, 64, generator=generator), torch.rand(1, 3, 80, 48, generator=generator)
    captions = ["a sks dog asleep", "a sks dog running", "a sks dog"]
    instance = [ImageSet(squares, captions, parts.vae, cache=True, fallbacks=["a sks dog"] * 3),
                ImageSet(portrait, ["a sks dog on a sofa"], parts.vae, cache=True, fallbacks=["a sks dog"])]
    prior = [ImageSet(squares.flip(1), ["a dog"] * 3, parts.vae, cache=True),
             ImageSet(portrait.flip(1), ["a dog"], parts.vae, cache=True)]
    prompts = [*captions, "a sks dog on a sofa", "a dog", "a sks dog at the beach"]
    conditioning = conditioning_of_prompts(parts, prompts, trained=("text_encoder",))
    return TrainingData(parts.vae, parts.latent_space, parts.process, instance, prior, conditioning, seed=7,
                        caption_dropout=caption_dropout, sizes=[(64, 64), (80, 48)],
                        scenes={"a sks dog": ["a sks dog at the beach"]}, scene_share=scene_share)


def test_a_step_draws_one_bucket_by_its_share_of_photos_and_from_its_seed_alone():
    data, fresh = make_bucketed(), make_bucketed()
    batches = [data.draw(step, 0, 2, 0, 1) for step in range(40)]
    portrait = [batch.x0.shape[-2:] == (20, 12) for batch in batches]
    assert all(batch.x0.shape[-2:] in ((16, 16), (20, 12)) for batch in batches)
    assert 3 <= sum(portrait) <= 20  # a quarter of the photos: ~10 of 40 steps
    for step, batch in enumerate(batches):
        assert batch.size == ((80, 48) if portrait[step] else (64, 64))
        assert batch.x0.shape[0] == 4  # instance and prior rows from the same bucket
        again = fresh.draw(step, 0, 2, 0, 1)  # a resumed run draws the same bucket at the same step
        assert torch.equal(again.x0, batch.x0) and again.prompts == batch.prompts


def test_caption_dropout_replaces_captions_at_its_rate_with_the_concepts_prompt():
    data = make_bucketed(caption_dropout=0.25)
    prompts = [p for step in range(100) for p in data.draw(step, 0, 4, 0, 1).prompts[:4]]
    share = prompts.count("a sks dog") / len(prompts)
    # One of the four captions is the bare prompt already: P(bare) = 1/4 + 3/4 * 0.25 = 0.4375 (400 rows).
    assert 0.36 < share < 0.52, share
    plain = make_bucketed()
    undropped = [p for step in range(100) for p in plain.draw(step, 0, 4, 0, 1).prompts[:4]]
    assert 0.17 < undropped.count("a sks dog") / len(undropped) < 0.33


def test_scene_prompts_are_found_for_captioned_rows_by_their_concept():
    batch = make_bucketed(scene_share=1.0).draw(0, 0, 2, 0, 1)
    assert batch.scene.all() and batch.prompts[:2] == ["a sks dog at the beach"] * 2


def test_reward_decoding_keeps_a_portraits_aspect():
    from rewardbooth.training.batches import reward_latent_size

    assert reward_latent_size((16, 16), 32, 4) == (8, 8) and reward_latent_size((16, 16), None, 4) == (16, 16)
    assert reward_latent_size((16, 16), 64, 4) == (16, 16) and reward_latent_size((20, 12), None, 4) == (20, 12)
    height, width = reward_latent_size((20, 12), 32, 4)
    assert height > width and abs(height * width - 64) <= 6  # the area of 8x8 at 5:3


def test_sdxl_size_ids_follow_the_steps_bucket():
    from rewardbooth.models.families import families
    from rewardbooth.training.batches import Batch
    from rewardbooth.training.objectives.base import Policy

    family = families.get("stable-diffusion-xl")
    policy = Policy(family, None, None, family.micro_conditioning(64), None, None, None, None, None)
    batch = Batch(torch.zeros(1, 4, 20, 12), torch.zeros(1, 4, 20, 12), torch.zeros(1), None, 1, ["p"], size=(80, 48))
    assert policy.size_ids(batch).tolist() == [[80, 48, 0, 0, 80, 48]]
    assert policy.size_ids(Batch(batch.x0, batch.noise, batch.timesteps, None, 1, ["p"])).tolist() == \
        [[64, 64, 0, 0, 64, 64]]
