"""Validate nodes and their vectors, and load them by binary COPY into the staging table."""

from __future__ import annotations

import functools
import json
import math
import struct
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa
from pydantic_core import PydanticSerializationError

from ..errors import VectorValueError
from .schema import nodes, staging

if TYPE_CHECKING:  # LlamaIndex loads when nodes are written, not to read a collection
    from llama_index.core.schema import BaseNode

NORM_TOLERANCE = 1e-3
# Rows per COPY + upsert round trip: small enough that encoding the next payload overlaps
# the server's work on this one, large enough that round trips do not count (measured).
ROWS_PER_COPY = 2000
EDGE_COPY_ROWS = 250

COPY_SQL = (
    f"COPY {staging.name} (node_id, ref_doc_id, text, metadata, node_content, embedding) "
    "FROM STDIN WITH (FORMAT BINARY)"
)
# PostgreSQL's binary COPY format, written by hand: psycopg's row-by-row formatting (and its
# jsonb dumper's json.dumps) cost more than encoding the whole payload here, and the
# server decodes each field with its column's own receive function, so pgvector's binary
# ``vector`` needs no type registered on (possibly the caller's) connections.
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_FIELD_COUNT = struct.pack("!h", 6)
_NULL = struct.pack("!i", -1)
_LENGTH = struct.Struct("!i")
# Left out of ``_node_content``: the vector and the text have their own columns.
_NOT_IN_CONTENT = {"embedding", "text", "text_resource"}


def upsert_statement(collection_id: int, text_search_config: str) -> sa.TextClause:
    """Move the staged rows into the collection, replacing nodes that already exist.

    Other transactions' uncommitted staging rows are invisible, and every ingest moves its
    own rows out before committing, so this only ever takes the current transaction's rows.
    """
    columns = ("ref_doc_id", "text", "metadata", "node_content", "embedding", "text_search")
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns)
    return sa.text(
        f"WITH staged AS (DELETE FROM {staging.name} WHERE xact = pg_current_xact_id() "
        "RETURNING *) "
        f"INSERT INTO {nodes.name} "
        "(collection_id, node_id, ref_doc_id, text, metadata, node_content, embedding, "
        "text_search) "
        "SELECT :collection_id, node_id, ref_doc_id, text, metadata, node_content, embedding, "
        "to_tsvector(CAST(:config AS regconfig), text) FROM staged "
        f"ON CONFLICT (collection_id, node_id) DO UPDATE SET {updates}"
    ).bindparams(collection_id=collection_id, config=text_search_config)


def load(
    payloads: Iterator[bytes], copy: Callable[[bytes], object], upsert: Callable[[], object]
) -> None:
    """COPY and upsert each payload; a worker thread encodes the next payload while the
    server runs the upsert, so Python and PostgreSQL work at the same time.

    The encoder never runs during a COPY: the thread sending COPY data needs the GIL for
    every socket write, and waiting for it behind a busy encoder costs up to
    ``sys.getswitchinterval()`` (5 ms) each time, which made COPY three times slower.
    """
    payload = next(payloads, None)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="crab-ingest") as pool:
        while payload is not None:
            copy(payload)
            upcoming = pool.submit(next, payloads, None)
            upsert()
            payload = upcoming.result()


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


