"""``PostgresVectorStore``: a LlamaIndex vector store on PostgreSQL + pgvector.

It reads and writes one collection (see :mod:`llama_index_crab.store.collections`) and never
runs DDL: the schema belongs to the migrations, collections are created explicitly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import sqlalchemy as sa
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node
from sqlalchemy.ext.asyncio import AsyncEngine

from ..errors import CollectionNotFoundError
from . import documents as _documents
from . import mmr as _mmr
from . import search as _search
from .collections import Collection, EmbeddingIdentity, create_collection, get_collection
from .compiled import EF_SEARCH, ITERATIVE_SCAN, ef_search_for
from .copy import (
    acopy_payload,
    copy_payload,
    load,
    payloads_for,
    unit_vectors,
    upsert_statement,
)
from .db import async_engine_for, engine_from, translate_errors
from .replicas import Replicas
from .schema import nodes

__all__ = ["PostgresVectorStore"]

_TEXT_MODES = (VectorStoreQueryMode.TEXT_SEARCH, VectorStoreQueryMode.SPARSE)
_DENSE_MODES = (VectorStoreQueryMode.DEFAULT, VectorStoreQueryMode.MMR)
_MODES = (*_DENSE_MODES, VectorStoreQueryMode.HYBRID, *_TEXT_MODES)


class PostgresVectorStore(BasePydanticVectorStore):
    """Nodes of one collection in PostgreSQL, searched by inner product on unit vectors.

    ``identity`` (model, dimension, pooling, prefixes) is checked against the
    collection's, so vectors from another model are refused. Vectors must be
    L2-normalised unless ``normalize=True``.

    Filtered queries that match at most ``exact_threshold`` rows are answered exactly;
    broader ones walk the HNSW index with an iterative scan (``ef_search``,
    ``iterative_scan``, ``max_scan_tuples``) and fall back to exact if it comes up short.

    ``read_urls``: streaming replicas for queries and ``get_nodes`` (round-robin; writes and
    DDL go to the primary). A replica down or lagging over ``replica_max_lag`` seconds is
    skipped with a ``ReplicaWarning``. ``read_your_writes=True``: a read after this store's
    write waits until the replica replayed it, up to ``read_your_writes_timeout`` seconds,
    then reads from the primary.
    """

    stores_text: bool = True
    flat_metadata: bool = False
    collection_name: str
    normalize: bool = False
    ef_search: int = EF_SEARCH
    iterative_scan: Literal["relaxed_order", "strict_order", "off"] = ITERATIVE_SCAN
    max_scan_tuples: int | None = None
    exact_threshold: int = 2000
    read_your_writes: bool = False
    replica_max_lag: float = 10.0
    read_your_writes_timeout: float = 2.0

    _engine: sa.Engine = PrivateAttr()
    _owns_engine: bool = PrivateAttr(default=False)
    _aengine: AsyncEngine | None = PrivateAttr(default=None)
    _identity: EmbeddingIdentity | None = PrivateAttr(default=None)
    _collection: Collection | None = PrivateAttr(default=None)
    _replicas: Replicas | None = PrivateAttr(default=None)
    _pending: dict[str, Any] | None = PrivateAttr(default=None)

    def __init__(
        self,
        url_or_engine: str | sa.URL | sa.Engine,
        collection_name: str,
        identity: EmbeddingIdentity | None = None,
        *,
        read_urls: Sequence[str | sa.URL] = (),
        **fields: Any,
    ) -> None:
        super().__init__(collection_name=collection_name, **fields)  # type: ignore[call-arg]
        self._engine, self._owns_engine = engine_from(url_or_engine)
        self._identity = identity
        if read_urls:
            self._replicas = Replicas(
                read_urls, max_lag=self.replica_max_lag, wait=self.read_your_writes_timeout
            )

    @classmethod
    def class_name(cls) -> str:
        return "PostgresVectorStore"

    @property
    def client(self) -> sa.Engine:
        return self._engine

    def create_collection(self, **options: Any) -> Collection:
        """Create this store's collection for its identity (DDL, run only when asked)."""
        if self._identity is None:
            raise ValueError("pass identity=EmbeddingIdentity(...) to create a collection")
        self._collection = create_collection(
            self._engine, self.collection_name, self._identity, **options
        )
        return self._collection

    @contextmanager
    def created_by_first_write(self, **options: Any) -> Iterator[None]:
        """Within this block a missing collection is created by the first document write, in
        that write's transaction (``options`` as for :meth:`create_collection`): a run that
        fails or is cut off before it has written anything leaves no collection behind."""
        if self._identity is None:
            raise ValueError("pass identity=EmbeddingIdentity(...) to create a collection")
        self._pending = options
        try:
            yield
        finally:
            self._pending = None

    @property
    def _creating(self) -> bool:
        return self._pending is not None

    def has_terms(self, text: str) -> bool:
        """Whether ``text`` holds a word the collection's full-text search keeps; ``False``
        when it is only stop words or punctuation: there is nothing to search for."""

        def run(connection: sa.Connection, collection: Collection) -> bool:
            found = connection.scalar(
                sa.text(_search.HAS_TERMS), {"config": collection.text_search_config, "text": text}
            )
            return bool(found)

        return bool(self._read(run))

    # -- connections -------------------------------------------------------------------

    def _load(self, connection: sa.Connection, create: bool = False) -> Collection:
        if self._collection is None:
            from .migrate import check  # not at import: `python -m ...migrate` must load it first

            check(connection)
            if create and self._pending is not None and self._identity is not None:
                # Cached by _begin once this transaction commits.
                return create_collection(
                    connection,
                    self.collection_name,
                    self._identity,
                    exist_ok=True,
                    **self._pending,
                )
            collection = get_collection(connection, self.collection_name)
            if self._identity is not None:
                collection.check(self._identity)
            self._collection = collection
        return self._collection

    @contextmanager
    def _begin(self, *, create: bool = False) -> Iterator[tuple[sa.Connection, Collection]]:
        """A write transaction on the primary; ``create``: it may create the collection
        (inside :meth:`created_by_first_write`)."""
        with translate_errors(self._engine.url), self._engine.begin() as connection:
            collection = self._load(connection, create)
            yield connection, collection
        self._collection = collection
        if self._replicas is not None and self.read_your_writes:
            self._replicas.written(self._engine)

    def _read(self, function: Any, *args: Any) -> Any:
        """``function(connection, collection, *args)`` on a replica, else on the primary."""
        if self._replicas is None:
            with translate_errors(self._engine.url), self._engine.begin() as connection:
                return function(connection, self._load(connection), *args)
        return self._replicas.run(
            self._engine,
            lambda connection: function(connection, self._load(connection), *args),
            self.read_your_writes,
        )

    async def _aread(self, function: Any, *args: Any) -> Any:
        if self._replicas is None:
            return await self._arun(function, *args)
        return await self._replicas.arun(
            self._async_engine(),
            lambda connection: function(connection, self._load(connection), *args),
            self.read_your_writes,
        )

    def _async_engine(self) -> AsyncEngine:
        if self._aengine is None:
            self._aengine = async_engine_for(self._engine)
        return self._aengine

    async def _arun(self, function: Any, *args: Any) -> Any:
        """Run ``function(connection, collection, *args)`` on the async driver."""
        engine = self._async_engine()
        with translate_errors(engine.url):
            async with engine.begin() as connection:
                collection = await connection.run_sync(self._load)
                result = await connection.run_sync(function, collection, *args)
        if self._replicas is not None and self.read_your_writes:
            await self._replicas.awritten(engine)
        return result

    def close(self) -> None:
        """Close the connections this store opened (not those of an engine passed in).

        Works inside a running event loop too (``await aclose()`` is the async twin): the
        async pool is then disposed on a private loop in a worker thread, since this
        thread's loop cannot be waited on from inside it.
        """
        if self._aengine is not None:
            dispose, self._aengine = self._aengine.dispose, None
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                asyncio.run(dispose())
            else:
                with ThreadPoolExecutor(1) as worker:
                    worker.submit(asyncio.run, dispose()).result()
        if self._replicas is not None:
            self._replicas.dispose()
        if self._owns_engine:
            self._engine.dispose()

    async def aclose(self) -> None:
        if self._aengine is not None:
            await self._aengine.dispose()
            self._aengine = None
        if self._replicas is not None:
            await self._replicas.adispose()
        if self._owns_engine:
            self._engine.dispose()

    def __enter__(self) -> PostgresVectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes --------------------------------------------------------------------------

    def _payloads(self, collection: Collection, batch: Sequence[BaseNode]) -> Iterator[bytes]:
        return payloads_for(
            batch, collection.dimension, normalize=self.normalize, collection=collection.name
        )

    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Insert or replace ``nodes`` in one transaction: all of them or none."""
        if not nodes:
            return []
        with self._begin() as (connection, collection):
            self._write(connection, collection, nodes)
        return [node.node_id for node in nodes]

    def replace_documents(
        self,
        documents: Mapping[str, Sequence[BaseNode]],
        *,
        connection: sa.Connection | None = None,
    ) -> None:
        """Make each document's nodes exactly ``documents[ref_doc_id]``, all in one transaction.

        Old chunks of these documents disappear in the same commit that writes the new ones,
        so a reader or a crash never sees a document half old, half new. With ``connection``
        the writes join that open transaction (they commit or roll back with it).
        """
        if not documents:
            return
        batch = [node for chunk in documents.values() for node in chunk]
        with self._joined(connection, create=bool(batch)) as (connection, collection):
            _documents.clear(connection, collection.id, list(documents))
            if batch:
                self._write(connection, collection, batch)

    @contextmanager
    def _joined(
        self, connection: sa.Connection | None, *, create: bool = False
    ) -> Iterator[tuple[sa.Connection, Collection]]:
        """The caller's open transaction when given, else a new write transaction."""
        if connection is None:
            with self._begin(create=create) as joined:
                yield joined
        else:
            yield connection, self._load(connection)

    def replace_document_batches(
        self, ref_doc_id: str, batches: Iterable[Sequence[BaseNode]]
    ) -> None:
        """Make one document's nodes exactly those of ``batches``, in one transaction: each
        batch is written as soon as ``batches`` yields it (it may embed lazily), so only one
        batch is in memory, and still a reader or a crash sees the old document or the new."""
        with self._begin(create=True) as (connection, collection):
            _documents.clear(connection, collection.id, [ref_doc_id])
            for batch in batches:
                if batch:
                    self._write(connection, collection, batch)

    def delete_documents(
        self, ref_doc_ids: Sequence[str], *, connection: sa.Connection | None = None
    ) -> None:
        """Delete every node of these documents, in one transaction (``connection``'s open
        one, when given)."""
        if ref_doc_ids:
            with self._joined(connection) as (connection, collection):
                _documents.clear(connection, collection.id, list(ref_doc_ids))

    def document_hashes(self) -> dict[str, str]:
        """``{ref_doc_id: metadata['doc_hash']}`` for every document in the collection (read
        on the primary: ingest decides from it what to write); none for a collection that
        its first write is to create (see :meth:`created_by_first_write`)."""
        try:
            with self._begin() as (connection, collection):
                return _documents.hashes(connection, collection.id)
        except CollectionNotFoundError:
            if not self._creating:
                raise
            return {}

    def _write(
        self, connection: sa.Connection, collection: Collection, nodes: Sequence[BaseNode]
    ) -> None:
        """COPY + upsert ``nodes`` inside the caller's transaction."""
        upsert = upsert_statement(collection.id, collection.text_search_config)
        load(
            self._payloads(collection, nodes),
            copy=lambda payload: copy_payload(connection, payload),
            upsert=lambda: connection.execute(upsert),
        )

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        if not nodes:
            return []
        engine = self._async_engine()
        with translate_errors(engine.url):
            async with engine.begin() as connection:
                collection = await connection.run_sync(self._load)
                upsert = upsert_statement(collection.id, collection.text_search_config)
                raw = await connection.get_raw_connection()
                for payload in self._payloads(collection, nodes):
                    await acopy_payload(raw.driver_connection, payload)
                    await connection.execute(upsert)
        if self._replicas is not None and self.read_your_writes:
            await self._replicas.awritten(engine)
        return [node.node_id for node in nodes]

    @staticmethod
    def _delete(
        connection: sa.Connection,
        collection: Collection,
        node_ids: list[str] | None,
        filters: MetadataFilters | None,
        doc_ids: list[str] | None,
    ) -> None:
        predicate, _ = _search.where(collection, filters, node_ids, doc_ids)
        if filters is not None:
            connection.execute(sa.select(_search.CUSTOM_PLANS))
        connection.execute(nodes.delete().where(predicate))

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of document ``ref_doc_id``."""
        with self._begin() as (connection, collection):
            self._delete(connection, collection, None, None, [ref_doc_id])

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        await self._arun(self._delete, None, None, [ref_doc_id])

    @staticmethod
    def _nothing_to_delete(node_ids: list[str] | None, filters: MetadataFilters | None) -> bool:
        """No ids and no filters selects nothing (as in LlamaIndex's stores; ``clear()``
        deletes everything), and neither does an empty id list."""
        return node_ids == [] or (node_ids is None and (filters is None or not filters.filters))

    def delete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        """Delete the nodes with these ids and/or matching ``filters``; neither: nothing."""
        if self._nothing_to_delete(node_ids, filters):
            return
        with self._begin() as (connection, collection):
            self._delete(connection, collection, node_ids, filters, None)

    async def adelete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        if self._nothing_to_delete(node_ids, filters):
            return
        await self._arun(self._delete, node_ids, filters, None)

    def clear(self) -> None:
        """Delete every node of the collection; the collection and its index stay."""
        with self._begin() as (connection, collection):
            self._delete(connection, collection, None, None, None)

    async def aclear(self) -> None:
        await self._arun(self._delete, None, None, None)

    # -- reads ---------------------------------------------------------------------------

    @staticmethod
    def _get(
        connection: sa.Connection,
        collection: Collection,
        node_ids: list[str] | None,
        filters: MetadataFilters | None,
    ) -> list[BaseNode]:
        predicate, _ = _search.where(collection, filters, node_ids)
        if filters is not None:
            connection.execute(sa.select(_search.CUSTOM_PLANS))
        columns = (*_search.STORED, nodes.c.embedding)
        rows = connection.execute(sa.select(*columns).where(predicate).order_by(nodes.c.node_id))
        found = []
        for _, text, metadata, node_content, embedding in rows:
            node = metadata_dict_to_node(_search.stored_metadata(metadata, node_content), text=text)
            node.embedding = [float(x) for x in embedding]
            found.append(node)
        return found

    def get_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        """Nodes (with their embeddings) by id and/or filters; all nodes if neither."""
        found: list[BaseNode] = self._read(self._get, node_ids, filters)
        return found

    async def aget_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        found: list[BaseNode] = await self._aread(self._get, node_ids, filters)
        return found

    def _query(
        self,
        connection: sa.Connection,
        collection: Collection,
        query: VectorStoreQuery,
        options: dict[str, Any],
    ) -> VectorStoreQueryResult:
        mode = VectorStoreQueryMode(query.mode)
        if mode not in _MODES:
            raise ValueError(
                f"query mode {mode.value!r} is not supported; "
                "use default, mmr, hybrid or text_search"
            )
        k = query.similarity_top_k
        for name in ("similarity_top_k", "sparse_top_k", "hybrid_top_k"):
            value = getattr(query, name)
            if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        # LlamaIndex's retriever passes node_ids=[] for "no restriction".
        node_ids, doc_ids = query.node_ids or None, query.doc_ids or None
        predicate, narrowed = _search.where(collection, query.filters, node_ids, doc_ids)
        text_hits: list[_search.Hit] = []
        if mode not in _DENSE_MODES:
            if not query.query_str:
                raise ValueError(f"query mode {mode.value!r} needs query.query_str")
            sparse_k = query.sparse_top_k or k
            connection.execute(sa.select(_search.CUSTOM_PLANS))
            statement = _search.text(collection, query.query_str, sparse_k, predicate)
            text_hits = [_search.hit(row) for row in connection.execute(statement)]
            if mode in _TEXT_MODES:
                return _result(text_hits)
        if query.query_embedding is None:
            raise ValueError(f"query mode {mode.value!r} needs query.query_embedding")
        vector = unit_vectors(
            [query.query_embedding],
            collection.dimension,
            normalize=self.normalize,
            label=lambda _: "the query embedding",
            collection=collection.name,
        )[0]
        mmr = mode == VectorStoreQueryMode.MMR
        # MMR picks k among the nearest `fetch`, diversity from their stored vectors.
        fetch = _mmr.prefetch_size(k, options) if mmr else k
        lam = (
            _mmr.threshold(
                query.mmr_threshold
                if query.mmr_threshold is not None
                else options.get("mmr_threshold")
            )
            if mmr
            else 1.0
        )
        ef_search = ef_search_for(fetch, int(options.get("ef_search", self.ef_search)))
        connection.execute(_search.settings(ef_search, self.iterative_scan, self.max_scan_tuples))
        # Without an iterative scan the index yields at most ef_search rows.
        exact = bool(options.get("exact", False)) or node_ids is not None
        exact = exact or (fetch > ef_search and self.iterative_scan == "off")
        rows: Sequence[sa.Row[Any]] = []
        if narrowed and not exact and self.exact_threshold > 0:
            candidates = _search.probe(
                vector, fetch, predicate, self.exact_threshold, with_embedding=mmr
            )
            probed = connection.execute(candidates).all()
            if not probed or probed[0].matched <= self.exact_threshold:
                exact = True
                rows = probed
        if not exact or not rows:
            statement = _search.dense(
                collection, vector, fetch, predicate, exact=exact, with_embedding=mmr
            )
            rows = connection.execute(statement).all()
        if narrowed and not exact and len(rows) < fetch:
            # A very selective filter can exhaust even an iterative index scan.
            statement = _search.dense(
                collection, vector, fetch, predicate, exact=True, with_embedding=mmr
            )
            rows = connection.execute(statement).all()
        # relaxed_order iterative scans may swap a few
        rows = sorted(rows, key=lambda row: -float(row.score))
        if mmr:
            return _mmr_result(vector, rows, k, lam)
        dense = [_search.hit(row) for row in rows]
        if mode == VectorStoreQueryMode.DEFAULT:
            return _result(dense)
        return _result(_search.fuse(dense, text_hits, query.hybrid_top_k or k, query.alpha))

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """Search the collection. Modes: default (dense), mmr (dense, then maximal marginal
        relevance: ``mmr_threshold``, ``mmr_prefetch_factor`` or ``mmr_prefetch_k``), hybrid
        (dense + full text fused by reciprocal rank), text_search. ``ef_search=`` and
        ``exact=True`` may be passed."""
        result: VectorStoreQueryResult = self._read(self._query, query, kwargs)
        return result

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        result: VectorStoreQueryResult = await self._aread(self._query, query, kwargs)
        return result


def _result(hits: Sequence[_search.Hit]) -> VectorStoreQueryResult:
    return VectorStoreQueryResult(
        nodes=[metadata_dict_to_node(metadata, text=text) for _, text, metadata, _ in hits],
        similarities=[score for *_, score in hits],
        ids=[node_id for node_id, *_ in hits],
    )


def _mmr_result(
    query: np.ndarray, rows: Sequence[sa.Row[Any]], k: int, lam: float
) -> VectorStoreQueryResult:
    """The MMR order of ``rows`` (nearest first, each with its stored ``embedding``);
    similarities are the MMR scores, as LlamaIndex reports them."""
    if not rows:
        return _result([])
    vectors = np.stack([np.asarray(row.embedding, dtype=np.float32) for row in rows])
    picked = _mmr.select(query, vectors, k, lam)
    return _result([(*_search.hit(rows[i])[:3], score) for i, score in picked])
