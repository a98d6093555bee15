"""Search modes: the names users pass, and the LlamaIndex query mode each one runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:  # LlamaIndex loads when a store query is built, not for `crab --help`
    from llama_index.core.vector_stores.types import VectorStoreQueryMode

__all__ = [
    "DEFAULT_MODE",
    "HYBRID_DEPTH",
    "SEARCH_MODES",
    "SearchMode",
    "check_mode",
    "depth",
    "store_mode",
    "unranked_counts",
]

SearchMode = Literal["dense", "text", "hybrid"]
SEARCH_MODES: tuple[SearchMode, ...] = get_args(SearchMode)
# Chosen on the labelled sets (benchmarks/quality.py); the README has the numbers.
DEFAULT_MODE: SearchMode = "hybrid"
HYBRID_DEPTH = 100  # dense and text candidates fused (then cut to top_k)


def check_mode(mode: str) -> SearchMode:
    """``mode`` if it is a search mode, else a ValueError naming the choices."""
    if mode not in SEARCH_MODES:
        raise ValueError(f"search mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r}")
    return mode


def store_mode(mode: SearchMode) -> VectorStoreQueryMode:
    """The LlamaIndex query mode that runs ``mode`` on :class:`PostgresVectorStore`."""
    from llama_index.core.vector_stores.types import VectorStoreQueryMode

    return {
        "dense": VectorStoreQueryMode.DEFAULT,
        "text": VectorStoreQueryMode.TEXT_SEARCH,
        "hybrid": VectorStoreQueryMode.HYBRID,
    }[mode]


def depth(mode: str, k: int) -> int:
    """Rows each ranking fetches for ``k`` results: hybrid fuses at least ``HYBRID_DEPTH``
    of the dense and of the full-text ranking."""
    return max(k, HYBRID_DEPTH) if mode == "hybrid" else k


def unranked_counts(top_k: int | None, top_n: int | None, default: int) -> tuple[int, int]:
    """(k, n) of a search without a reranker: nothing is cut after retrieval, so ``top_n``
    results, or ``top_k`` when only that is given, else ``default``."""
    n = top_n if top_n is not None else top_k if top_k is not None else default
    return (top_k if top_k is not None else n), n
