"""Whole-document operations on a store: content hashes, and replace-in-one-transaction."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import sqlalchemy as sa
from llama_index.core.schema import BaseNode

from .schema import nodes

if TYPE_CHECKING:
    from .vector_store import PostgresVectorStore

__all__ = ["delete_documents", "document_hashes", "replace_document_batches", "replace_documents"]


def document_hashes(store: PostgresVectorStore) -> dict[str, str]:
    """``{ref_doc_id: metadata['doc_hash']}`` for every document in the store's collection."""
    doc_hash = nodes.c.metadata["doc_hash"].astext
    with store._begin() as (connection, collection):
        rows = connection.execute(
            sa.select(nodes.c.ref_doc_id, sa.func.min(doc_hash))
            .where(nodes.c.collection_id == collection.id, nodes.c.ref_doc_id.is_not(None))
            .group_by(nodes.c.ref_doc_id)
        )
        return {ref: value for ref, value in rows if value is not None}


def replace_documents(
    store: PostgresVectorStore, documents: Mapping[str, Sequence[BaseNode]]
) -> None:
    """Make each document's nodes exactly ``documents[ref_doc_id]``, all in one transaction.

    Old chunks of these documents disappear in the same commit that writes the new ones, so
    a reader or a crash never sees a document half old, half new.
    """
    if not documents:
        return
    batch = [node for chunk in documents.values() for node in chunk]
    with store._begin() as (connection, collection):
        _clear(connection, collection.id, list(documents))
        if batch:
            store._write(connection, collection, batch)


def replace_document_batches(
    store: PostgresVectorStore, ref_doc_id: str, batches: Iterable[Sequence[BaseNode]]
) -> None:
    """Make one document's nodes exactly those of ``batches``, in one transaction.

    For a large document: each batch is written as soon as ``batches`` yields it (it may
    embed lazily), so only one batch has to be in memory, and still a reader or a crash
    sees the old document or the whole new one.
    """
    with store._begin() as (connection, collection):
        _clear(connection, collection.id, [ref_doc_id])
        for batch in batches:
            if batch:
                store._write(connection, collection, batch)


def delete_documents(store: PostgresVectorStore, ref_doc_ids: Sequence[str]) -> None:
    """Delete every node of these documents, in one transaction."""
    if ref_doc_ids:
        with store._begin() as (connection, collection):
            _clear(connection, collection.id, list(ref_doc_ids))


def _clear(connection: sa.Connection, collection_id: int, refs: list[str]) -> None:
    # Lock the documents' rows first so concurrent ingests of one file serialise here.
    connection.execute(
        sa.text(
            "SELECT pg_advisory_xact_lock(hashtextextended(ref, :cid)) "
            "FROM unnest(CAST(:refs AS text[])) AS ref ORDER BY ref"
        ).bindparams(cid=collection_id, refs=sorted(refs))
    )
    connection.execute(
        nodes.delete().where(nodes.c.collection_id == collection_id, nodes.c.ref_doc_id.in_(refs))
    )
