"""The ASCII fast path of BERT's basic tokenizer splits exactly as the general one does."""

from __future__ import annotations

import random
import string

import pytest
from _models import EMBEDDER_BF16, reference

from llama_index_crab import LlamaCppEmbedding
from llama_index_crab.models.wordpiece import WordPiece, basic_words


@pytest.fixture(scope="module")
def wordpiece() -> WordPiece:
    model = LlamaCppEmbedding(EMBEDDER_BF16, weights="file")
    pieces = model.runner._wordpiece()
    yield pieces
    model.close()


def ascii_texts() -> list[str]:
    rng = random.Random(7)
    alphabet = string.printable + "".join(map(chr, [*range(32), 127]))
    fuzz = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(500)]
    fixed = [
        "Hello, World!  It's 3.14 -- isn't_it? (x+y)*z [a]{b}~`c` @home #tag $5 ^_^ a|b\\c",
        "tab\tnew\nline\rreturn\x0bvertical\x0cfeed\x00nul\x1fus\x7fdel",
        "MiXeD CaSe ABC123def",
    ]
    texts = [t["text"] for t in reference("embeddings.json")["texts"]]
    return fixed + fuzz + [t for t in texts if t.isascii()]


def test_ascii_fast_path_equals_the_general_tokenizer(wordpiece: WordPiece) -> None:
    for text in ascii_texts():
        assert wordpiece.words(text) == basic_words(text), repr(text)


def test_non_ascii_text_takes_the_general_path(wordpiece: WordPiece) -> None:
    text = "Café naïve — 東京 résumé"
    assert wordpiece.words(text) == basic_words(text)
    assert "cafe" in wordpiece.words(text)
