"""Whole-document SQL: content hashes, and deleting a document's nodes under a lock.

:class:`.PostgresVectorStore` runs these inside its write transactions
(``replace_documents``, ``replace_document_batches``, ``delete_documents``,
``document_hashes``).
"""

from __future__ import annotations

import sqlalchemy as sa

from .schema import nodes

__all__ = ["clear", "hashes"]


def hashes(connection: sa.Connection, collection_id: int) -> dict[str, str]:
    """``{ref_doc_id: metadata['doc_hash']}`` for every document of a collection."""
    doc_hash = nodes.c.metadata["doc_hash"].astext
    rows = connection.execute(
        sa.select(nodes.c.ref_doc_id, sa.func.min(doc_hash))
        .where(nodes.c.collection_id == collection_id, nodes.c.ref_doc_id.is_not(None))
        .group_by(nodes.c.ref_doc_id)
    )
    return {ref: value for ref, value in rows if value is not None}


def clear(connection: sa.Connection, collection_id: int, refs: list[str]) -> None:
    """Delete the nodes of documents ``refs``, locking them first so that concurrent
    writers of one document serialise here."""
    connection.execute(
        sa.text(
            "SELECT pg_advisory_xact_lock(hashtextextended(ref, :cid)) "
            "FROM unnest(CAST(:refs AS text[])) AS ref ORDER BY ref"
        ).bindparams(cid=collection_id, refs=sorted(refs))
    )
    connection.execute(
        nodes.delete().where(nodes.c.collection_id == collection_id, nodes.c.ref_doc_id.in_(refs))
    )
