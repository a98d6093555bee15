"""Extractive answers: the sentences of the retrieved passages that best answer a question.

Every sentence of the answer is quoted from a source and cites it as ``[n]``, so the
answer cannot drift from its sources. Sentences are scored against the question by the
reranker when one is configured, else by the embedding model (cosine).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from llama_index.core.schema import MetadataMode, NodeWithScore

if TYPE_CHECKING:
    from ..models.embedding import LlamaCppEmbedding
    from ..models.rerank import LlamaCppRerank

__all__ = ["Quote", "extract_answer", "format_answer", "sentences"]

NOT_FOUND = "The sources found do not answer this."
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"”’)]?\s+(?=[\"“(\[A-Z0-9])")
_CODE = re.compile(r"::=|^>>>|^\.\.\.|^[\s\-|=+*#`]*$")


@dataclass(frozen=True)
class Quote:
    """One sentence of the answer, from source ``source`` (1-based, as in ``[n]``)."""

    text: str
    source: int
    score: float


def sentences(text: str) -> list[str]:
    """The prose sentences of a passage: paragraphs re-flowed, code, grammar, headings and
    fragments under four words left out."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.splitlines()
        if not lines or lines[0].lstrip().startswith("#"):
            continue
        if all(line.startswith("   ") for line in lines if line.strip()) and not re.match(
            r"\s*(\d+\.|\*|-)\s", lines[0]
        ):
            continue  # an indented block: code, grammar or a quoted example
        flowed = " ".join(" ".join(lines).split())
        for sentence in _SENTENCE_END.split(flowed):
            sentence = sentence.strip()
            if len(sentence.split()) >= 4 and not _CODE.search(sentence):
                out.append(sentence)
    return out


def extract_answer(
    question: str,
    hits: Sequence[NodeWithScore],
    embed_model: LlamaCppEmbedding,
    reranker: LlamaCppRerank | None = None,
    *,
    max_sentences: int = 2,
    margin: float = 0.1,
) -> list[Quote]:
    """Up to ``max_sentences`` sentences from ``hits`` that answer ``question`` best, each
    within ``margin`` of the best one's score (cosine, or the reranker's probability)."""
    candidates: list[tuple[int, str]] = []
    for source, hit in enumerate(hits, 1):
        for sentence in sentences(hit.node.get_content(metadata_mode=MetadataMode.NONE)):
            candidates.append((source, sentence))
    if not candidates:
        return []
    texts = [sentence for _, sentence in candidates]
    if reranker is not None:
        scores = np.asarray(reranker.score(question, texts), dtype=np.float64)
    else:
        query = np.asarray(embed_model.get_query_embedding(question))
        scores = embed_model.embed(texts, prefix=embed_model.text_prefix) @ query
    # A small prior for the passage's rank: of two equally good sentences, the one from the
    # better-ranked passage.
    scores = scores - 0.01 * np.array([source - 1 for source, _ in candidates])
    order = np.argsort(-scores, kind="stable")
    best = float(scores[order[0]])
    chosen: list[Quote] = []
    for i in order:
        if len(chosen) == max_sentences or float(scores[i]) < best - margin:
            break
        source, sentence = candidates[int(i)]
        if any(sentence == quote.text for quote in chosen):
            continue
        chosen.append(Quote(sentence, source, float(scores[i])))
    return chosen


def format_answer(quotes: Sequence[Quote]) -> str:
    """The quotes as one paragraph, each followed by its ``[n]``."""
    if not quotes:
        return NOT_FOUND
    return " ".join(f"{quote.text} [{quote.source}]" for quote in quotes)
