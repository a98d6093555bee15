"""What runs inside the Ray cluster: the reader, embedding and writer actors.

Each is a thin wrapper around the single-process ingest's own steps (:mod:`.ingest`,
:meth:`.PostgresVectorStore.replace_documents`), so both paths chunk, embed and write alike.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama_index.core.schema import TextNode

from .files import Problem
from .local import embed_nodes, prepare_documents, splitter_for

if TYPE_CHECKING:
    from ..models.embedding import LlamaCppEmbedding
    from ..store.collections import EmbeddingIdentity

__all__ = ["Embedder", "Reader", "Writer", "read_and_chunk"]

# (ref_doc_id, text_hash, nodes): a document, or a slice of a large one's nodes.
Doc = tuple[str, str, list[TextNode]]
Options = tuple[tuple[str, Any], ...]  # hashable keyword arguments


@functools.cache
def _chunker(spec: Options, chunking: Options) -> Any:
    # One tokenizer per worker process: Ray reuses processes across tasks.
    return splitter_for(_model(dict(spec), threads=1), **dict(chunking))


def _model(spec: Mapping[str, Any], threads: int) -> LlamaCppEmbedding:
    from ..models.embedding import LlamaCppEmbedding

    options = {k: v for k, v in spec.items() if k != "model_path"}
    return LlamaCppEmbedding(spec["model_path"], n_threads=threads, n_contexts=threads, **options)


def read_and_chunk(
    files: Sequence[str],
    known: Mapping[str, str],
    spec: Options,
    chunking: Options,
    roots: Sequence[str],
) -> tuple[dict[str, Any], list[Doc]]:
    """Read and chunk ``files``: a small summary for the driver (counts, chunks per changed
    document, files that could not be read), and the changed documents themselves."""
    start = time.perf_counter()
    chunker = _chunker(spec, chunking)
    problems: list[Problem] = []
    head: dict[str, Any] = {"unchanged": 0, "empty": 0, "chunks": [], "problems": problems}
    docs: list[Doc] = []
    paths = [Path(f) for f in files]
    for status, doc, nodes in prepare_documents(paths, chunker, known, roots, problems):
        if status == "changed":
            docs.append((doc.ref_doc_id, doc.text_hash, nodes))
            head["chunks"].append(len(nodes))
        else:
            head[status] += 1
    head["seconds"] = time.perf_counter() - start
    return head, docs


class Reader:
    """Reads and chunks in one long-lived process: imports and the tokenizer load once (a
    plain task may get a new worker process each time, ~2 s of start-up for ~0.5 s of work)."""

    def read(
        self,
        files: Sequence[str],
        known: Mapping[str, str],
        spec: Options,
        chunking: Options,
        roots: Sequence[str],
    ) -> tuple[dict[str, Any], list[Doc]]:
        return read_and_chunk(files, known, spec, chunking, roots)


class Embedder:
    """One model load per actor; ``threads`` llama.cpp contexts of one thread each."""

    def __init__(self, spec: Options, threads: int) -> None:
        self.model = _model(dict(spec), threads)
        self.model.runner  # noqa: B018 - load now, not inside the first timed batch

    def embed(self, job: Sequence[tuple[Any, int, int, int]]) -> tuple[list[Doc], float]:
        """Embed the chunks ``job`` names ((read result, document, first, end) each) in one
        call, so the batch is the one a single-process ingest embeds."""
        import ray

        refs = list(dict.fromkeys(ref for ref, _, _, _ in job))
        bodies = dict(zip(refs, ray.get(refs)))
        docs: list[Doc] = []
        for ref, i, first, end in job:
            doc_id, text_hash, nodes = bodies[ref][i]
            docs.append((doc_id, text_hash, nodes[first:end]))
        start = time.perf_counter()
        embed_nodes(self.model, [node for _, _, nodes in docs for node in nodes])
        return docs, time.perf_counter() - start


class Writer:
    """One database connection; each call writes its documents whole, in one transaction."""

    def __init__(
        self, url: str, collection: str, identity: EmbeddingIdentity | None, normalize: bool
    ) -> None:
        import sqlalchemy as sa

        from ..store.vector_store import PostgresVectorStore

        engine = sa.create_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True)
        self.store = PostgresVectorStore(engine, collection, identity, normalize=normalize)

    def write(self, *embedded: tuple[list[Doc], float]) -> dict[str, Any]:
        """Replace the documents of ``embedded`` (a large one's slices in order)."""
        documents: dict[str, list[TextNode]] = {}
        hashes: dict[str, str] = {}
        for docs, _ in embedded:
            for doc_id, text_hash, nodes in docs:
                documents.setdefault(doc_id, []).extend(nodes)
                hashes[doc_id] = text_hash
        start = time.perf_counter()
        self.store.replace_documents(documents)
        return {
            "docs": list(hashes.items()),
            "chunks": sum(len(nodes) for nodes in documents.values()),
            "embed": sum(seconds for _, seconds in embedded),
            "write": time.perf_counter() - start,
        }
