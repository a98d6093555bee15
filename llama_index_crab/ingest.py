"""Ingest files: read, split to the model's context, embed in big batches, replace per document.

A document (one file) is the unit of change: its chunks are written in the same transaction
that deletes its old ones, and it is skipped when its content hash is unchanged. An
interrupted run therefore leaves every document either complete (old or new) or absent,
and running it again finishes the job.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llama_index.core.schema import (
    Document,
    MetadataMode,
    NodeRelationship,
    RelatedNodeInfo,
    TextNode,
)

from .documents import document_hashes, replace_documents

if TYPE_CHECKING:
    from llama_index.core.node_parser import SentenceSplitter

    from .embedding import LlamaCppEmbedding
    from .store import PostgresVectorStore

__all__ = [
    "SUPPORTED_SUFFIXES",
    "IngestReport",
    "embed_nodes",
    "ingest_paths",
    "list_files",
    "prepare_documents",
    "read_documents",
    "record_written",
    "splitter_for",
]

SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".html", ".htm", ".pdf")
Progress = Callable[[int, int], None]


@dataclass
class IngestReport:
    """What an ingest run did, with where the time went."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    empty: int = 0
    chunks: int = 0
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("read", "embed", "write"), 0.0)
    )


@dataclass
class _Doc:
    ref_doc_id: str
    text_hash: str
    parts: list[Document]


def list_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files to ingest: given files as they are, folders searched for supported suffixes."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{str(raw)!r} does not exist; pass files or folders to ingest")
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in SUPPORTED_SUFFIXES)
        else:
            files.append(path)
    return files


def read_documents(files: Iterable[Path]) -> Iterator[_Doc]:
    """One entry per file, with LlamaIndex's readers (.pdf and .html need the readers extra)."""
    from llama_index.core import SimpleDirectoryReader

    for path in files:
        reader = SimpleDirectoryReader(input_files=[str(path)], filename_as_id=True)
        parts = reader.load_data()
        digest = hashlib.sha256()
        for part in parts:
            if "\x00" in part.text:  # e.g. UTF-16 or binary; PostgreSQL text cannot hold NUL
                part.set_content(part.text.replace("\x00", ""))
            digest.update(part.text.encode("utf-8", "replace"))
        yield _Doc(str(path.resolve()), digest.hexdigest(), parts)


def ingest_paths(
    paths: Iterable[str | Path],
    embed_model: LlamaCppEmbedding,
    store: PostgresVectorStore,
    *,
    chunk_size: int | None = None,
    chunk_overlap: int = 32,
    batch_chunks: int = 512,
    progress: Progress | None = None,
) -> IngestReport:
    """Ingest files and folders into ``store``; unchanged files are skipped."""
    report = IngestReport()
    splitter = splitter_for(embed_model, chunk_size, chunk_overlap)
    known = document_hashes(store)
    pending: list[tuple[_Doc, list[TextNode]]] = []
    start = time.perf_counter()
    for status, doc, nodes in prepare_documents(list_files(paths), splitter, known):
        if status == "unchanged":
            report.unchanged += 1
            continue
        if status == "empty":
            report.empty += 1  # nothing to store, nothing stored before: not "added"
            if progress is not None:
                progress(1, 0)
            continue
        pending.append((doc, nodes))
        if sum(len(n) for _, n in pending) >= batch_chunks:
            report.seconds["read"] += time.perf_counter() - start
            _flush(pending, embed_model, store, known, report, progress)
            start = time.perf_counter()
    report.seconds["read"] += time.perf_counter() - start
    _flush(pending, embed_model, store, known, report, progress)
    return report


def splitter_for(
    embed_model: LlamaCppEmbedding, chunk_size: int | None = None, chunk_overlap: int = 32
) -> SentenceSplitter:
    """The splitter ingest uses: chunks measured in the model's own tokens, fitting its context."""
    from llama_index.core.node_parser import SentenceSplitter

    runner = embed_model.runner
    size = chunk_size or min(256, runner.max_length - len(runner.info.head) - len(runner.info.tail))
    return SentenceSplitter(
        chunk_size=size,
        chunk_overlap=min(chunk_overlap, size // 4),
        tokenizer=lambda text: runner.tokenize(text),
    )


def prepare_documents(
    files: Iterable[Path], splitter: SentenceSplitter, known: Mapping[str, str]
) -> Iterator[tuple[str, _Doc, list[TextNode]]]:
    """Read and chunk each file: ``(status, doc, nodes)``, status one of ``"unchanged"``
    (its hash is ``known``; not chunked), ``"empty"`` (no chunks, nothing stored before) or
    ``"changed"`` (nodes to embed and write; an empty list deletes the stored document)."""
    for doc in read_documents(files):
        if known.get(doc.ref_doc_id) == doc.text_hash:
            yield "unchanged", doc, []
            continue
        nodes = _chunks(doc, splitter)
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


def _chunks(doc: _Doc, splitter: object) -> list[TextNode]:
    nodes: list[TextNode] = []
    for part in doc.parts:
        nodes += splitter.get_nodes_from_documents([part])  # type: ignore[attr-defined]
    out = []
    for i, node in enumerate(n for n in nodes if n.get_content().strip()):
        chunk = TextNode(
            id_=hashlib.sha1(f"{doc.ref_doc_id}\0{i}".encode()).hexdigest(),
            text=node.get_content(),
            metadata={**node.metadata, "doc_hash": doc.text_hash, "chunk": i},
            excluded_embed_metadata_keys=[*node.excluded_embed_metadata_keys, "doc_hash", "chunk"],
            excluded_llm_metadata_keys=[*node.excluded_llm_metadata_keys, "doc_hash", "chunk"],
        )
        chunk.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=doc.ref_doc_id)
        out.append(chunk)
    return out


def _flush(
    pending: list[tuple[_Doc, list[TextNode]]],
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
    replace_documents(store, {doc.ref_doc_id: nodes for doc, nodes in pending})
    report.seconds["write"] += time.perf_counter() - start
    record_written(report, known, ((d.ref_doc_id, d.text_hash) for d, _ in pending), len(chunks))
    if progress is not None:
        progress(len(pending), len(chunks))
    pending.clear()
