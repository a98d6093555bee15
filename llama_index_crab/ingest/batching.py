"""Which chunks are embedded together and written in one transaction: pure, shared by the
single-process and the Ray ingest, so both embed the same batches (llama.cpp's vectors
depend slightly on which texts share a decode)."""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["Batcher", "Slice", "WriteGroup"]

T = TypeVar("T")

# (document, first chunk, end chunk): one document's chunks in one embedding call.
Slice = tuple[T, int, int]
# Embedding calls (each a list of slices) whose documents are written in one transaction.
WriteGroup = list[list[Slice[T]]]


class Batcher(Generic[T]):
    """Packs documents, in order, into embedding calls of about ``batch_chunks`` chunks.

    Small documents are pooled until they reach ``batch_chunks`` chunks: one call, one
    transaction. A document with more chunks gets a group of its own: one call per
    ``batch_chunks`` chunks, all written in one transaction so that it stays whole.
    """

    def __init__(self, batch_chunks: int) -> None:
        if batch_chunks < 1:
            raise ValueError(f"batch_chunks must be ≥ 1, got {batch_chunks!r}")
        self.batch_chunks = batch_chunks
        self._pending: list[Slice[T]] = []
        self._pending_chunks = 0

    def add(self, document: T, chunks: int) -> list[WriteGroup[T]]:
        """Take a document of ``chunks`` chunks; return the groups now complete."""
        size = self.batch_chunks
        if chunks > size:
            return [
                *self.flush(),
                [[(document, s, min(s + size, chunks))] for s in range(0, chunks, size)],
            ]
        self._pending.append((document, 0, chunks))
        self._pending_chunks += chunks
        return self.flush() if self._pending_chunks >= size else []

    def flush(self) -> list[WriteGroup[T]]:
        """The pooled documents as one group (none if nothing is pooled)."""
        if not self._pending:
            return []
        group, self._pending, self._pending_chunks = [self._pending], [], 0
        return [group]

    def __bool__(self) -> bool:
        return bool(self._pending)
