"""Whole-document operations on a store: content hashes, and replace-in-one-transaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import sqlalchemy as sa
from llama_index.core.schema import BaseNode

from .schema import nodes

if TYPE_CHECKING:
    from .store import PostgresVectorStore

__all__ = ["document_hashes", "replace_documents"]


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
        # Lock the documents' rows first so concurrent ingests of one file serialise here.
        connection.execute(
            sa.text(
                "SELECT pg_advisory_xact_lock(hashtextextended(ref, :cid)) "
                "FROM unnest(CAST(:refs AS text[])) AS ref ORDER BY ref"
            ).bindparams(cid=collection.id, refs=sorted(documents))
        )
        connection.execute(
            nodes.delete().where(
                nodes.c.collection_id == collection.id,
                nodes.c.ref_doc_id.in_(list(documents)),
            )
        )
        if batch:
            store._write(connection, collection, batch)
