"""The plain references a pipeline must match: the same model on raw text, searched exactly.

``paragraph_baseline``: each document is split at blank lines into paragraphs (a paragraph
longer than the model's context into context-sized pieces), each piece embedded, documents
ranked by their best piece. ``whole_baseline``: each document embedded whole, cut to the
model's context (what sentence-transformers does with a passage). Every query is compared
with every vector in NumPy: no chunker, no title, no index, no database.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..models.embedding import LlamaCppEmbedding

__all__ = ["paragraph_baseline", "paragraphs", "whole_baseline"]

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
    return _ranked(owners, matrix, queries, embed_model, top)


def whole_baseline(
    corpus: Mapping[str, str],
    queries: Mapping[str, str],
    embed_model: LlamaCppEmbedding,
    *,
    top: int = 100,
) -> dict[str, list[str]]:
    """``{query id: the best ``top`` corpus ids, in order}``, each document one vector of its
    first context's worth of tokens."""
    from ..errors import TruncationWarning

    ids = list(corpus)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)  # cutting is the point here
        matrix = embed_model.embed([corpus[d] for d in ids], prefix=embed_model.text_prefix)
    return _ranked(ids, matrix, queries, embed_model, top)


def _ranked(
    owners: list[str],
    matrix: np.ndarray,
    queries: Mapping[str, str],
    embed_model: LlamaCppEmbedding,
    top: int,
) -> dict[str, list[str]]:
    """Each query's documents, best first: by the best of their rows of ``matrix`` among the
    ``top`` nearest rows (``owners[i]`` is row i's document)."""
    ids = list(queries)
    asked = embed_model.embed([queries[q] for q in ids], prefix=embed_model.query_prefix)
    runs: dict[str, list[str]] = {}
    for qid, scores in zip(ids, asked @ matrix.T):
        order = np.argsort(-scores, kind="stable")
        runs[qid] = list(dict.fromkeys(owners[i] for i in order[:top]))
    return runs
