"""The plain reference a pipeline must match: paragraphs embedded raw, searched exactly.

Each document is split at blank lines into paragraphs (a paragraph longer than the model's
context into context-sized pieces), each piece's raw text embedded with the same model, and
every query compared with every piece in NumPy: no chunker, no title, no index, no
database. Documents rank by their best piece among the top ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..models.embedding import LlamaCppEmbedding

__all__ = ["paragraph_baseline", "paragraphs"]

Tokenize = Callable[[str], list[int]]


def paragraphs(text: str, tokenize: Tokenize, max_tokens: int) -> list[str]:
    """``text`` split at blank lines; a paragraph over ``max_tokens`` tokens is split into
    pieces of whole lines (or whole words, for one long line) that fit."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        if not block.strip():
            continue
        piece: list[str] = []
        for unit in _units(block, tokenize, max_tokens):
            if piece and len(tokenize("\n".join([*piece, unit]))) > max_tokens:
                out.append("\n".join(piece))
                piece = []
            piece.append(unit)
        if piece:
            out.append("\n".join(piece))
    return out


def _units(block: str, tokenize: Tokenize, max_tokens: int) -> list[str]:
    units: list[str] = []
    for line in block.splitlines():
        if len(tokenize(line)) <= max_tokens:
            units.append(line)
            continue
        words = line.split()
        step = max(1, max_tokens // 2)
        units += [" ".join(words[i : i + step]) for i in range(0, len(words), step)]
    return units


def paragraph_baseline(
    corpus: Mapping[str, str],
    queries: Mapping[str, str],
    embed_model: LlamaCppEmbedding,
    *,
    top: int = 100,
) -> dict[str, list[str]]:
    """``{query id: corpus ids of the best ``top`` paragraphs, in order}``."""
    runner = embed_model.runner
    room = embed_model.text_room
    owners: list[str] = []
    texts: list[str] = []
    for doc_id, text in corpus.items():
        for piece in paragraphs(text, runner.tokenize, room):
            owners.append(doc_id)
            texts.append(piece)
    matrix = embed_model.embed(texts, prefix=embed_model.text_prefix)
    ids = list(queries)
    asked = embed_model.embed([queries[q] for q in ids], prefix=embed_model.query_prefix)
    runs: dict[str, list[str]] = {}
    for qid, scores in zip(ids, asked @ matrix.T):
        order = np.argsort(-scores, kind="stable")
        runs[qid] = list(dict.fromkeys(owners[i] for i in order[:top]))
    return runs
