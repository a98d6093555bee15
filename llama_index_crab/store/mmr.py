"""Maximal marginal relevance over prefetched candidates, as LlamaIndex defines it.

LlamaIndex's ``get_top_k_mmr_embeddings`` picks, at each step, the candidate maximising
``λ·sim(query, d) - (1-λ)·sim(d, last picked)`` (``λ`` = ``mmr_threshold``, 0.5 when unset)
and reports that value as the similarity. This is the same selection, vectorised: one
matrix-vector product per pick instead of a Python loop over pairs.
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real
from typing import Any

import numpy as np

__all__ = ["DEFAULT_PREFETCH_FACTOR", "DEFAULT_THRESHOLD", "prefetch_size", "select", "threshold"]

DEFAULT_PREFETCH_FACTOR = 4.0  # as LlamaIndex's PGVectorStore
DEFAULT_THRESHOLD = 0.5  # as LlamaIndex's get_top_k_mmr_embeddings


def prefetch_size(k: int, options: Mapping[str, Any]) -> int:
    """How many nearest candidates MMR chooses from: ``mmr_prefetch_k``, else
    ``k × mmr_prefetch_factor`` (4), never fewer than ``k``."""
    factor = options.get("mmr_prefetch_factor")
    fixed = options.get("mmr_prefetch_k")
    if factor is not None and fixed is not None:
        raise ValueError("pass mmr_prefetch_factor or mmr_prefetch_k, not both")
    if fixed is not None:
        if isinstance(fixed, bool) or not isinstance(fixed, int) or fixed < 1:
            raise ValueError(f"mmr_prefetch_k must be a positive integer, got {fixed!r}")
        return max(fixed, k)
    if factor is None:
        factor = DEFAULT_PREFETCH_FACTOR
    if isinstance(factor, bool) or not isinstance(factor, Real) or not float(factor) >= 1:
        raise ValueError(f"mmr_prefetch_factor must be a number ≥ 1, got {factor!r}")
    return max(int(k * float(factor)), k)


def threshold(value: Any) -> float:
    """``mmr_threshold`` λ in [0, 1]: 1 is plain relevance, 0 only diversity; None is 0.5."""
    if value is None:
        return DEFAULT_THRESHOLD
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= float(value) <= 1:
        raise ValueError(f"mmr_threshold must be a number between 0 and 1, got {value!r}")
    return float(value)


def select(query: np.ndarray, vectors: np.ndarray, k: int, lam: float) -> list[tuple[int, float]]:
    """``(row of vectors, MMR score)`` for the first ``k`` picks, in pick order.

    Similarities are cosines (LlamaIndex's default); ties go to the earlier row.
    """
    n = len(vectors)
    if n == 0 or k < 1:
        return []
    candidates = np.asarray(vectors, dtype=np.float64)
    candidates = candidates / np.linalg.norm(candidates, axis=1, keepdims=True)
    q = np.asarray(query, dtype=np.float64)
    relevance = candidates @ (q / np.linalg.norm(q))
    scores = lam * relevance
    picked: list[tuple[int, float]] = []
    taken = np.zeros(n, dtype=bool)
    for _ in range(min(k, n)):
        best = int(np.argmax(np.where(taken, -np.inf, scores)))
        picked.append((best, float(scores[best])))
        taken[best] = True
        scores = lam * relevance - (1.0 - lam) * (candidates @ candidates[best])
    return picked
