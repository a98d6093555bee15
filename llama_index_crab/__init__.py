"""llama.cpp embeddings and cross-encoder reranking for LlamaIndex, stored in PostgreSQL + pgvector."""

from .chat import LlamaCppChat
from .embedding import LlamaCppEmbedding
from .pipeline import Pipeline, build_pipeline
from .rerank import LlamaCppRerank
from .store import PostgresVectorStore
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
    "LlamaCppChat",
    "LlamaCppEmbedding",
    "LlamaCppRerank",
    "ModelError",
    "PgvectorMissingError",
    "Pipeline",
    "PoolingError",
    "PostgresVectorStore",
    "SchemaError",
    "StoreError",
    "TruncationWarning",
    "VectorValueError",
    "build_pipeline",
]
