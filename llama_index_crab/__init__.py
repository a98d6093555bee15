"""llama.cpp embeddings and cross-encoder reranking for LlamaIndex, on PostgreSQL + pgvector.

The names below load on first use (PEP 562), so ``import llama_index_crab.cli`` and the
``crab`` command pay only for what a command needs: LlamaIndex alone takes about a second
to import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .answer.synthesizer import ExtractiveSynthesizer
    from .errors import (
        ClusterError,
        CollectionMismatchError,
        CollectionNotFoundError,
        CrabError,
        DatabaseUnavailableError,
        EmbeddingModeError,
        InputTooLongError,
        ModelError,
        PgvectorMissingError,
        PoolingError,
        ReplicaWarning,
        SchemaError,
        StoreError,
        TruncationWarning,
        VectorValueError,
    )
    from .ingest.local import IngestReport
    from .models.chat import LlamaCppChat
    from .models.embedding import LlamaCppEmbedding
    from .models.rerank import LlamaCppRerank
    from .pipeline import Pipeline, SearchResult, build_pipeline
    from .store.collections import (
        CollectionInfo,
        EmbeddingIdentity,
        build_index,
        create_collection,
        drop_collection,
        list_collections,
    )
    from .store.modes import SearchMode
    from .store.vector_store import PostgresVectorStore

# Where each name lives; the rest are in .errors.
_HOMES = {
    "ExtractiveSynthesizer": ".answer.synthesizer",
    "IngestReport": ".ingest.local",
    "LlamaCppChat": ".models.chat",
    "LlamaCppEmbedding": ".models.embedding",
    "LlamaCppRerank": ".models.rerank",
    "Pipeline": ".pipeline",
    "SearchResult": ".pipeline",
    "build_pipeline": ".pipeline",
    "CollectionInfo": ".store.collections",
    "EmbeddingIdentity": ".store.collections",
    "build_index": ".store.collections",
    "create_collection": ".store.collections",
    "drop_collection": ".store.collections",
    "list_collections": ".store.collections",
    "SearchMode": ".store.modes",
    "PostgresVectorStore": ".store.vector_store",
}

__all__ = [
    "ClusterError",
    "CollectionInfo",
    "CollectionMismatchError",
    "CollectionNotFoundError",
    "CrabError",
    "DatabaseUnavailableError",
    "EmbeddingIdentity",
    "EmbeddingModeError",
    "ExtractiveSynthesizer",
    "IngestReport",
    "InputTooLongError",
    "LlamaCppChat",
    "LlamaCppEmbedding",
    "LlamaCppRerank",
    "ModelError",
    "PgvectorMissingError",
    "Pipeline",
    "PoolingError",
    "PostgresVectorStore",
    "ReplicaWarning",
    "SchemaError",
    "SearchMode",
    "SearchResult",
    "StoreError",
    "TruncationWarning",
    "VectorValueError",
    "build_index",
    "build_pipeline",
    "create_collection",
    "drop_collection",
    "list_collections",
]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES.get(name, ".errors"), __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
