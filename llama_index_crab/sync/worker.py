"""The worker: takes queued row keys, embeds the rows' current text, replaces their chunks.

One transaction per batch claims the queue items (``FOR UPDATE SKIP LOCKED``, so workers
on any number of machines share the queue), reads the rows, writes their chunks and
deletes the items: a worker killed at any point loses nothing (the items come back) and
duplicates nothing (the chunks it wrote vanish with it). A row key is held by one worker at
a time (a transaction-scoped advisory lock), so an older version of a row never overwrites
a newer one. A batch that fails is retried item by item; an item that fails keeps its
error and is retried later with a growing delay, never dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from psycopg import sql

from ..errors import DatabaseUnavailableError
from ..store.db import engine_from, translate_errors
from .rowfilter import filter_sql
from .sources import CHANNEL, QUEUE, SOURCES, Source, get_sources
from .tables import Table, describe_table, execute, key_match, qualified

__all__ = ["Worker", "WorkerReport"]

log = logging.getLogger(__name__)
BATCH_ROWS = 256
POLL_SECONDS = 5.0
# Delay before retrying a failed item: RETRY_SECONDS * 2**attempts, at most MAX_RETRY_SECONDS.
RETRY_SECONDS = 2.0
MAX_RETRY_SECONDS = 3600.0
_INTERNAL = ("source_table", "source_key", "doc_hash", "meta_hash", "chunk")


class SourceBrokenError(Exception):
    """The source's table or a watched column is gone: no row of it can be processed."""

    def __init__(self, source: Source, message: str) -> None:
        super().__init__(message)
        self.source = source


@dataclass
class WorkerReport:
    """What a worker did: rows embedded, kept, removed, skipped, and failures put back."""

    embedded: int = 0  # rows whose text was chunked and embedded
    chunks: int = 0
    reused: int = 0  # rows whose metadata changed but not their text: vectors kept
    unchanged: int = 0
    deleted: int = 0  # rows gone (deleted, truncated, left the filter): their chunks removed
    empty: int = 0  # rows whose text is NULL or blank: no chunks
    failed: int = 0  # queue items put back for a retry, with their error
    done: int = 0  # queue items finished
    errors: list[str] = field(default_factory=list)


@dataclass
class _Item:
    id: int
    source_id: int
    key: str | None  # the key as jsonb text; None: the table was truncated
    op: str


@dataclass
class _Target:
    store: Any  # PostgresVectorStore
    embedder: Any  # LlamaCppEmbedding
    chunker: Any  # Chunker


