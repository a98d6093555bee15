"""llama.cpp embeddings and cross-encoder reranking for LlamaIndex, on PostgreSQL + pgvector."""

from .chat import LlamaCppChat
from .collections import (
    EmbeddingIdentity,
    build_index,
    create_collection,
    drop_collection,
    list_collections,
)
from .embedding import LlamaCppEmbedding
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
from .pipeline import Pipeline, build_pipeline
from .rerank import LlamaCppRerank
from .store import PostgresVectorStore
from .synthesizer import ExtractiveSynthesizer

__all__ = [
    "ClusterError",
    "CollectionMismatchError",
    "CollectionNotFoundError",
    "CrabError",
    "DatabaseUnavailableError",
    "EmbeddingIdentity",
    "EmbeddingModeError",
    "ExtractiveSynthesizer",
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
    "StoreError",
    "TruncationWarning",
    "VectorValueError",
    "build_index",
    "build_pipeline",
    "create_collection",
    "drop_collection",
    "list_collections",
]
