"""Deterministic mixed-length texts cut from the bundled Python-docs corpus."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["CORPUS", "Workload", "make_workload"]

CORPUS = Path(__file__).resolve().parent.parent / "examples" / "corpus" / "python-reference"


@dataclass(frozen=True)
class Workload:
    """Texts plus their token counts, [CLS] and [SEP] included."""

    texts: list[str]
    tokens: list[int]

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens)

    def head(self, n: int) -> Workload:
        return Workload(self.texts[:n], self.tokens[:n])


@lru_cache(maxsize=1)
def _vocab(model_path: str) -> Any:
    from llama_cpp import Llama

    from llama_index_crab.models.runtime import install_log_callback

    install_log_callback()  # llama.cpp's logs to Python logging, not stderr
    return Llama(model_path=model_path, vocab_only=True, verbose=False)


def count_tokens(model_path: str, text: str) -> int:
    """Tokens of ``text`` as the model sees it, start and end tokens included."""
    return len(_vocab(model_path).tokenize(text.encode(), add_bos=True, special=False))


def make_workload(
    model_path: str, n: int, *, lo: int = 5, hi: int = 400, seed: int = 0
) -> Workload:
    """``n`` word windows of the corpus, each ``lo``..``hi`` tokens long (uniform target length).

    WordPiece splits on whitespace first, so a window's length is the sum of its words'
    lengths; the real tokenizer then confirms every text.
    """
    words = " ".join(p.read_text() for p in sorted(CORPUS.glob("*.md"))).split()
    if not words:
        raise FileNotFoundError(f"no corpus under {CORPUS}; run from a clone of the repository")
    per_word = {w: count_tokens(model_path, w) - 2 for w in set(words)}
    lengths = [per_word[w] for w in words]
    rng = random.Random(seed)
    texts: list[str] = []
    tokens: list[int] = []
    while len(texts) < n:
        target = rng.randint(lo, hi) - 2
        start = rng.randrange(len(words))
        used, end = 0, start
        while end < len(words) and used + lengths[end] <= target:
            used += lengths[end]
            end += 1
        if used + 2 < lo:
            continue
        text = " ".join(words[start:end])
        count = count_tokens(model_path, text)
        if lo <= count <= hi:
            texts.append(text)
            tokens.append(count)
    return Workload(texts, tokens)
