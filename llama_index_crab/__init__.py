"""llama.cpp embeddings and cross-encoder reranking for LlamaIndex, on PostgreSQL + pgvector."""

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
