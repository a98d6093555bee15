"""Ingest files: read, split to the model's context, embed in big batches, replace per document.

A document (one file) is the unit of change: its chunks are written in the same transaction
that deletes its old ones, and it is skipped when its content hash is unchanged. An
interrupted run therefore leaves every document either complete (old or new) or absent,
and running it again finishes the job.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llama_index.core.schema import (
    MetadataMode,
    TextNode,
)

from .batching import Batcher, WriteGroup
from .chunking import CHUNK_OVERLAP, CHUNK_SIZE, KEEP_WHOLE, Chunker, relative_path
from .files import SUPPORTED_SUFFIXES, FileDoc, FileSet, Problem, find_files, read_documents

if TYPE_CHECKING:
    from ..models.embedding import LlamaCppEmbedding
    from ..store.vector_store import PostgresVectorStore

__all__ = [
    "SUPPORTED_SUFFIXES",
    "IngestReport",
    "embed_nodes",
    "ingest_paths",
    "prepare_documents",
    "prune_documents",
    "read_documents",
    "record_written",
    "splitter_for",
    "stale_documents",
]

Progress = Callable[[int, int], None]


@dataclass
class IngestReport:
    """What an ingest run did, with where the time went."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    empty: int = 0
    removed: int = 0
    chunks: int = 0
    problems: list[Problem] = field(default_factory=list)  # files not ingested, and why
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("read", "embed", "write"), 0.0)
    )


def ingest_paths(
    paths: Iterable[str | Path] | FileSet,
    embed_model: LlamaCppEmbedding,
    store: PostgresVectorStore,
    *,
    chunk_size: int | None = None,
    chunk_overlap: int | None = None,
    batch_chunks: int = 512,
    progress: Progress | None = None,
    whole: bool = KEEP_WHOLE,
    title: bool = False,
    prune: bool = True,
    follow_links: bool = False,
) -> IngestReport:
    """Ingest files and folders into ``store``; unchanged files are skipped.

    A file that cannot be read is reported in ``report.problems`` and the others are
    ingested. With ``prune`` (the default) a folder is mirrored: documents stored from
    files under it that no longer exist (deleted, renamed, or no longer a supported
    file) are removed. A document of more than ``batch_chunks`` chunks is embedded and
    written batch by batch, still in one transaction. A folder's symbolic links that lead
    out of it are skipped unless ``follow_links`` (see :func:`._files.find_files`).
    """
    batcher: Batcher[tuple[FileDoc, list[TextNode]]] = Batcher(batch_chunks)
    found = paths if isinstance(paths, FileSet) else find_files(paths, follow_links=follow_links)
    report = IngestReport(problems=list(found.problems))
    splitter = splitter_for(embed_model, chunk_size, chunk_overlap, whole=whole, title=title)
    known = store.document_hashes()

    def write(groups: list[WriteGroup[tuple[FileDoc, list[TextNode]]]]) -> None:
        for group in groups:
            if len(group) > 1:  # one large document, embedded call by call, written whole
                ((doc, nodes), _, _), *_ = (job[0] for job in group)
                _write_in_batches(
                    doc, nodes, embed_model, store, known, report, progress, batch_chunks
                )
            else:
                pending = [document for document, _, _ in group[0]]
                _flush(pending, embed_model, store, known, report, progress)

    start = time.perf_counter()
    docs = prepare_documents(found.files, splitter, known, found.folders, report.problems)
    for status, doc, nodes in docs:
        if status != "changed":
            report.unchanged += status == "unchanged"
            report.empty += status == "empty"  # nothing to store, nothing stored before
            if progress is not None:
                progress(1, 0)
            continue
        groups = batcher.add((doc, nodes), len(nodes))
        if groups:
            report.seconds["read"] += time.perf_counter() - start
            write(groups)
            start = time.perf_counter()
    report.seconds["read"] += time.perf_counter() - start
    write(batcher.flush())
    if prune:
        report.removed = prune_documents(store, found, known)
    return report


def prune_documents(
    store: PostgresVectorStore, found: FileSet, known: Iterable[str] | None = None
) -> int:
    """Delete the stored documents of files gone from the folders searched in ``found``
    (``known``: the stored document ids, read from the store when not given)."""
    gone = stale_documents(found, store.document_hashes() if known is None else known)
    store.delete_documents(gone)
    return len(gone)


def stale_documents(found: FileSet, known: Iterable[str]) -> list[str]:
    """Stored documents from files under the searched folders that were not found there
    (folders that could not be listed are left alone)."""
    folders = [os.path.join(f, "") for f in map(str, found.folders)]
    unlisted = [os.path.join(u, "") for u in found.unlisted]
    return sorted(
        ref
        for ref in known
        if ref not in found.seen
        and ref.startswith(tuple(folders))
        and not ref.startswith(tuple(unlisted))
    )


