"""Tokenizers built in memory, of the real CLIPTokenizer class (saved and loaded the same way), so that the
tiny and toy models need no file:

- `make_character_tokenizer`: no merges, every byte is a token (the tiny models);
- `make_world_tokenizer`: the toy world's words, plus every byte for anything else (the toy base model). Each
  world word is one token (BPE merges learned on the world's words, as CLIP's own merges rebuild common
  words); a word outside the world — the identifier "sks" — falls back to byte tokens, exactly as a rare
  identifier does in Stable Diffusion's tokenizer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from transformers import CLIPTokenizer

MAX_LENGTH = 16  # the longest toy caption is 15 tokens; a short context makes cross-attention cheap


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-character table (Radford et al. 2019)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, characters)))


def make_character_tokenizer() -> CLIPTokenizer:
    """A CLIPTokenizer with no merges: every byte is a token (514 ids). Real class, real save/load."""
    symbols = list(bytes_to_unicode().values())
    vocab = {symbol: index for index, symbol in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


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
