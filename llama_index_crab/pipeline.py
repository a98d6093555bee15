"""The recommended pipeline in one call: a bi-encoder retrieves ~100, a cross-encoder keeps K."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.schema import MetadataMode, NodeWithScore
from llama_index.core.vector_stores.types import MetadataFilters, VectorStoreQuery

from .embedding import LlamaCppEmbedding
from .errors import ModelError
from .rerank import LlamaCppRerank

if TYPE_CHECKING:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.retrievers import BaseRetriever

    from .chat import LlamaCppChat
    from .ingest import IngestReport, Progress
    from .store import PostgresVectorStore

__all__ = ["Pipeline", "SearchResult", "build_pipeline", "resolve_database_url"]

BUNDLED_MODELS = Path(__file__).resolve().parents[1] / "models"
DEFAULT_COLLECTION = "default"
# Small local models follow a short instruction after the sources better than a system prompt.
QA_PROMPT = (
    "{sources}\n\nUsing only the sources above, answer in two or three sentences: {question}\n"
    "End each sentence with the number of its source, like [1]. If the sources do not say, "
    "answer that you do not know."
)


def _model(kind: str, env: str, bundled: str) -> str:
    if os.environ.get(env):
        return os.environ[env]
    path = BUNDLED_MODELS / bundled
    if path.exists():
        return str(path)
    raise ModelError(f"no {kind} model given: pass a GGUF path or Hugging Face spec, or set {env}")


def default_embed_model() -> str:
    return _model("embedding", "CRAB_EMBED_MODEL", "all-MiniLM-L6-v2-q8_0.gguf")


def default_rerank_model() -> str:
    return _model("reranker", "CRAB_RERANK_MODEL", "minilm-toy-reranker-q8_0.gguf")


def resolve_database_url(url: str | None = None) -> str:
    """``url``, else ``CRAB_DATABASE_URL``, else the embedded server (started and migrated)."""
    chosen = url or os.environ.get("CRAB_DATABASE_URL")
    if chosen:
        return chosen
    from . import migrate, server

    started = server.start()
    migrate.upgrade(started)
    return started


@dataclass
class SearchResult:
    """Reranked hits plus where the time went (seconds per stage)."""

    hits: list[NodeWithScore]
    timings: dict[str, float] = field(default_factory=dict)


class Pipeline:
    """Embedding model, pgvector store and reranker wired as the field's standard pipeline."""

    def __init__(
        self,
        embed_model: LlamaCppEmbedding,
        store: PostgresVectorStore,
        reranker: LlamaCppRerank | None,
        *,
        similarity_top_k: int = 100,
        top_n: int = 5,
        llm: Any = None,
    ) -> None:
        if similarity_top_k < 1 or top_n < 1:
            raise ValueError(
                f"similarity_top_k and top_n must be ≥ 1, got {similarity_top_k}, {top_n}"
            )
        self.embed_model = embed_model
        self.store = store
        self.reranker = reranker
        self.similarity_top_k = similarity_top_k
        self.top_n = top_n
        self._llm = llm

    # -- LlamaIndex objects ---------------------------------------------------------------

    @property
    def index(self) -> VectorStoreIndex:
        from llama_index.core import VectorStoreIndex

        return VectorStoreIndex.from_vector_store(self.store, embed_model=self.embed_model)

    def as_retriever(self, **kwargs: Any) -> BaseRetriever:
        kwargs.setdefault("similarity_top_k", self.similarity_top_k)
        return self.index.as_retriever(**kwargs)

    def as_query_engine(self, **kwargs: Any) -> RetrieverQueryEngine:
        """Retrieve ``similarity_top_k``, rerank to ``top_n``, answer with the LLM."""
        kwargs.setdefault("similarity_top_k", self.similarity_top_k)
        kwargs.setdefault("node_postprocessors", [self.reranker] if self.reranker else [])
        kwargs.setdefault("llm", self.llm)
        return self.index.as_query_engine(**kwargs)  # type: ignore[return-value]

    @property
    def llm(self) -> LlamaCppChat:
        if self._llm is None:
            from .chat import LlamaCppChat

            self._llm = LlamaCppChat()
        return self._llm  # type: ignore[no-any-return]

    # -- the jobs -------------------------------------------------------------------------

    def ingest(
        self, paths: Iterable[str | Path], progress: Progress | None = None, **kwargs: Any
    ) -> IngestReport:
        from .ingest import ingest_paths

        return ingest_paths(paths, self.embed_model, self.store, progress=progress, **kwargs)

    def search(
        self,
        text: str,
        *,
        top_k: int | None = None,
        top_n: int | None = None,
        filters: MetadataFilters | None = None,
        rerank: bool = True,
    ) -> SearchResult:
        """Retrieve ``top_k`` by vector, then keep the cross-encoder's best ``top_n``."""
        k = self.similarity_top_k if top_k is None else top_k
        n = self.top_n if top_n is None else top_n
        if k < 1 or n < 1:
            raise ValueError(f"top_k and top_n must be ≥ 1, got {k}, {n}")
        timings: dict[str, float] = {}
        start = time.perf_counter()
        vector = self.embed_model.get_query_embedding(text)
        timings["embed"] = time.perf_counter() - start
        start = time.perf_counter()
        result = self.store.query(
            VectorStoreQuery(query_embedding=vector, similarity_top_k=k, filters=filters)
        )
        timings["search"] = time.perf_counter() - start
        hits = [
            NodeWithScore(node=node, score=score)
            for node, score in zip(result.nodes or [], result.similarities or [])
        ]
        if rerank and self.reranker is not None and hits:
            start = time.perf_counter()
            texts = [h.node.get_content(metadata_mode=MetadataMode.EMBED) for h in hits]
            for hit, score in zip(hits, self.reranker.score(text, texts)):
                hit.node.metadata["retrieval_score"] = hit.score
                hit.score = score
            hits.sort(key=lambda h: -(h.score or 0.0))
            timings["rerank"] = time.perf_counter() - start
        hits = hits[:n]
        return SearchResult(hits, timings)

    def ask(self, question: str, **search: Any) -> tuple[SearchResult, Iterator[str]]:
        """Retrieve, rerank, then stream a grounded answer citing the numbered sources."""
        found = self.search(question, **search)
        sources = "\n\n".join(
            f"[{i}] {_source_name(h)}\n{h.node.get_content(metadata_mode=MetadataMode.NONE)}"
            for i, h in enumerate(found.hits, 1)
        )
        prompt = QA_PROMPT.format(sources=sources, question=question)
        messages = [ChatMessage(role=MessageRole.USER, content=prompt)]
        llm = self.llm
        return found, (chunk.delta or "" for chunk in llm.stream_chat(messages))

    def close(self) -> None:
        """Free the models and the database connections."""
        self.embed_model.close()
        if self.reranker is not None:
            self.reranker.close()
        if self._llm is not None and hasattr(self._llm, "close"):
            self._llm.close()
        self.store.close()


