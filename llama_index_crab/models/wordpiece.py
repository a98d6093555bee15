"""BERT's WordPiece as Hugging Face's BertTokenizer runs it, over a GGUF's vocabulary.

llama.cpp's own WPM tokenizer drops every combining mark (Devanagari, Thai and other vowel
signs too, where BERT strips only nonspacing ones), keeps Hangul syllables whole and has
no per-word length limit; each changes the tokens and so the embedding.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

__all__ = ["WordPiece", "basic_words"]

_MAX_WORD_CHARS = 100  # longer words are one [UNK], as in BERT
_CJK = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


# ASCII text, the common case, split without a per-character loop: control characters
# vanish (tab, newline and return separate words), letters and digits run together, every
# other printable character is a word of its own (BERT counts all ASCII symbols as punctuation).
_ASCII_CONTROL = {c: None for c in [*range(32), 127] if chr(c) not in "\t\n\r"}
_ASCII_WORD = re.compile(r"[A-Za-z0-9]+|[!-/:-@\[-`{-~]")


def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK)


def basic_words(text: str, lowercase: bool = True, strip_accents: bool = True) -> list[str]:
    """BERT's basic tokenizer character by character, for any text."""
    chars = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ord(ch) in (0, 0xFFFD) or (cat.startswith("C") and ch not in "\t\n\r"):
            continue
        if ch in " \t\n\r" or cat == "Zs":
            chars.append(" ")
        elif _is_cjk(ch):
            chars.append(f" {ch} ")
        else:
            chars.append(ch)
    cleaned = "".join(chars)
    if strip_accents:
        cleaned = "".join(
            c for c in unicodedata.normalize("NFD", cleaned) if unicodedata.category(c) != "Mn"
        )
    if lowercase:
        cleaned = cleaned.lower()
    out: list[str] = []
    for word in cleaned.split():
        current = ""
        for ch in word:
            if _is_punct(ch):
                if current:
                    out.append(current)
                out.append(ch)
                current = ""
            else:
                current += ch
        if current:
            out.append(current)
    return out


class WordPiece:
    """Words split as BERT's basic tokenizer does, then greedy longest-match pieces."""

    def __init__(self, model: Any, lowercase: bool = True, strip_accents: bool = True) -> None:
        from .bindings import llama_cpp as bindings

        llama_cpp = bindings()

        vocab = llama_cpp.llama_model_get_vocab(model)
        self.unk = 100  # [UNK] in BERT's vocabularies; read below when present
        self.start: dict[str, int] = {}
        self.rest: dict[str, int] = {}
        control = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
        for i in range(llama_cpp.llama_vocab_n_tokens(vocab)):
            if llama_cpp.llama_vocab_get_attr(vocab, i) & control:
                continue
            text = (llama_cpp.llama_vocab_get_text(vocab, i) or b"").decode("utf-8", "replace")
            if text == "[UNK]":
                self.unk = i
            # llama.cpp's converter stores word starts as "▁piece" and "##piece" as "piece".
            if text.startswith("\u2581"):
                self.start.setdefault(text[1:], i)
            else:
                self.rest.setdefault(text, i)
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self.longest = max(map(len, [*self.start, *self.rest]), default=1)

    def words(self, text: str) -> list[str]:
        """BERT's basic tokenizer: clean, CJK characters apart, lowercase, strip
        nonspacing marks, split on whitespace and punctuation."""
        if text.isascii():
            text = text.translate(_ASCII_CONTROL)
            return _ASCII_WORD.findall(text.lower() if self.lowercase else text)
        return basic_words(text, self.lowercase, self.strip_accents)

    def __call__(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in self.words(text):
            ids.extend(self._pieces(word))
        return ids

    def _pieces(self, word: str) -> list[int]:
        if len(word) > _MAX_WORD_CHARS:
            return [self.unk]
        pieces = []
        start = 0
        while start < len(word):
            table = self.start if start == 0 else self.rest
            end = min(len(word), start + self.longest)
            while end > start and word[start:end] not in table:
                end -= 1
            if end == start:
                return [self.unk]
            pieces.append(table[word[start:end]])
            start = end
        return pieces
