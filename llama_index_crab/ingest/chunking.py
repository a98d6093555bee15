"""What gets embedded: a document's chunks, each its own text (the document's title before
it only with ``title=True``: it did not measurably help on the labelled sets).

Absolute paths, sizes and dates stay metadata: they are noise in a vector (and in every
pair a reranker scores), they differ between machines, and they eat the chunk's tokens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_index.core.schema import Document, NodeRelationship, RelatedNodeInfo, TextNode

__all__ = [
    "CHUNK_OVERLAP",
    "CHUNK_SIZE",
    "INGEST_FORMAT",
    "KEEP_WHOLE",
    "Chunker",
    "relative_path",
    "title_of",
]

# Bumped whenever what is embedded changes, so that stored documents are chunked again.
INGEST_FORMAT = 2
# Chosen across the labelled sets in tests/data (benchmarks/corpora.py), against larger
# chunks, titles and a second, whole-document vector: docs/quality.md. A document that fits
# the model's context stays one chunk (KEEP_WHOLE): the only rule measured that keeps every
# set at or above the plain model; longer documents are cut into CHUNK_SIZE-token chunks.
CHUNK_SIZE = 256
CHUNK_OVERLAP = 32
KEEP_WHOLE = True
_HIDDEN = ("file_path", "file_name", "file_type", "file_size", "doc_hash", "chunk")


def title_of(text: str, name: str) -> str:
    """The document's own first heading (Markdown ``#`` or a setext underline), else the
    file name without its suffix."""
    lines = text.lstrip().splitlines()[:2]
    if lines and lines[0].startswith("#"):
        return lines[0].lstrip("#").strip() or Path(name).stem
    if (
        len(lines) == 2
        and lines[0].strip()
        and lines[1].strip()
        and set(lines[1].strip())
        <= {
            "=",
            "-",
        }
    ):
        return lines[0].strip()
    return Path(name).stem


def relative_path(path: str | Path, roots: Sequence[str | Path]) -> str:
    """``path`` relative to the first folder given to ingest that holds it, else its name."""
    path = Path(path)
    for root in roots:
        root = Path(root).expanduser().resolve()
        if root.is_dir() and path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    return path.name


@dataclass
class Chunker:
    """Splits documents into chunks of at most ``chunk_size`` model tokens; a document of at
    most ``whole_tokens`` tokens stays one chunk. ``title`` puts the document's title before
    each chunk's text in what is embedded (unless the chunk starts with it); off by default,
    since it did not help on the labelled sets (docs/quality.md)."""

    splitter: Any  # llama_index SentenceSplitter
    tokenize: Callable[[str], list[int]]
    whole_tokens: int = 0
    title: bool = False

    @property
    def settings(self) -> str:
        """What "unchanged" compares besides the content: a chunking change re-chunks."""
        s = self.splitter
        return f"v{INGEST_FORMAT}:{s.chunk_size}:{s.chunk_overlap}:{self.whole_tokens}:{self.title}"

    def _split(self, part: Document) -> list[Any]:
        if self.whole_tokens and len(self.tokenize(part.text)) <= self.whole_tokens:
            part.set_content(part.text.strip())  # as the splitter's chunks are
            return [part]
        nodes: list[Any] = self.splitter.get_nodes_from_documents([part])
        return nodes

    def chunks(
        self, ref_doc_id: str, text_hash: str, parts: Sequence[Document], path: str
    ) -> list[TextNode]:
        """The chunks of one document, ids derived from ``ref_doc_id`` and their position."""
        title = title_of(parts[0].text, path) if parts else Path(path).stem
        pieces: list[Any] = []
        for given in parts:
            part = given.model_copy()  # the caller's documents stay as they were
            meta = {k: v for k, v in part.metadata.items() if not k.endswith("_date")}
            meta |= {"file_path": path, "file_name": Path(path).name, "title": title}
            part.metadata = meta
            hidden = [k for k in meta if k != "title"] + list(_HIDDEN)
            part.excluded_embed_metadata_keys = hidden
            part.excluded_llm_metadata_keys = list(hidden)
            part.metadata_template = "{value}"
            pieces += self._split(part)
        out = []
        for i, piece in enumerate(p for p in pieces if p.get_content().strip()):
            text = piece.get_content()
            hidden = list(piece.excluded_embed_metadata_keys)
            if not self.title or text.lstrip("# \n").startswith(title):
                hidden.append("title")
            chunk = TextNode(
                id_=hashlib.sha1(f"{ref_doc_id}\0{i}".encode()).hexdigest(),
                text=text,
                metadata={**piece.metadata, "doc_hash": text_hash, "chunk": i},
                excluded_embed_metadata_keys=hidden,
                excluded_llm_metadata_keys=list(hidden),
                metadata_template="{value}",
            )
            chunk.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=ref_doc_id)
            out.append(chunk)
        return out
