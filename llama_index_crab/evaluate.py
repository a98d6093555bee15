"""Retrieval quality on BEIR-format data: nDCG@10, recall@100, MRR@10, with and without rerank."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llama_index.core.schema import TextNode

if TYPE_CHECKING:
    from .pipeline import Pipeline

__all__ = ["BeirData", "Metrics", "evaluate", "load_beir", "mrr_at", "ndcg_at", "recall_at"]

Qrels = Mapping[str, Mapping[str, int]]


@dataclass(frozen=True)
class BeirData:
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


@dataclass(frozen=True)
class Metrics:
    ndcg_at_10: float
    recall_at_100: float
    mrr_at_10: float
    queries: int


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
        title = str(row.get("title") or "").strip()
        corpus[str(row["_id"])] = f"{title}\n{row['text']}" if title else str(row["text"])
    queries = {str(row["_id"]): str(row["text"]) for row in _jsonl(root / "queries.jsonl")}
    qrels: dict[str, dict[str, int]] = {}
    with (root / f"qrels/{split}.tsv").open() as fh:
        for line in csv.DictReader(fh, delimiter="\t"):
            qrels.setdefault(str(line["query-id"]), {})[str(line["corpus-id"])] = int(line["score"])
    return BeirData(corpus, queries, {q: r for q, r in qrels.items() if q in queries})


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


def mrr_at(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 10) -> float:
    for i, doc in enumerate(ranked[:k]):
        if relevant.get(doc, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def _mean(runs: Mapping[str, Sequence[str]], qrels: Qrels) -> Metrics:
    n = len(runs)
    return Metrics(
        ndcg_at_10=sum(ndcg_at(r, qrels[q]) for q, r in runs.items()) / max(n, 1),
        recall_at_100=sum(recall_at(r, qrels[q]) for q, r in runs.items()) / max(n, 1),
        mrr_at_10=sum(mrr_at(r, qrels[q]) for q, r in runs.items()) / max(n, 1),
        queries=n,
    )


def evaluate(
    data: BeirData,
    pipeline: Pipeline,
    *,
    top_k: int = 100,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, Metrics]:
    """Ingest ``data.corpus`` into the pipeline's collection and score retrieval ± rerank."""
    ids = list(data.corpus)
    for start in range(0, len(ids), 256):
        part = ids[start : start + 256]
        vectors = pipeline.embed_model.embed(
            [data.corpus[i] for i in part], prefix=pipeline.embed_model.text_prefix
        )
        pipeline.store.add(
            [
                TextNode(id_=i, text=data.corpus[i], embedding=v.tolist())
                for i, v in zip(part, vectors)
            ]
        )
        if progress:
            progress("ingest", len(part))
    dense: dict[str, list[str]] = {}
    reranked: dict[str, list[str]] = {}
    for qid in data.qrels:
        found = pipeline.search(data.queries[qid], top_k=top_k, top_n=top_k, rerank=False)
        dense[qid] = [h.node.node_id for h in found.hits]
        if pipeline.reranker is not None and found.hits:
            texts = [h.node.get_content() for h in found.hits]
            scores = pipeline.reranker.score(data.queries[qid], texts)
            order = sorted(range(len(scores)), key=lambda i: -scores[i])
            reranked[qid] = [dense[qid][i] for i in order]
        if progress:
            progress("query", 1)
    results = {"retrieval": _mean(dense, data.qrels)}
    if pipeline.reranker is not None:
        results["retrieval + rerank"] = _mean(reranked, data.qrels)
    return results