def splitter_for(
    embed_model: LlamaCppEmbedding,
    chunk_size: int | None = None,
    chunk_overlap: int | None = None,
    *,
    whole: bool = KEEP_WHOLE,
    title: bool = False,
) -> Chunker:
    """How ingest chunks: pieces of ``chunk_size`` model tokens (default ``CHUNK_SIZE``, the
    sequence length the default model was trained for), so a document that fits stays one
    chunk. ``whole`` (default ``KEEP_WHOLE``) also keeps documents up to the GGUF's full
    context whole."""
    from llama_index.core.node_parser import SentenceSplitter

    runner = embed_model.runner
    room = embed_model.text_room
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk size must be a positive number of tokens, got {chunk_size!r}")
    size = min(chunk_size or CHUNK_SIZE, room)
    overlap = CHUNK_OVERLAP if chunk_overlap is None else chunk_overlap
    splitter = SentenceSplitter(
        chunk_size=size,
        chunk_overlap=min(overlap, size // 4),
        tokenizer=lambda text: runner.tokenize(text),
    )
    return Chunker(splitter, runner.tokenize, room - 8 if whole else 0, title)


def prepare_documents(
    files: Iterable[Path],
    chunker: Chunker,
    known: Mapping[str, str],
    roots: Sequence[str | Path] = (),
    problems: list[Problem] | None = None,
) -> Iterator[tuple[str, FileDoc, list[TextNode]]]:
    """Read and chunk each file: ``(status, doc, nodes)``, status one of ``"unchanged"``
    (its hash is ``known``; not chunked), ``"empty"`` (no chunks, nothing stored before) or
    ``"changed"`` (nodes to embed and write; an empty list deletes the stored document).
    A document's stored hash covers its text and the chunking settings, so a chunking
    change re-chunks. ``roots`` are the folders given to ingest (for relative paths).
    A file that cannot be read goes to ``problems``; without that list, an error raises
    ``OSError`` (a skipped binary file or missing extra is only left out)."""
    for doc in read_documents(files):
        if isinstance(doc, Problem):
            if problems is not None:
                problems.append(doc)
            elif doc.error:
                raise OSError(str(doc))
            continue
        doc.text_hash = hashlib.sha256(f"{doc.text_hash}:{chunker.settings}".encode()).hexdigest()
        if known.get(doc.ref_doc_id) == doc.text_hash:
            yield "unchanged", doc, []
            continue
        path = relative_path(doc.ref_doc_id, roots)
        nodes = chunker.chunks(doc.ref_doc_id, doc.text_hash, doc.parts, path)
        if not nodes and doc.ref_doc_id not in known:
            yield "empty", doc, nodes
            continue
        yield "changed", doc, nodes


def embed_nodes(embed_model: LlamaCppEmbedding, chunks: Sequence[TextNode]) -> None:
    """Set each node's embedding, many nodes per llama.cpp decode."""
    if not chunks:
        return
    texts = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in chunks]
    vectors = embed_model.embed(texts, prefix=embed_model.text_prefix)
    for node, vector in zip(chunks, vectors):
        node.embedding = vector.tolist()


def record_written(
    report: IngestReport, known: dict[str, str], docs: Iterable[tuple[str, str]], chunks: int
) -> None:
    """Count written ``(ref_doc_id, text_hash)`` documents as added or updated."""
    for ref_doc_id, text_hash in docs:
        if ref_doc_id in known:
            report.updated += 1
        else:
            report.added += 1
        known[ref_doc_id] = text_hash
    report.chunks += chunks


def _write_in_batches(
    doc: FileDoc,
    nodes: list[TextNode],
    embed_model: LlamaCppEmbedding,
    store: PostgresVectorStore,
    known: dict[str, str],
    report: IngestReport,
    progress: Progress | None,
    size: int,
) -> None:
    """A large document: embedded ``size`` chunks at a time, each batch written (and its
    vectors dropped) before the next is embedded, all in one transaction."""
    started, embedding = time.perf_counter(), 0.0

    def batches() -> Iterator[list[TextNode]]:
        nonlocal embedding
        for i in range(0, len(nodes), size):
            batch = nodes[i : i + size]
            start = time.perf_counter()
            embed_nodes(embed_model, batch)
            embedding += time.perf_counter() - start
            yield batch
            for node in batch:
                node.embedding = None
            if progress is not None:
                progress(0, len(batch))

    store.replace_document_batches(doc.ref_doc_id, batches())
    report.seconds["embed"] += embedding
    report.seconds["write"] += time.perf_counter() - started - embedding
    record_written(report, known, [(doc.ref_doc_id, doc.text_hash)], len(nodes))
    if progress is not None:
        progress(1, 0)


def _flush(
    pending: list[tuple[FileDoc, list[TextNode]]],
    embed_model: LlamaCppEmbedding,
    store: PostgresVectorStore,
    known: dict[str, str],
    report: IngestReport,
    progress: Progress | None,
) -> None:
    if not pending:
        return
    chunks: Sequence[TextNode] = [n for _, nodes in pending for n in nodes]
    start = time.perf_counter()
    embed_nodes(embed_model, chunks)
    report.seconds["embed"] += time.perf_counter() - start
    start = time.perf_counter()
    store.replace_documents({doc.ref_doc_id: nodes for doc, nodes in pending})
    report.seconds["write"] += time.perf_counter() - start
    record_written(report, known, ((d.ref_doc_id, d.text_hash) for d, _ in pending), len(chunks))
    if progress is not None:
        progress(len(pending), len(chunks))
    pending.clear()