def payload_sizes(rows: int) -> list[int]:
    """Rows per payload: ``ROWS_PER_COPY`` in the middle, ramping up from and down to
    ``EDGE_COPY_ROWS``, since neither the first encoding nor the last upsert has the
    other side's work to overlap with."""
    ramp: list[int] = []
    size = EDGE_COPY_ROWS
    while size < ROWS_PER_COPY and 2 * (sum(ramp) + size) <= rows:
        ramp.append(size)
        size *= 2
    middle = rows - 2 * sum(ramp)
    count = -(-middle // ROWS_PER_COPY)
    sizes = [middle // count + (i < middle % count) for i in range(count)] if middle else []
    return ramp + sizes + ramp[::-1]


def payloads_for(
    batch: Sequence[BaseNode], dimension: int, *, normalize: bool, collection: str
) -> Iterator[bytes]:
    """COPY payloads (binary format, up to ``ROWS_PER_COPY`` rows each) for ``batch``.

    Vectors are validated a payload at a time, just before it is encoded; the caller
    writes every payload inside one transaction, so an error rolls all of them back.
    A node id repeated in ``batch`` keeps its last version.
    """
    latest = list({node.node_id: node for node in batch}.values())
    start = 0
    for size in payload_sizes(len(latest)):
        part = latest[start : start + size]
        start += size
        for node in part:
            if node.embedding is None:
                raise VectorValueError(
                    f"node {node.node_id!r} has no embedding; embed the nodes before adding them"
                )
        matrix = unit_vectors(
            [node.get_embedding() for node in part],
            dimension,
            normalize=normalize,
            label=functools.partial(_embedding_label, part),
            collection=collection,
        )
        encoded = [COPY_SIGNATURE]
        encoded += [encode_row(node, blob) for node, blob in zip(part, pgvector_binary(matrix))]
        yield b"".join(encoded)


def _embedding_label(nodes: Sequence[BaseNode], index: int) -> str:
    return f"the embedding of node {nodes[index].node_id!r}"


def node_columns(node: BaseNode) -> tuple[str, str]:
    """The ``metadata`` (JSON) and ``node_content`` columns: together what LlamaIndex's
    ``node_to_metadata_dict`` makes (the node's metadata, its doc id keys and the node as
    JSON in ``_node_content``), built without serialising the embedding or the text
    (they have their own columns)."""
    content = node.model_dump_json(exclude=_NOT_IN_CONTENT)
    ref = node.ref_doc_id or "None"
    extra = {"_node_type": node.class_name(), "document_id": ref, "doc_id": ref, "ref_doc_id": ref}
    try:
        metadata = json.dumps({**node.metadata, **extra}, ensure_ascii=False, allow_nan=False)
    except TypeError:  # values only pydantic can put into JSON (dates, enums, ...)
        plain = json.loads(content)["metadata"]
        metadata = json.dumps({**plain, **extra}, ensure_ascii=False, allow_nan=False)
    return metadata, content


def encode_row(node: BaseNode, vector: bytes) -> bytes:
    """One row of the staging COPY, or a ValueError naming what PostgreSQL cannot store."""
    from llama_index.core.schema import MetadataMode

    text = node.get_content(metadata_mode=MetadataMode.NONE)
    ref = node.ref_doc_id
    try:
        node_id, body = node.node_id.encode(), text.encode()
        ref_id = None if ref is None else ref.encode()
        metadata_json, content_json = node_columns(node)
        metadata, content = metadata_json.encode(), content_json.encode()
    except (ValueError, PydanticSerializationError) as exc:  # NaN, lone surrogates, ...
        _check_node(node, text)
        raise ValueError(f"node {node.node_id!r} cannot be stored as JSON: {exc}") from exc
    # NUL is legal in Python strings; in the JSON it shows up as an escape.
    if b"\0" in node_id or b"\0" in body or b"\0" in (ref_id or b"") or b"\\u0000" in metadata:
        _check_node(node, text)  # says exactly what is wrong (or finds a harmless lookalike)
    return b"".join(
        (
            _FIELD_COUNT,
            _LENGTH.pack(len(node_id)),
            node_id,
            _NULL if ref_id is None else _LENGTH.pack(len(ref_id)) + ref_id,
            _LENGTH.pack(len(body)),
            body,
            _LENGTH.pack(len(metadata) + 1),
            b"\x01",  # jsonb's binary format: a version byte, then the JSON text
            metadata,
            _LENGTH.pack(len(content)),
            content,
            _LENGTH.pack(len(vector)),
            vector,
        )
    )


def _check_node(node: BaseNode, text: str) -> None:
    check_storable(node.node_id, "a node id")
    check_storable(node.ref_doc_id, f"the document id of node {node.node_id!r}")
    check_storable(node.metadata, f"the metadata of node {node.node_id!r}")
    check_storable(text, f"the text of node {node.node_id!r}")


def copy_payload(connection: sa.Connection, payload: bytes) -> None:
    """Send one ``payloads_for`` payload into the staging table."""
    raw: Any = connection.connection.driver_connection
    with raw.cursor() as cursor, cursor.copy(COPY_SQL) as copy:
        copy.write(payload)


async def acopy_payload(raw: Any, payload: bytes) -> None:
    async with raw.cursor() as cursor, cursor.copy(COPY_SQL) as copy:
        await copy.write(payload)
