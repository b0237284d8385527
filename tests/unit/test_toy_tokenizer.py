"""The toy world's word-level CLIP tokenizer."""

from transformers import CLIPTokenizer

from rewardbooth.models.tokenizers import MAX_LENGTH, learn_merges, make_world_tokenizer
from rewardbooth.toyworld import world
from rewardbooth.toyworld.subjects import make_subject, prompt_set


def test_learned_merges_by_hand():
    # ab = [a, b</w>], abc = [a, b, c</w>]: three pairs seen once each, ties broken alphabetically.
    assert learn_merges(["ab", "abc"]) == [("a", "b"), ("a", "b</w>"), ("ab", "c</w>")]
    assert learn_merges(["a"]) == []


def test_world_words_are_single_tokens_and_the_identifier_is_bytes(tmp_path):
    tokenizer = make_world_tokenizer(world.VOCABULARY)
    for word in world.VOCABULARY:
        assert tokenizer.convert_ids_to_tokens(tokenizer(word).input_ids[1:-1]) == [word + "</w>"]
    assert tokenizer.convert_ids_to_tokens(tokenizer("sks").input_ids[1:-1]) == ["s", "k", "s</w>"]
    tokenizer.save_pretrained(tmp_path)
    reloaded = CLIPTokenizer.from_pretrained(tmp_path)
    assert reloaded("a sks ball in the snow").input_ids == tokenizer("a sks ball in the snow").input_ids


def test_words_sharing_pairs_stay_single_tokens():
    tokenizer = make_world_tokenizer(["desert", "underwater", "red", "under", "dessert"])
    for word in ["desert", "underwater", "red", "under", "dessert"]:
        assert tokenizer.convert_ids_to_tokens(tokenizer(word).input_ids[1:-1]) == [word + "</w>"]


def test_every_prompt_fits_the_context():
    tokenizer = make_world_tokenizer(world.VOCABULARY)
    prompts = [p for k in range(16) for p in prompt_set(make_subject(k))]
    longest = max(len(tokenizer(p).input_ids) for p in prompts)
    assert longest <= MAX_LENGTH
