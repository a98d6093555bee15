"""What a collection is: its row and the identity of the model that fills it. No SQLAlchemy
here, so a cold `crab query` reads a collection without loading it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from ..errors import CollectionMismatchError

if TYPE_CHECKING:
    from sqlalchemy.types import UserDefinedType

__all__ = [
    "HNSW_INDEX_PREFIX",
    "POOLINGS",
    "PRECISIONS",
    "TEXT_INDEX_PREFIX",
    "Collection",
    "EmbeddingIdentity",
    "collection_from_row",
]

HNSW_INDEX_PREFIX = "crab_nodes_hnsw_"
# Each collection's full-text (GIN) index, partial like its HNSW index, so a term's index
# scan reads this collection's rows only, not every collection's (migration 0004).
TEXT_INDEX_PREFIX = "crab_nodes_text_"
POOLINGS = ("mean", "cls", "last")
PRECISIONS = ("vector", "halfvec")


@dataclass(frozen=True)
class EmbeddingIdentity:
    """What produced a collection's vectors: the model, its dimension, pooling and prefixes."""

    model: str
    dimension: int
    pooling: str
    query_prefix: str = ""
    text_prefix: str = ""

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must be a non-empty string, e.g. the GGUF file name and hash")
        if isinstance(self.dimension, bool) or not 1 <= self.dimension <= 16000:
            raise ValueError(f"dimension must be an int from 1 to 16000, got {self.dimension!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")

    def describe(self) -> str:
        return f"model {self.model!r} ({self.dimension}-dim, {self.pooling} pooling)"

    @property
    def model_key(self) -> str:
        """What identifies the model: the content hash of ``name@hash`` (as
        ``LlamaCppEmbedding.identity()`` makes it), so a renamed copy of the same file
        is the same model; any other model string as it is."""
        name, at, digest = self.model.rpartition("@")
        return digest if at and name and digest else self.model


@dataclass(frozen=True)
class Collection:
    """A collection row: its identity and how its vectors are indexed."""

    id: int
    name: str
    identity: EmbeddingIdentity
    precision: str
    hnsw_m: int
    hnsw_ef_construction: int
    text_search_config: str

    @property
    def index_name(self) -> str:
        return f"{HNSW_INDEX_PREFIX}{self.id}"

    @property
    def text_index_name(self) -> str:
        return f"{TEXT_INDEX_PREFIX}{self.id}"

    @property
    def dimension(self) -> int:
        return self.identity.dimension

    def vector_type(self) -> UserDefinedType[object]:
        """The typed cast the index is built on; queries must use exactly this."""
        from pgvector.sqlalchemy import HALFVEC, VECTOR

        return HALFVEC(self.dimension) if self.precision == "halfvec" else VECTOR(self.dimension)

    def check(self, identity: EmbeddingIdentity) -> None:
        """Raise :class:`CollectionMismatchError` unless ``identity`` is this collection's."""
        differ = [
            f.name
            for f in fields(identity)
            if f.name != "model" and getattr(identity, f.name) != getattr(self.identity, f.name)
        ]
        if identity.model_key != self.identity.model_key:
            differ.insert(0, "model")
        if differ:
            raise CollectionMismatchError(
                f"collection {self.name!r} holds vectors of {self.identity.describe()} but "
                f"this store uses {identity.describe()} (different: {', '.join(differ)}); "
                "use another collection or re-embed into a new one"
            )


def collection_from_row(m: Mapping[Any, Any]) -> Collection:
    """A ``Collection`` from a row of the collections table, by column name."""
    identity = EmbeddingIdentity(
        m["model"], m["dimension"], m["pooling"], m["query_prefix"], m["text_prefix"]
    )
    return Collection(
        m["id"],
        m["name"],
        identity,
        m["precision"],
        m["hnsw_m"],
        m["hnsw_ef_construction"],
        m["text_search_config"],
    )
