"""llama.cpp embeddings and cross-encoder reranking for LlamaIndex, stored in PostgreSQL + pgvector."""

from .embedding import LlamaCppEmbedding
from .rerank import LlamaCppRerank
from .errors import (
    CollectionMismatchError,
    CollectionNotFoundError,
    CrabError,
    DatabaseUnavailableError,
    EmbeddingModeError,
    InputTooLongError,
    ModelError,
    PgvectorMissingError,
    PoolingError,
    SchemaError,
    StoreError,
    TruncationWarning,
    VectorValueError,
)

__all__ = [
    "CollectionMismatchError",
    "CollectionNotFoundError",
    "CrabError",
    "DatabaseUnavailableError",
    "EmbeddingModeError",
    "InputTooLongError",
    "LlamaCppEmbedding",
    "LlamaCppRerank",
    "ModelError",
    "PgvectorMissingError",
    "PoolingError",
    "SchemaError",
    "StoreError",
    "TruncationWarning",
    "VectorValueError",
]
