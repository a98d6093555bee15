"""Retrieval quality on BEIR-format data: hit@10, nDCG@10, MRR@10 and recall, with and without
rerank."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama_index.core.schema import NodeWithScore

if TYPE_CHECKING:
    from ..pipeline import Pipeline

__all__ = [
    "BeirData",
    "Metrics",
    "documents_of",
    "evaluate",
    "hit_at",
    "load_beir",
    "mean_metrics",
    "mrr_at",
    "ndcg_at",
    "recall_at",
    "write_corpus",
]

Qrels = Mapping[str, Mapping[str, int]]


@dataclass(frozen=True)
class BeirData:
    """A BEIR data set: ``corpus`` texts (title as first line), ``queries``, ``qrels``, and
    any other fields of a query line (e.g. ``answer_passage``) in ``extra``."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    extra: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Metrics:
    """Means over the queries; ``recall`` is at ``recall_k`` results."""

    ndcg_at_10: float
    recall: float
    mrr_at_10: float
    queries: int
    hit_at_10: float = 0.0
    recall_k: int = 100


def load_beir(folder: str | Path, split: str = "test") -> BeirData:
    """Read ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` from ``folder``."""
    root = Path(folder)
    for need in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (root / need).is_file():
            raise FileNotFoundError(
                f"{str(root / need)!r} is missing; BEIR data has corpus.jsonl, "
                f"queries.jsonl and qrels/{split}.tsv"
            )
    corpus = {}
    for row in _jsonl(root / "corpus.jsonl"):
        title, text = str(row.get("title") or "").strip(), str(row["text"])
        heading = text.lstrip().splitlines()[0].lstrip("#").strip() if text.strip() else ""
        corpus[str(row["_id"])] = f"{title}\n{text}" if title and heading != title else text
    queries, answers = {}, {}
    for row in _jsonl(root / "queries.jsonl"):
        queries[str(row["_id"])] = str(row["text"])
        answers[str(row["_id"])] = {k: str(v) for k, v in row.items() if k not in ("_id", "text")}
    qrels: dict[str, dict[str, int]] = {}
    with (root / f"qrels/{split}.tsv").open() as fh:
        for line in csv.DictReader(fh, delimiter="\t"):
            qrels.setdefault(str(line["query-id"]), {})[str(line["corpus-id"])] = int(line["score"])
    qrels = {q: r for q, r in qrels.items() if q in queries}
    return BeirData(corpus, queries, qrels, answers)


def _jsonl(path: Path) -> Iterable[dict[str, object]]:
    with path.open() as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def ndcg_at(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 10) -> float:
    gains = [relevant.get(doc, 0) for doc in ranked[:k]]
    dcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(gains))
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    idcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 100) -> float:
    wanted = {doc for doc, g in relevant.items() if g > 0}
    return len(wanted & set(ranked[:k])) / len(wanted) if wanted else 0.0


def hit_at(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 10) -> float:
    """1 if a relevant document is among the first ``k``, else 0."""
    return float(any(relevant.get(doc, 0) > 0 for doc in ranked[:k]))


def mrr_at(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 10) -> float:
    for i, doc in enumerate(ranked[:k]):
        if relevant.get(doc, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def mean_metrics(runs: Mapping[str, Sequence[str]], qrels: Qrels, recall_k: int = 100) -> Metrics:
    n = len(runs)
    return Metrics(
        ndcg_at_10=sum(ndcg_at(r, qrels[q]) for q, r in runs.items()) / max(n, 1),
        recall=sum(recall_at(r, qrels[q], recall_k) for q, r in runs.items()) / max(n, 1),
        recall_k=recall_k,
        mrr_at_10=sum(mrr_at(r, qrels[q]) for q, r in runs.items()) / max(n, 1),
        queries=n,
        hit_at_10=sum(hit_at(r, qrels[q]) for q, r in runs.items()) / max(n, 1),
    )


def write_corpus(data: BeirData, folder: Path) -> dict[str, str]:
    """One Markdown file per corpus entry (title as its heading), for ingest to read as a
    user's files; returns ``{file name: corpus id}``."""
    folder.mkdir(parents=True, exist_ok=True)
    names: dict[str, str] = {}
    for doc_id, text in data.corpus.items():
        stem = re.sub(r"[^\w.-]+", "_", doc_id)[:80].removesuffix(".md")
        name = f"{stem}.md" if f"{stem}.md" not in names else f"{stem}-{len(names)}.md"
        body = text if text.lstrip().startswith("#") else "# " + text
        path = folder / name
        if not path.is_file() or path.read_text(encoding="utf-8") != body:
            path.write_text(body, encoding="utf-8")
        names[name] = doc_id
    return names


def documents_of(hits: Sequence[NodeWithScore], names: Mapping[str, str]) -> list[str]:
    """Corpus ids in the order their chunks first appear in ``hits``."""
    ids = (names.get(str(h.node.metadata.get("file_path")), "") for h in hits)
    return list(dict.fromkeys(i for i in ids if i))


def evaluate(
    data: BeirData,
    pipeline: Pipeline,
    *,
    top_k: int = 100,
    modes: Sequence[str] = ("dense",),
    rerank: bool = True,
    progress: Callable[[str, int], None] | None = None,
    chunking: Mapping[str, Any] | None = None,
) -> dict[str, Metrics]:
    """Ingest ``data.corpus`` as files through ``crab ingest``'s path (chunking included:
    ``chunking`` holds ``ingest``'s ``chunk_size``, ``chunk_overlap``, ``whole``, ``title``)
    into the pipeline's collection, then score each search mode, and each + rerank when the
    pipeline has a reranker. Documents rank by their best chunk."""
    import platformdirs

    key = hashlib.sha256("\0".join(sorted(data.corpus)).encode()).hexdigest()[:16]
    folder = platformdirs.user_cache_path("llama-index-crab") / "eval" / key
    names = write_corpus(data, folder)
    pipeline.ingest(
        [folder],
        progress=lambda docs, _: progress and progress("ingest", docs),
        **dict(chunking or {}),
    )
    runs: dict[str, dict[str, list[str]]] = {}
    reranking = rerank and pipeline.reranker is not None
    for qid in data.qrels:
        for mode in modes:
            found = pipeline.search(
                data.queries[qid], top_k=top_k, top_n=top_k, rerank=False, mode=mode
            )
            runs.setdefault(mode, {})[qid] = documents_of(found.hits, names)
            if reranking and pipeline.reranker is not None and found.hits:
                hits = pipeline.reranker.rerank_nodes(
                    data.queries[qid], found.hits, top_n=len(found.hits)
                )
                ranked = documents_of(hits, names)
                runs.setdefault(f"{mode} + rerank", {})[qid] = ranked
        if progress:
            progress("query", 1)
    return {name: mean_metrics(run, data.qrels, top_k) for name, run in runs.items()}
