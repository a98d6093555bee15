"""Search hits and their reciprocal-rank fusion: plain Python, shared by the store and the
quick `crab query` path (which runs without SQLAlchemy)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = ["DEFAULT_ALPHA", "RRF_K", "Hit", "fuse", "hit", "stored_metadata", "vector_text"]

# node id, text, metadata (with ``_node_content``), score
Hit = tuple[str, str, dict[str, Any], float]
RRF_K = 60
# The dense ranking's weight in the fusion, chosen across the labelled sets in tests/data
# (benchmarks/corpora.py; the README has the sweep): the highest weight at which hybrid was
# never below dense alone on any of them.
DEFAULT_ALPHA = 0.9


def stored_metadata(metadata: dict[str, Any], node_content: str) -> dict[str, Any]:
    """The ``STORED`` columns back as LlamaIndex's metadata dict (``_node_content`` in it),
    what ``metadata_dict_to_node`` reads."""
    return {**metadata, "_node_content": node_content}


def hit(row: Sequence[Any]) -> Hit:
    """A ``Hit`` from a row of node id, text, metadata, node content, score."""
    node_id, text, metadata, node_content, score = row[:5]
    return str(node_id), str(text), stored_metadata(metadata, node_content), float(score)


def vector_text(vector: np.ndarray) -> str:
    """A query vector as pgvector's text input, ``[x,y,...]`` (exact: ``repr`` of each float)."""
    return "[" + ",".join(map(repr, vector.astype(float).tolist())) + "]"


def fuse(
    dense_hits: Sequence[Hit], text_hits: Sequence[Hit], k: int, alpha: float | None
) -> list[Hit]:
    """Reciprocal-rank fusion: ``score = a/(60 + rank_dense) + (1-a)/(60 + rank_text)``,
    ``a`` = ``alpha`` (default ``DEFAULT_ALPHA``). Ranks, not raw scores, are fused, since
    cosine and text ranks are not comparable."""
    weight = DEFAULT_ALPHA if alpha is None else alpha
    scores: dict[str, float] = {}
    rows: dict[str, Hit] = {}
    for hits, w in ((dense_hits, weight), (text_hits, 1.0 - weight)):
        for rank, hit in enumerate(hits, start=1):
            scores[hit[0]] = scores.get(hit[0], 0.0) + w / (RRF_K + rank)
            rows.setdefault(hit[0], hit)
    best = sorted(scores, key=lambda node_id: (-scores[node_id], node_id))[:k]
    return [(*rows[node_id][:3], scores[node_id]) for node_id in best]
