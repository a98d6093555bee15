"""The recommended pipeline in one call: a bi-encoder retrieves ~100, a cross-encoder keeps K."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ModelError
from .store.modes import DEFAULT_MODE, check_mode, depth, store_mode, unranked_counts

# LlamaIndex and the models load when first needed: `crab query` chooses and checks its
# model and database with the functions here before (or without) paying for them.
if TYPE_CHECKING:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeWithScore
    from llama_index.core.vector_stores.types import MetadataFilters

    from .ingest.local import IngestReport, Progress
    from .models.chat import LlamaCppChat
    from .models.embedding import LlamaCppEmbedding
    from .models.rerank import LlamaCppRerank
    from .store.vector_store import PostgresVectorStore

__all__ = [
    "Pipeline",
    "SearchResult",
    "ask_json",
    "build_pipeline",
    "query_json",
    "require_rerank_model",
    "resolve_database_url",
    "source_name",
]

BUNDLED_MODELS = Path(__file__).resolve().parents[1] / "models"
# The default loads the bf16 file with weights="auto" (the fastest of it and its copies on this
# CPU); the q8_0 file, and the float32 copy earlier defaults loaded, serve the collections they
# filled. models/PROVENANCE.md.
BUNDLED_EMBEDDERS = {
    "bf16": "all-MiniLM-L6-v2-bf16.gguf",
    "q8_0": "all-MiniLM-L6-v2-q8_0.gguf",
    "f32": "all-MiniLM-L6-v2-bf16.gguf",
}
DEFAULT_COLLECTION = "default"
DEFAULT_TOP_N = 5  # results shown
NOTHING_TO_SEARCH = (
    "Nothing to search for: the question is only stop words or punctuation; ask with the "
    "words that matter."
)
# Small local models follow a short instruction after the sources better than a system prompt.
QA_PROMPT = (
    "{sources}\n\nUsing only the sources above, answer in two or three sentences: {question}\n"
    "End each sentence with the number of its source, like [1]. If the sources do not say, "
    "answer that you do not know."
)


def default_embed_model(recorded: str | None = None) -> str:
    """``CRAB_EMBED_MODEL``, else the clone's bundled all-MiniLM-L6-v2 (bf16; the weights it
    loads are chosen by measurement, see ``LlamaCppEmbedding(weights=...)``), else the same
    model from the Hugging Face cache, fetched there once (the ``hf`` extra). ``recorded``,
    the model a collection records: a collection filled by other bundled weights keeps them."""
    from .models import hub as _hub

    if os.environ.get("CRAB_EMBED_MODEL"):
        return os.environ["CRAB_EMBED_MODEL"]
    path = bundled_embedder(recorded)
    if path is not None:
        return str(path)
    return str(_hub.fetch(_hub.DEFAULT_EMBEDDER, "CRAB_EMBED_MODEL"))


def bundled_embedder(recorded: str | None = None) -> Path | None:
    """The bundled bf16 embedder, or the bundled weights whose content hash ``recorded``
    names (``name@hash``, as collections store it): the q8_0 file, or the float32 copy of the
    bf16 file that earlier versions loaded by default (made again in the cache if missing)."""
    from .models.gguf import file_identity

    default = _bundled("bf16") or _bundled("q8_0")
    name, _, digest = (recorded or "").rpartition("@")
    if default is None or not digest:
        return default
    kinds = ["bf16", "q8_0"] + (["f32"] if name.endswith("-f32.gguf") else [])
    for path in (p for p in map(_bundled, kinds) if p is not None):
        if file_identity(path).rpartition("@")[2] == digest:
            return path
    return default


def recorded_weights(path: str) -> str:
    """``weights=`` for the embedder a pipeline loads: "file" for the weights earlier defaults
    loaded as they are (the bundled q8_0 file, the float32 copy in the cache), so their
    collections keep the weights they were filled with; "auto" for any other model."""
    from .models.gguf import cache_root

    found = Path(path).resolve()
    q8 = (BUNDLED_MODELS / BUNDLED_EMBEDDERS["q8_0"]).resolve()
    return "file" if found == q8 or found.is_relative_to(cache_root().resolve()) else "auto"


def _bundled(kind: str) -> Path | None:
    from .models.weights import f32_copy

    path = BUNDLED_MODELS / BUNDLED_EMBEDDERS[kind]
    if not path.exists():
        return None
    return f32_copy(path) if kind == "f32" else path


def _recorded_model(urls: Sequence[str], collection: str) -> str | None:
    """The model a collection records, or None when it does not exist (yet), asked of the
    first of ``urls`` that answers (read replicas first, then the primary)."""
    import sqlalchemy as sa

    from .errors import CollectionNotFoundError
    from .store.collections import get_collection
    from .store.db import to_url, translated

    for i, url in enumerate(urls):
        engine = sa.create_engine(to_url(url))
        try:
            with engine.connect() as connection:
                return get_collection(connection, collection).identity.model
        except (CollectionNotFoundError, sa.exc.ProgrammingError):
            return None
        except sa.exc.OperationalError as exc:
            if i == len(urls) - 1:
                raise translated(exc, to_url(url)) from exc
        finally:
            engine.dispose()
    return None


def default_rerank_model() -> str | None:
    """The reranker the user configured (``CRAB_RERANK_MODEL``), else none: the bundled
    cross-encoder is a toy for tests and examples and never reranks by default."""
    return os.environ.get("CRAB_RERANK_MODEL") or None


def require_rerank_model(model: str | None) -> str:
    """``model`` or the configured reranker; an error that says how to give one."""
    chosen = model or default_rerank_model()
    if not chosen:
        raise ModelError(
            "no reranker given: pass --rerank-model (a cross-encoder GGUF path or "
            "owner/repo:file.gguf, e.g. a bge-reranker GGUF) or set CRAB_RERANK_MODEL"
        )
    return chosen


def resolve_database_url(url: str | None = None) -> str:
    """``url``, else ``CRAB_DATABASE_URL``, else the embedded server (started and migrated)."""
    chosen = url or os.environ.get("CRAB_DATABASE_URL")
    if chosen:
        return chosen
    from .server import postgres as server
    from .store import migrate

    started = server.start()
    migrate.ensure_current(started)
    return started


@dataclass
class SearchResult:
    """Reranked hits plus where the time went (seconds per stage)."""

    hits: list[NodeWithScore]
    timings: dict[str, float] = field(default_factory=dict)
    mode: str = "dense"
    reranked: bool = False
    # The text was only stop words or punctuation: nothing was searched.
    nothing_to_search: bool = False

    @property
    def stages(self) -> str:
        """Which stages ran, e.g. ``"hybrid search → rerank"``."""
        return f"{self.mode} search" + (" → rerank" if self.reranked else ", not reranked")


class Pipeline:
    """Embedding model, pgvector store and reranker wired as the field's standard pipeline."""

    def __init__(
        self,
        embed_model: LlamaCppEmbedding,
        store: PostgresVectorStore,
        reranker: LlamaCppRerank | None,
        *,
        similarity_top_k: int = 100,
        top_n: int = DEFAULT_TOP_N,
        llm: Any = None,
        mode: str = DEFAULT_MODE,
    ) -> None:
        check_mode(mode)
        if similarity_top_k < 1 or top_n < 1:
            raise ValueError(
                f"similarity_top_k and top_n must be ≥ 1, got {similarity_top_k}, {top_n}"
            )
        self.embed_model = embed_model
        self.store = store
        self.reranker = reranker
        self.similarity_top_k = similarity_top_k
        self.top_n = top_n
        self.mode = mode
        self._llm = llm
        # How ingest creates the collection if it is missing (see create_collection).
        self.collection_options: dict[str, Any] = {}

    # -- LlamaIndex objects ---------------------------------------------------------------

    @property
    def index(self) -> VectorStoreIndex:
        from llama_index.core import VectorStoreIndex

        return VectorStoreIndex.from_vector_store(self.store, embed_model=self.embed_model)

    def as_retriever(self, **kwargs: Any) -> BaseRetriever:
        """LlamaIndex's retriever over the store, in the pipeline's search mode."""
        kwargs.setdefault("similarity_top_k", self.similarity_top_k)
        kwargs.setdefault("vector_store_query_mode", store_mode(check_mode(self.mode)))
        return self.index.as_retriever(**kwargs)

    def as_query_engine(self, **kwargs: Any) -> RetrieverQueryEngine:
        """LlamaIndex's query engine: retrieve in the pipeline's mode, rerank
        ``similarity_top_k`` to ``top_n`` if there is a reranker (else retrieve ``top_n``),
        then answer as :meth:`ask` does: extractively (an :class:`ExtractiveSynthesizer`, no
        LLM called) unless a chat model is given (``llm=``, or the pipeline's ``llm``)."""
        top = self.similarity_top_k if self.reranker is not None else self.top_n
        kwargs.setdefault("similarity_top_k", top)
        kwargs.setdefault("vector_store_query_mode", store_mode(check_mode(self.mode)))
        kwargs.setdefault("node_postprocessors", [self.reranker] if self.reranker else [])
        llm = kwargs.get("llm", self._llm)
        if llm is None and "response_synthesizer" not in kwargs:
            from .answer.synthesizer import ExtractiveSynthesizer

            synthesizer = ExtractiveSynthesizer(self.embed_model, self.reranker)
            kwargs["response_synthesizer"] = synthesizer
            llm = synthesizer._llm  # a MockLLM: never called, keeps Settings.llm out of it
        kwargs["llm"] = llm if llm is not None else self.llm
        return self.index.as_query_engine(**kwargs)  # type: ignore[return-value]

    @property
    def llm(self) -> LlamaCppChat:
        """The chat model ``ask`` generates with (the default one, loaded on first use)."""
        if self._llm is None:
            from .models.chat import LlamaCppChat

            self._llm = LlamaCppChat()
        return self._llm  # type: ignore[no-any-return]

    @llm.setter
    def llm(self, value: Any) -> None:
        self._llm = value

    # -- the jobs -------------------------------------------------------------------------

    def ingest(
        self,
        paths: Iterable[str | Path],
        progress: Progress | None = None,
        *,
        executor: str = "local",
        **kwargs: Any,
    ) -> IngestReport:
        """Ingest files and folders; ``executor="ray"`` spreads the work over a Ray cluster
        (keyword arguments of :func:`llama_index_crab.ingest.distributed.ingest_distributed`).

        A missing collection is created by the first document written, in that write's
        transaction: a first ingest that fails or is cut off at any moment (an error, the
        server stopping, a full disk, Ctrl-C, a kill) leaves no empty collection. (With Ray,
        whose writers have stores of their own, it is created first and dropped again.)
        """
        if executor not in ("local", "ray"):
            raise ValueError(f"executor must be 'local' or 'ray', got {executor!r}")
        if executor == "local":
            from .ingest.local import ingest_paths

            with self.store.created_by_first_write(**self.collection_options):
                return ingest_paths(
                    paths, self.embed_model, self.store, progress=progress, **kwargs
                )
        from .ingest.distributed import ingest_distributed
        from .store.collections import collection_exists

        created = not collection_exists(self.store.client, self.store.collection_name)
        if created:
            self.store.create_collection(exist_ok=True, **self.collection_options)
        try:
            report = ingest_distributed(
                paths, self.embed_model, self.store, progress=progress, **kwargs
            )
        except BaseException:
            if created:
                _drop_if_empty(self.store)
            raise
        if created and not report.added:
            _drop_if_empty(self.store)
        return report

    def search(
        self,
        text: str,
        *,
        top_k: int | None = None,
        top_n: int | None = None,
        filters: MetadataFilters | None = None,
        rerank: bool = True,
        mode: str | None = None,
        vector: Sequence[float] | None = None,
        score: Callable[[str, list[str]], list[float]] | None = None,
    ) -> SearchResult:
        """Retrieve by ``mode`` (dense, text or hybrid), then rerank to ``top_n``; a text of
        only stop words or punctuation finds nothing (``nothing_to_search``).

        With a reranker, ``top_k`` candidates (default ``similarity_top_k``) are reranked
        and the best ``top_n`` kept. Without one (or ``rerank=False``) nothing is cut after
        retrieval: ``top_n`` results, or ``top_k`` when only that is given. ``vector``: the
        question's embedding, computed already; ``score``: what scores (question,
        candidates) instead of the reranker's own ``score`` (a server batching requests
        passes both).
        """
        mode = check_mode(mode or self.mode)
        reranking = rerank and self.reranker is not None
        if reranking:
            k = self.similarity_top_k if top_k is None else top_k
            n = self.top_n if top_n is None else top_n
        else:
            k, n = unranked_counts(top_k, top_n, self.top_n)
        if k < 1 or n < 1:
            raise ValueError(f"top_k and top_n must be ≥ 1, got {k}, {n}")
        if not text.strip():
            raise ValueError("the search text is empty; give a question or some keywords")
        if not self.store.has_terms(text):
            return SearchResult([], {}, mode, False, nothing_to_search=True)
        timings: dict[str, float] = {}
        if mode == "text":
            vector = None
        elif vector is None:
            start = time.perf_counter()
            vector = self.embed_model.get_query_embedding(text)
            timings["embed"] = time.perf_counter() - start
        start = time.perf_counter()
        from llama_index.core.schema import NodeWithScore
        from llama_index.core.vector_stores.types import VectorStoreQuery

        query = VectorStoreQuery(
            query_embedding=list(vector) if vector is not None else None,
            query_str=text,
            similarity_top_k=depth(mode, k),
            filters=filters,
            mode=store_mode(mode),
            sparse_top_k=depth(mode, k) if mode == "hybrid" else None,
            hybrid_top_k=k,
        )
        result = self.store.query(query)
        timings["search"] = time.perf_counter() - start
        hits = [
            NodeWithScore(node=node, score=score)
            for node, score in zip(result.nodes or [], result.similarities or [])
        ]
        if reranking and self.reranker is not None and hits:
            start = time.perf_counter()
            hits = self.reranker.rerank_nodes(text, hits, top_n=n, score=score)
            timings["rerank"] = time.perf_counter() - start
        return SearchResult(hits[:n], timings, mode, reranking)

    def ask(
        self, question: str, *, generate: bool | None = None, **search: Any
    ) -> tuple[SearchResult, Iterator[str]]:
        """Retrieve (and rerank), then answer citing the numbered sources as ``[n]``.

        The answer is extractive — the sources' sentences that answer best, each cited —
        unless a chat model is set (``llm=`` or ``generate=True``): then it streams a
        generated answer grounded on the sources.
        """
        found = self.search(question, **search)
        if found.nothing_to_search:
            return found, iter([NOTHING_TO_SEARCH])
        if not (self._llm is not None if generate is None else generate):
            from .answer.extractive import extract_answer, format_answer

            quotes = extract_answer(question, found.hits, self.embed_model, self.reranker)
            return found, iter([format_answer(quotes)])
        from llama_index.core.base.llms.types import ChatMessage, MessageRole
        from llama_index.core.schema import MetadataMode

        sources = "\n\n".join(
            f"[{i}] {source_name(h)}\n{h.node.get_content(metadata_mode=MetadataMode.NONE)}"
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


def _drop_if_empty(store: PostgresVectorStore) -> None:
    """Drop the store's collection if it holds no node (a first ingest that wrote nothing)."""
    from .store.collections import drop_collection, list_collections

    try:
        found = [c for c in list_collections(store.client) if c.name == store.collection_name]
        if found and found[0].count == 0:
            drop_collection(store.client, store.collection_name)
    except Exception:  # the error that got us here matters more
        pass


def query_json(
    text: str, result: SearchResult, pipe: Pipeline, timings: dict[str, float] | None = None
) -> dict[str, Any]:
    """What ``crab query --json`` prints (and ``crab serve``'s ``/query`` answers): the
    stages, the ranked passages and the milliseconds per stage (``timings``, else the
    result's own)."""
    stages = result.stages
    if not result.reranked and pipe.reranker is None:
        stages += " (no reranker set: --rerank-model or CRAB_RERANK_MODEL)"
    rows = [
        {
            "rank": i,
            "score": round(float(h.score or 0.0), 4),
            "retrieval_score": h.node.metadata.get("retrieval_score"),
            "source": source_name(h),
            "node_id": h.node.node_id,
            "text": h.node.get_content(),
        }
        for i, h in enumerate(result.hits, 1)
    ]
    spent = {k: round(v * 1000, 1) for k, v in (timings or result.timings).items()}
    out = {"query": text, "stages": stages, "results": rows, "timings_ms": spent}
    if result.nothing_to_search:
        out["note"] = NOTHING_TO_SEARCH
    return out


def ask_json(question: str, found: SearchResult, answer: str) -> dict[str, Any]:
    """What ``crab ask --json`` prints (and ``crab serve``'s ``/ask`` answers)."""
    rows = [
        {
            "n": i,
            "source": source_name(hit),
            "score": round(float(hit.score or 0.0), 4),
            "text": " ".join(hit.node.get_content().split()),
        }
        for i, hit in enumerate(found.hits, 1)
    ]
    return {"question": question, "answer": answer, "sources": rows, "stages": found.stages}


def source_name(hit: NodeWithScore) -> str:
    """How a hit's document is shown: its path relative to the folder ingested."""
    meta = hit.node.metadata
    return str(
        meta.get("file_path") or meta.get("file_name") or hit.node.ref_doc_id or hit.node.node_id
    )


def build_pipeline(
    embed_model: str | os.PathLike[str] | LlamaCppEmbedding | None = None,
    rerank_model: str | os.PathLike[str] | LlamaCppRerank | None = None,
    *,
    database_url: str | None = None,
    collection: str = DEFAULT_COLLECTION,
    similarity_top_k: int = 100,
    top_n: int = DEFAULT_TOP_N,
    llm: Any = None,
    create_collection: bool = True,
    rerank: bool = True,
    mode: str = DEFAULT_MODE,
    text_search_config: str = "english",
    read_urls: Sequence[str] = (),
    n_gpu_layers: int = 0,
    rerank_weights: str = "auto",
) -> Pipeline:
    """Wire embeddings, the pgvector store and the reranker; nothing left to do by hand.

    Without ``database_url`` (or ``CRAB_DATABASE_URL``) the embedded PostgreSQL is started in
    the user's data directory and migrated. The collection is created when missing unless
    ``create_collection=False``; a new one gets ``text_search_config`` for its full-text
    search (PostgreSQL's, e.g. ``"english"`` or ``"simple"``), an existing one keeps its own.
    Results are reranked only when a reranker is given (``rerank_model`` or
    ``CRAB_RERANK_MODEL``) and ``rerank`` is true. ``read_urls``: streaming replicas that
    serve the searches (see :class:`PostgresVectorStore`). ``n_gpu_layers`` offloads the
    models loaded here to a GPU (-1: all layers; a CPU build ignores it).
    ``rerank_weights`` chooses the reranker's weights (see ``LlamaCppRerank``).
    """
    from .models.embedding import LlamaCppEmbedding
    from .models.rerank import LlamaCppRerank
    from .store.vector_store import PostgresVectorStore

    url = resolve_database_url(database_url)
    if isinstance(embed_model, LlamaCppEmbedding):
        embedder = embed_model
    else:
        # An existing collection keeps the bundled weights it was filled with (f32, bf16, q8_0).
        recorded = None if embed_model else _recorded_model([*read_urls, url], collection)
        chosen = embed_model or default_embed_model(recorded)
        embedder = LlamaCppEmbedding(
            chosen, n_gpu_layers=n_gpu_layers, weights=recorded_weights(str(chosen))
        )
    reranker: LlamaCppRerank | None = None
    if isinstance(rerank_model, LlamaCppRerank):
        reranker = rerank_model
    elif rerank and (rerank_model or default_rerank_model()):
        reranker = LlamaCppRerank(
            require_rerank_model(str(rerank_model or "")),
            top_n=top_n,
            keep_retrieval_score=True,
            n_gpu_layers=n_gpu_layers,
            weights=rerank_weights,
        )
    identity = embedder.identity()
    store = PostgresVectorStore(url, collection, identity=identity, read_urls=read_urls)
    if create_collection:
        store.create_collection(exist_ok=True, text_search_config=text_search_config)
    pipe = Pipeline(
        embedder,
        store,
        reranker,
        similarity_top_k=similarity_top_k,
        top_n=top_n,
        llm=llm,
        mode=mode,
    )
    pipe.collection_options = {"text_search_config": text_search_config}
    return pipe
