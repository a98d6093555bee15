"""Validate nodes and their vectors, and load them by binary COPY into the staging table."""

from __future__ import annotations

import itertools
import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from llama_index.core.schema import BaseNode, MetadataMode
from llama_index.core.vector_stores.utils import node_to_metadata_dict

from .errors import VectorValueError
from .schema import nodes, staging

NORM_TOLERANCE = 1e-3
Row = tuple[str, str | None, str, dict[str, Any], bytes]

COPY_SQL = (
    f"COPY {staging.name} (node_id, ref_doc_id, text, metadata, embedding) "
    "FROM STDIN WITH (FORMAT BINARY)"
)
# Binary COPY sends raw column bytes and the server decodes them with the column's own
# receive function, so pre-encoded pgvector bytes can go through psycopg's bytea dumper
# without registering the vector type on (possibly the caller's) connections.
COPY_TYPES = ["text", "text", "text", "jsonb", "bytea"]


CHUNK_ROWS = 5000


def upsert_statement(collection_id: int, text_search_config: str) -> sa.TextClause:
    """Move the staged rows into the collection, replacing nodes that already exist.

    Other transactions' uncommitted staging rows are invisible, and every ingest moves its
    own rows out before committing, so this only ever takes the current transaction's rows.
    """
    columns = ("ref_doc_id", "text", "metadata", "embedding", "text_search")
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns)
    return sa.text(
        f"WITH staged AS (DELETE FROM {staging.name} RETURNING *) "
        f"INSERT INTO {nodes.name} "
        "(collection_id, node_id, ref_doc_id, text, metadata, embedding, text_search) "
        "SELECT :collection_id, node_id, ref_doc_id, text, metadata, embedding, "
        "to_tsvector(CAST(:config AS regconfig), text) FROM staged "
        f"ON CONFLICT (collection_id, node_id) DO UPDATE SET {updates}"
    ).bindparams(collection_id=collection_id, config=text_search_config)


def chunks(rows: Iterator[Row], size: int = CHUNK_ROWS) -> Iterator[list[Row]]:
    """``rows`` in lists of ``size``, produced by a background thread one list ahead, so
    Python serialises the next chunk while the server upserts the previous one."""
    ready: queue.Queue[list[Row] | BaseException | None] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item: list[Row] | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            while chunk := list(itertools.islice(rows, size)):
                if not put(chunk):
                    return
            put(None)
        except BaseException as exc:  # handed to the consuming thread, which re-raises it
            put(exc)

    thread = threading.Thread(target=produce, name="crab-ingest", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def unit_vectors(
    vectors: Sequence[Sequence[float]] | np.ndarray,
    dimension: int,
    *,
    normalize: bool,
    label: Callable[[int], str],
    collection: str,
) -> np.ndarray:
    """Return ``vectors`` as a float32 matrix of unit vectors, or raise VectorValueError
    naming the first bad one by ``label(index)``."""
    for i, vector in enumerate(vectors):
        if len(vector) != dimension:
            raise VectorValueError(
                f"{label(i)} has {len(vector)} dimensions but collection {collection!r} stores "
                f"{dimension}-dim vectors; embed with the collection's model or use another one"
            )
    matrix = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), dimension)
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        raise VectorValueError(
            f"{label(int(np.argmin(finite)))} contains NaN or infinite values; check the model"
        )
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix, dtype=np.float64))
    if normalize:
        if (norms == 0).any():
            raise VectorValueError(f"{label(int(np.argmin(norms)))} is all zeros")
        normalised: np.ndarray = (matrix / norms[:, None]).astype(np.float32)
        return normalised
    off = np.abs(norms - 1.0) > NORM_TOLERANCE
    if off.any():
        i = int(np.argmax(off))
        raise VectorValueError(
            f"{label(i)} has norm {norms[i]:.6g}, not 1; the store keeps only L2-normalised "
            "vectors (inner product = cosine), so normalise them or pass normalize=True"
        )
    return matrix


def pgvector_binary(matrix: np.ndarray) -> list[bytes]:
    """Each row in pgvector's binary ``vector`` format: dim, unused, big-endian float4s."""
    header = np.array([matrix.shape[1], 0], dtype=">u2").tobytes()
    body = matrix.astype(">f4")
    return [header + row.tobytes() for row in body]


def check_storable(value: Any, where: str) -> None:
    """Refuse what PostgreSQL cannot store (NUL, lone surrogates) or what JSON would
    silently turn into null (NaN, infinity), naming ``where`` it was found."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(
                f"{where} contains a NUL character (0x00), which PostgreSQL text cannot "
                "store; remove it or replace it"
            )
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(
                    f"{where} is not valid Unicode ({exc.reason} at position {exc.start}); "
                    "decode the source with errors='replace'"
                ) from exc
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} holds {value!r}, which JSON cannot store; use a number")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_storable(key, f"{where} (a key)")
            check_storable(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            check_storable(item, f"{where} (an item)")


def rows_for(
    batch: Sequence[BaseNode], dimension: int, *, normalize: bool, collection: str
) -> Iterator[Row]:
    """Validate every vector of ``batch`` now, then yield its staging rows lazily, so
    serialising the nodes overlaps with the server ingesting the rows already sent.
    A node id repeated in ``batch`` keeps its last version."""
    latest = list({node.node_id: node for node in batch}.values())
    vectors = []
    for node in latest:
        if node.embedding is None:
            raise VectorValueError(
                f"node {node.node_id!r} has no embedding; embed the nodes before adding them"
            )
        vectors.append(node.embedding)
        check_storable(node.node_id, "a node id")
        check_storable(node.ref_doc_id, f"the document id of node {node.node_id!r}")
        check_storable(node.metadata, f"the metadata of node {node.node_id!r}")
        check_storable(
            node.get_content(metadata_mode=MetadataMode.NONE), f"the text of node {node.node_id!r}"
        )
    matrix = unit_vectors(
        vectors,
        dimension,
        normalize=normalize,
        label=lambda i: f"the embedding of node {latest[i].node_id!r}",
        collection=collection,
    )
    for node, blob in zip(latest, pgvector_binary(matrix), strict=True):
        # Serialising the embedding only to discard it is most of model_dump's cost.
        bare = node.model_copy(update={"embedding": None})
        metadata = node_to_metadata_dict(bare, remove_text=True, flat_metadata=False)
        text = node.get_content(metadata_mode=MetadataMode.NONE)
        yield node.node_id, node.ref_doc_id, text, metadata, blob


def copy_rows(connection: sa.Connection, rows: Iterable[Row]) -> None:
    from psycopg.copy import QueuedLibpqWriter

    raw: Any = connection.connection.driver_connection
    cursor = raw.cursor()
    # The queued writer sends from a thread while Python formats the next rows.
    with cursor, cursor.copy(COPY_SQL, writer=QueuedLibpqWriter(cursor)) as copy:
        copy.set_types(COPY_TYPES)
        for row in rows:
            copy.write_row(row)


async def acopy_rows(raw: Any, rows: Iterable[Row]) -> None:
    async with raw.cursor() as cursor, cursor.copy(COPY_SQL) as copy:
        copy.set_types(COPY_TYPES)
        for row in rows:
            await copy.write_row(row)