class Worker:
    """Keeps the collections fed by declared tables (all of them, or ``collections``) in sync.

    ``embed_model`` overrides the model the sources recorded (else the bundled one).
    ``batch_rows``: queue items per transaction; ``poll_seconds``: how long to wait for a
    ``NOTIFY`` before looking at the queue anyway; ``retry_seconds``: the first delay
    before a failed item is tried again (doubling with each failure); ``n_threads``:
    llama.cpp's CPU threads (None: all cores).
    """

    def __init__(
        self,
        database_url: str,
        collections: Sequence[str] = (),
        *,
        embed_model: str | None = None,
        batch_rows: int = BATCH_ROWS,
        poll_seconds: float = POLL_SECONDS,
        retry_seconds: float = RETRY_SECONDS,
        n_gpu_layers: int = 0,
        n_threads: int | None = None,
    ) -> None:
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be ≥ 1, got {batch_rows!r}")
        self.database_url = database_url
        self.collections = tuple(collections)
        self.embed_model = embed_model
        self.batch_rows = batch_rows
        self.poll_seconds = poll_seconds
        self.retry_seconds = retry_seconds
        self.n_gpu_layers = n_gpu_layers
        self.n_threads = n_threads
        self.report = WorkerReport()
        self._engine, _ = engine_from(database_url)
        self._targets: dict[str, _Target] = {}
        self._sources: dict[int, Source] = {}
        self._broken: dict[int, str] = {}

    # -- the loop ----------------------------------------------------------------------

    def run(
        self,
        *,
        once: bool = False,
        stop: threading.Event | None = None,
        progress: Callable[[WorkerReport], None] | None = None,
    ) -> WorkerReport:
        """Process the queue until ``stop`` is set (or, with ``once``, until no item is
        ready). Wakes on ``NOTIFY crab_sync``, else every ``poll_seconds``."""
        stop = stop or threading.Event()
        listener = self._listen()
        try:
            while not stop.is_set():
                try:
                    claimed, finished = self.run_batch()
                except DatabaseUnavailableError as exc:
                    if once:
                        raise
                    log.warning("%s; retrying in %.0f s", exc, self.poll_seconds)
                    stop.wait(self.poll_seconds)
                    listener = self._listen()
                    continue
                if progress is not None and claimed:
                    progress(self.report)
                if claimed and not finished:  # every key held by another worker: let it finish
                    stop.wait(0.05)
                elif not claimed:
                    if once:
                        break
                    self._wait(listener, stop)
        finally:
            if listener is not None:
                listener.close()
        return self.report

    def _listen(self) -> Any:
        import psycopg

        url = self._engine.url.set(drivername="postgresql")
        try:
            connection = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
            connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
        except psycopg.Error:
            return None  # polling still works
        return connection

    def _wait(self, listener: Any, stop: threading.Event) -> None:
        if listener is None:
            stop.wait(self.poll_seconds)
            return
        try:
            for _ in listener.notifies(timeout=self.poll_seconds, stop_after=1):
                pass
        except Exception:  # the listening connection broke: poll until it is back
            stop.wait(self.poll_seconds)

    def close(self) -> None:
        for target in self._targets.values():
            target.store.close()
        self._engine.dispose()

    # -- one batch ---------------------------------------------------------------------

    def prepare(self) -> dict[int, Source]:
        """Read the declarations feeding this worker's collections and load their models
        (each batch does it; called alone, it loads the models before any work)."""
        sources = self._load_sources()
        for source in sources.values():  # a model that does not load stops the worker here
            self._target(source)
        return sources

    def run_batch(self) -> tuple[int, int]:
        """Claim up to ``batch_rows`` ready items and process them in one transaction.
        Returns (items claimed, items finished)."""
        sources = self.prepare()
        if not sources:
            return 0, 0
        items: list[_Item] = []
        try:
            with translate_errors(self._engine.url), self._engine.begin() as connection:
                held = self._hold_sources(connection, list(sources))
                items = self._claim(connection, held, self.batch_rows)
                finished = self._process(connection, items)
                self._finish(connection, finished)
            return len(items), len(finished)
        except DatabaseUnavailableError:
            raise
        except SourceBrokenError as exc:  # its items wait; the others come again at once
            self._broken_source(exc, [i for i in items if i.source_id == exc.source.id])
            return len(items), 0
        except Exception as exc:
            if not items:
                raise
            if len(items) == 1:
                self._fail(items, exc)
                return 1, 0
            done = sum(self._run_one(item) for item in items)
            return len(items), done

    def _run_one(self, item: _Item) -> int:
        try:
            with translate_errors(self._engine.url), self._engine.begin() as connection:
                held = self._hold_sources(connection, [item.source_id])
                claimed = self._claim(connection, held, 1, item.id)
                finished = self._process(connection, claimed)
                self._finish(connection, finished)
            return len(finished)
        except DatabaseUnavailableError:
            raise
        except SourceBrokenError as exc:
            self._broken_source(exc, [item])
            return 0
        except Exception as exc:
            self._fail([item], exc)
            return 0

    def _load_sources(self) -> dict[int, Source]:
        with translate_errors(self._engine.url), self._engine.begin() as connection:
            found = get_sources(connection, self.collections)
        self._sources = {s.id: s for s in found}
        return self._sources

    def _hold_sources(self, connection: sa.Connection, ids: list[int]) -> list[int]:
        """Read these sources again, held until the batch ends: a declaration that changes
        one (its filter, its columns) waits for the batch, and a batch after it sees the
        change. Held before the queue items, in the order a source's removal takes them."""
        found = get_sources(connection, ids=ids, lock=True)
        self._sources.update((s.id, s) for s in found)
        return [s.id for s in found]

    def _claim(
        self, connection: sa.Connection, source_ids: list[int], limit: int, only: int | None = None
    ) -> list[_Item]:
        rows = connection.execute(
            sa.text(
                f"SELECT id, source_id, key::text, op FROM {QUEUE} "
                "WHERE source_id = ANY(:sources) AND next_attempt_at <= now() "
                + ("AND id = :only " if only is not None else "")
                + "ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED"
            ),
            {"sources": source_ids, "limit": limit, "only": only},
        ).all()
        return [_Item(*row) for row in rows]

    def _finish(self, connection: sa.Connection, ids: list[int]) -> None:
        if ids:
            connection.execute(sa.text(f"DELETE FROM {QUEUE} WHERE id = ANY(:ids)"), {"ids": ids})
        self.report.done += len(ids)

    def _fail(self, items: Sequence[_Item], exc: Exception) -> None:
        message = " ".join(str(exc).split())[:1000] or type(exc).__name__
        with translate_errors(self._engine.url), self._engine.begin() as connection:
            connection.execute(
                sa.text(
                    f"UPDATE {QUEUE} SET attempts = attempts + 1, last_error = :error, "
                    "next_attempt_at = now() + make_interval(secs => "
                    "least(:base * power(2, attempts), :most)) WHERE id = ANY(:ids)"
                ),
                {
                    "error": message,
                    "ids": [i.id for i in items],
                    "base": self.retry_seconds,
                    "most": MAX_RETRY_SECONDS,
                },
            )
        self.report.failed += len(items)
        if message not in self.report.errors:
            self.report.errors.append(message)
            log.error("%d queue item(s) failed, retried later: %s", len(items), message)

    def _process(self, connection: sa.Connection, items: list[_Item]) -> list[int]:
        """Bring the documents of ``items`` up to date; the ids of the items done."""
        finished: list[int] = []
        for source_id in dict.fromkeys(i.source_id for i in items):
            mine = [i for i in items if i.source_id == source_id]
            source = self._sources[source_id]
            table = self._check(connection, source)
            target = self._target(source)
            if any(i.key is None for i in mine):
                self._reconcile(connection, source, table, target)
            keys = list(dict.fromkeys(i.key for i in mine if i.key is not None))
            held = set(self._lock(connection, source, keys))
            self._sync(connection, source, table, target, [k for k in keys if k in held])
            finished += [i.id for i in mine if i.key is None or i.key in held]
        return finished

    def _check(self, connection: sa.Connection, source: Source) -> Table:
        """The source's table as it is now, or SourceBrokenError when it or a watched
        column is gone."""
        try:
            table = describe_table(connection, qualified(source.table_schema, source.table_name))
            for column in (*source.key_columns, source.text_column, *source.metadata_columns):
                table.column(column, "watched column")
            for condition in source.row_filter:
                table.column(condition.column, "filter column")
        except ValueError as exc:
            message = (
                f"collection {source.collection!r} cannot sync table {source.label!r}: {exc}; "
                "if it was renamed, declare it again: "
                f"`crab vectorize {source.label} --column COLUMN -c {source.collection}` "
                f"(or stop: `crab vectorize {source.label} -c {source.collection} --drop`)"
            )
            raise SourceBrokenError(source, message) from exc
        return table

    def _broken_source(self, exc: SourceBrokenError, items: list[_Item]) -> None:
        with translate_errors(self._engine.url), self._engine.begin() as connection:
            connection.execute(
                sa.text(f"UPDATE {SOURCES} SET last_error = :error WHERE id = :id"),
                {"error": str(exc), "id": exc.source.id},
            )
        self._fail(items, exc)

    def _lock(self, connection: sa.Connection, source: Source, keys: list[str]) -> list[str]:
        """The keys no other worker holds, now held by this transaction."""
        rows = connection.execute(
            sa.text(
                "SELECT k FROM unnest(CAST(:keys AS text[])) AS k "
                "WHERE pg_try_advisory_xact_lock(hashtextextended(k, :source))"
            ),
            {"keys": keys, "source": source.id},
        )
        return [k for (k,) in rows]

    def _target(self, source: Source) -> _Target:
        if source.collection not in self._targets:
            from ..ingest.local import splitter_for
            from ..pipeline import build_pipeline

            pipe = build_pipeline(
                self.embed_model or source.embed_model,
                None,
                database_url=self.database_url,
                collection=source.collection,
                create_collection=False,
                rerank=False,
                n_gpu_layers=self.n_gpu_layers,
            )
            with pipe.store._begin():  # the collection exists and holds this model's vectors
                pass
            if self.n_threads is not None:  # the model loads on first use, with these
                pipe.embed_model.n_threads = self.n_threads
            chunker = splitter_for(pipe.embed_model)
            self._targets[source.collection] = _Target(pipe.store, pipe.embed_model, chunker)
        return self._targets[source.collection]

    # -- documents ---------------------------------------------------------------------

    def _read(
        self, connection: sa.Connection, source: Source, table: Table, keys: list[str]
    ) -> dict[str, tuple[str | None, dict[str, Any]]]:
        """``{key: (text, metadata)}`` of the rows that exist and pass the filter."""
        selected = [sql.Identifier("t", source.text_column)] + [
            sql.SQL("to_jsonb({})").format(sql.Identifier("t", c)) for c in source.metadata_columns
        ]
        rows = execute(
            connection,
            sql.SQL(
                "SELECT k.key::text, {columns} FROM unnest(CAST({keys} AS jsonb[])) AS k(key) "
                "JOIN {table} AS t ON {match} AND {inside}"
            ).format(
                columns=sql.SQL(", ").join(selected),
                keys=sql.Literal(keys),
                table=table.ident,
                match=key_match(table, source.key_columns, "t", sql.SQL("k.key")),
                inside=filter_sql(table, source.row_filter, "t"),
            ),
        )
        return {
            key: (text, dict(zip(source.metadata_columns, values))) for key, text, *values in rows
        }

    def _sync(
        self,
        connection: sa.Connection,
        source: Source,
        table: Table,
        target: _Target,
        keys: list[str],
    ) -> None:
        if not keys:
            return
        from ..ingest.local import embed_nodes

        rows = self._read(connection, source, table, keys)
        refs = {k: source.document_id(json.loads(k)) for k in keys}
        stored = self._stored(connection, target, list(refs.values()))
        write: dict[str, list[TextNode]] = {}
        remove: list[str] = []
        to_embed: list[TextNode] = []
        to_reuse: dict[str, list[TextNode]] = {}
        for key in keys:
            ref = refs[key]
            text, meta = rows.get(key, (None, {}))
            if text is None or not text.strip():
                if key in rows:
                    self.report.empty += 1
                if ref in stored:
                    remove.append(ref)
                    self.report.deleted += key not in rows
                continue
            doc_hash = _sha(f"{text}\0{target.chunker.settings}")
            meta_hash = _sha(json.dumps(meta, sort_keys=True, default=str))
            if stored.get(ref) == (doc_hash, meta_hash):
                self.report.unchanged += 1
                continue
            nodes = self._nodes(source, target, ref, json.loads(key), text, meta, doc_hash)
            for node in nodes:
                node.metadata["meta_hash"] = meta_hash
            write[ref] = nodes
            if stored.get(ref, ("", ""))[0] == doc_hash:
                to_reuse[ref] = nodes
            else:
                to_embed += nodes
                self.report.embedded += 1
        if to_reuse:
            vectors = self._vectors(connection, target, list(to_reuse))
            for nodes in to_reuse.values():
                if all(n.node_id in vectors for n in nodes):
                    for node in nodes:
                        node.embedding = vectors[node.node_id]
                    self.report.reused += 1
                else:
                    to_embed += nodes
                    self.report.embedded += 1
        embed_nodes(target.embedder, to_embed)
        self.report.chunks += len(to_embed)
        _replace(connection, target.store, write, remove)

    def _nodes(
        self,
        source: Source,
        target: _Target,
        ref: str,
        key: dict[str, Any],
        text: str,
        meta: dict[str, Any],
        doc_hash: str,
    ) -> list[TextNode]:
        pieces = [p for p in target.chunker.splitter.split_text(text) if p.strip()]
        nodes = []
        for i, piece in enumerate(pieces):
            metadata = {
                **meta,
                "source_table": source.label,
                "source_key": key,
                "doc_hash": doc_hash,
                "chunk": i,
            }
            node = TextNode(
                id_=hashlib.sha1(f"{ref}\0{i}".encode()).hexdigest(),
                text=piece,
                metadata=metadata,
                excluded_embed_metadata_keys=[*meta, *_INTERNAL],
                excluded_llm_metadata_keys=list(_INTERNAL),
            )
            node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=ref)
            nodes.append(node)
        return nodes

    def _stored(
        self, connection: sa.Connection, target: _Target, refs: list[str]
    ) -> dict[str, tuple[str, str]]:
        collection = target.store._load(connection)
        rows = connection.execute(
            sa.text(
                "SELECT ref_doc_id, min(metadata->>'doc_hash'), min(metadata->>'meta_hash') "
                "FROM crab_nodes WHERE collection_id = :cid AND ref_doc_id = ANY(:refs) "
                "GROUP BY ref_doc_id"
            ),
            {"cid": collection.id, "refs": refs},
        )
        return {ref: (doc or "", meta or "") for ref, doc, meta in rows}

    def _vectors(
        self, connection: sa.Connection, target: _Target, refs: list[str]
    ) -> dict[str, list[float]]:
        collection = target.store._load(connection)
        rows = connection.execute(
            sa.text(
                "SELECT node_id, CAST(embedding AS real[]) FROM crab_nodes "
                "WHERE collection_id = :cid AND ref_doc_id = ANY(:refs)"
            ),
            {"cid": collection.id, "refs": refs},
        )
        return {node_id: list(vector) for node_id, vector in rows}

    def _reconcile(
        self, connection: sa.Connection, source: Source, table: Table, target: _Target
    ) -> None:
        """After a TRUNCATE or a new declaration: remove the documents of this source whose
        rows are gone or outside its filter."""
        collection = target.store._load(connection)
        owned = json.dumps({"source_table": source.label})
        gone = execute(
            connection,
            sql.SQL(
                "SELECT DISTINCT n.ref_doc_id FROM crab_nodes AS n WHERE n.collection_id = {cid} "
                "AND n.metadata @> CAST({owned} AS jsonb) AND NOT EXISTS "
                "(SELECT FROM {table} AS t WHERE {match} AND {inside})"
            ).format(
                cid=sql.Literal(collection.id),
                owned=sql.Literal(owned),
                table=table.ident,
                match=key_match(
                    table, source.key_columns, "t", sql.SQL("n.metadata -> 'source_key'")
                ),
                inside=filter_sql(table, source.row_filter, "t"),
            ),
        )
        refs = [ref for (ref,) in gone]
        _replace(connection, target.store, {}, refs)
        self.report.deleted += len(refs)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _replace(
    connection: sa.Connection,
    store: Any,
    documents: dict[str, list[TextNode]],
    removed: list[str],
) -> None:
    """Make these documents' chunks exactly ``documents`` (and none for ``removed``) inside
    the caller's transaction."""
    store.replace_documents(documents, connection=connection)
    store.delete_documents(removed, connection=connection)