def _source_name(hit: NodeWithScore) -> str:
    meta = hit.node.metadata
    return str(
        meta.get("file_name") or meta.get("file_path") or hit.node.ref_doc_id or hit.node.node_id
    )


def build_pipeline(
    embed_model: str | os.PathLike[str] | LlamaCppEmbedding | None = None,
    rerank_model: str | os.PathLike[str] | LlamaCppRerank | None = None,
    *,
    database_url: str | None = None,
    collection: str = DEFAULT_COLLECTION,
    similarity_top_k: int = 100,
    top_n: int = 5,
    llm: Any = None,
    create_collection: bool = True,
    rerank: bool = True,
) -> Pipeline:
    """Wire embeddings, the pgvector store and the reranker; nothing left to do by hand.

    Without ``database_url`` (or ``CRAB_DATABASE_URL``) the embedded PostgreSQL is started in
    the user's data directory and migrated. The collection is created when missing unless
    ``create_collection=False``.
    """
    from .store import PostgresVectorStore

    embedder = (
        embed_model
        if isinstance(embed_model, LlamaCppEmbedding)
        else LlamaCppEmbedding(embed_model or default_embed_model())
    )
    reranker: LlamaCppRerank | None = None
    if isinstance(rerank_model, LlamaCppRerank):
        reranker = rerank_model
    elif rerank:
        reranker = LlamaCppRerank(rerank_model or default_rerank_model(), top_n=top_n)
    identity = embedder.identity()
    store = PostgresVectorStore(resolve_database_url(database_url), collection, identity=identity)
    if create_collection:
        store.create_collection(exist_ok=True)
    return Pipeline(
        embedder, store, reranker, similarity_top_k=similarity_top_k, top_n=top_n, llm=llm
    )
