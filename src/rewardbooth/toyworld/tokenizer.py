"""A CLIP tokenizer whose vocabulary is the toy world's words, plus every byte for anything else.

Each world word is one token (BPE merges learned on the world's words, as CLIP's own merges rebuild
common words); a word outside the world — the identifier "sks" — falls back to byte tokens, exactly as a rare
identifier does in Stable Diffusion's tokenizer. Same class as the real one, saved and loaded the same way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from transformers import CLIPTokenizer

from rewardbooth.models.builtin import bytes_to_unicode

MAX_LENGTH = 16  # the longest toy caption is 15 tokens; a short context makes cross-attention cheap


def learn_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """Byte-pair encoding learned on the word list until every word is one symbol (Sennrich et al. 2016).

    Merges must be learned, not written per word: BPE applies the lowest-ranked pair first, so a merge written
    for one word ("d e" of "desert") would otherwise break another ("underwater"). Replaying learned merges
    in rank order reproduces the training segmentation, so each word ends as the single token `word</w>`.
    """
    pieces = {word: list(word[:-1]) + [word[-1] + "</w>"] for word in sorted(set(words))}
    merges: list[tuple[str, str]] = []
    while True:
        counts: Counter[tuple[str, str]] = Counter()
        for symbols in pieces.values():
            counts.update(zip(symbols, symbols[1:]))
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))  # most frequent, ties alphabetical
        merges.append(best)
        for word, symbols in pieces.items():
            pieces[word] = _merge(symbols, best)


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    merged, index = [], 0
    while index < len(symbols):
        if index + 1 < len(symbols) and (symbols[index], symbols[index + 1]) == pair:
            merged.append(symbols[index] + symbols[index + 1])
            index += 2
        else:
            merged.append(symbols[index])
            index += 1
    return merged


def make_world_tokenizer(words: Iterable[str]) -> CLIPTokenizer:
    byte_symbols = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for symbol in byte_symbols + [s + "</w>" for s in byte_symbols]:
        vocab.setdefault(symbol, len(vocab))
    merges = learn_merges(word.lower() for word in words)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)
