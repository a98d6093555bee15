"""Sizing: 1M × 384-dim vectors stored as ``vector`` and as ``halfvec`` (issue #15).

    .venv/bin/python -m benchmarks.bench_sizing [--rows 1000000] [--url URL]

Run on demand (about 1.5 hours at 1M rows on 2 busy cores), not by the test suite. Both
collections hold the same clustered vectors (see ``bench_store.clustered``), are loaded
with ``PostgresVectorStore.add`` without an index, then indexed by ``build_index`` with
``maintenance_work_mem=1GB`` and parallel workers. Measured: heap and index sizes, build
time (and where the graph stopped fitting in memory), query p50/p95 and recall@10 against
exact search at two ``ef_search`` values. Writes benchmarks/results/sizing-DATE.{md,json}.

At 1M × 384 the ``vector`` graph needs ~2 GB: with 1GB the build spills to disk at ~0.5M
rows and runs ~5× slower from there; docs/scaling.md used ``--build-memory 3GB``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import VectorStoreQuery

from llama_index_crab.server import postgres as server
from llama_index_crab.store import migrate
from llama_index_crab.store.collections import EmbeddingIdentity, build_index
from llama_index_crab.store.db import to_url
from llama_index_crab.store.vector_store import PostgresVectorStore

HERE = Path(__file__).resolve().parent

DIM, K, CLUSTERS, CHUNK = 384, 10, 1000, 10_000
PRECISIONS = ("vector", "halfvec")
EF_SEARCH = (64, 200)
BUILD_MEMORY = "1GB"
PARALLEL_WORKERS = 1  # + the leader: two processes on two cores


def vectors_in_chunks(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` clustered unit vectors (as bench_store.clustered, drawn chunk by chunk so
    1M rows need 1.5 GB, not 6) and 200 held-out queries from the same clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLUSTERS, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(n: int) -> np.ndarray:
        points = centres[rng.integers(0, CLUSTERS, n)] + rng.normal(scale=0.04, size=(n, DIM))
        return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)

    out = np.empty((rows, DIM), dtype=np.float32)
    for offset in range(0, rows, 100_000):
        out[offset : offset + 100_000] = draw(min(100_000, rows - offset))
    return out, draw(200)


def exact_top(vectors: np.ndarray, queries: np.ndarray) -> list[set[int]]:
    found = []
    for start in range(0, len(queries), 50):
        scores = queries[start : start + 50] @ vectors.T
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        found += [set(row.tolist()) for row in top]
    return found


def ingest(store: PostgresVectorStore, vectors: np.ndarray) -> float:
    """Rows per second of ``store.add`` (building the TextNodes is not timed)."""
    spent = 0.0
    for offset in range(0, len(vectors), CHUNK):
        batch = [
            TextNode(
                id_=f"n{offset + i}",
                text=f"document {offset + i} in category {(offset + i) % 100}",
                embedding=vector.tolist(),
                metadata={"category": (offset + i) % 100},
            )
            for i, vector in enumerate(vectors[offset : offset + CHUNK])
        ]
        start = time.perf_counter()
        store.add(batch)
        spent += time.perf_counter() - start
        if offset % 200_000 == 0:
            print(f"  {store.collection_name}: {offset + len(batch):,} rows", flush=True)
    return len(vectors) / spent


def notices(engine: sa.Engine) -> list[str]:
    """Collects the NOTICEs the server sends on ``engine``'s connections (pgvector says
    there when the graph stops fitting in maintenance_work_mem)."""
    seen: list[str] = []

    @sa.event.listens_for(engine, "connect")
    def _listen(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.add_notice_handler(lambda d: seen.append(str(d.message_primary)))

    return seen


def size(connection: sa.Connection, relation: str) -> int:
    return int(connection.scalar(sa.text("SELECT pg_relation_size(:r)"), {"r": relation}))


def checkpoint(result: dict[str, Any]) -> None:
    """What is measured so far, in case a long run is cut short."""
    out = HERE / "results" / "sizing-partial.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")


def index_name(connection: sa.Connection, collection: str) -> str:
    return str(
        connection.scalar(
            sa.text("SELECT 'crab_nodes_hnsw_' || id FROM crab_collections WHERE name = :n"),
            {"n": collection},
        )
    )


def query_pass(
    store: PostgresVectorStore, queries: np.ndarray, truth: list[set[int]], ef: int
) -> tuple[float, float, float]:
    """p50 ms, p95 ms, recall@10."""
    plain = [VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=K) for q in queries]
    times, hits = [], []
    for query, expected in zip(plain, truth, strict=True):
        start = time.perf_counter()
        result = store.query(query, ef_search=ef)
        times.append((time.perf_counter() - start) * 1000)
        hits.append(len({int(i[1:]) for i in result.ids or []} & expected) / K)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95)), float(np.mean(hits))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--url", help="PostgreSQL with pgvector >= 0.8 (default: embedded server)")
    parser.add_argument(
        "--build-memory",
        default=BUILD_MEMORY,
        help="maintenance_work_mem for the builds (1M × 384 vector needs ~2.2GB in memory)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()

    tmp = tempfile.TemporaryDirectory(prefix="crab-sizing-")
    pgdata = Path(tmp.name) / "pgdata"
    url = args.url or server.start(pgdata)
    engine = sa.create_engine(to_url(url))
    seen = notices(engine)
    migrate.upgrade(engine)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        if not args.url:  # our own server: parallel index builds on both cores
            connection.execute(
                sa.text(f"ALTER SYSTEM SET max_parallel_maintenance_workers = {PARALLEL_WORKERS}")
            )
            connection.execute(sa.text("SELECT pg_reload_conf()"))
        connection.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_prewarm"))
        settings = dict(
            connection.execute(
                sa.text(
                    "SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name IN "
                    "('shared_buffers', 'max_parallel_maintenance_workers', 'server_version')"
                )
            ).all()
        )
        pgvector = connection.scalar(
            sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        )

    vectors, queries = vectors_in_chunks(args.rows)
    stamp = int(time.time())
    stores = {
        precision: PostgresVectorStore(
            engine, f"sizing_{precision}_{stamp}", EmbeddingIdentity("bench", DIM, "mean")
        )
        for precision in PRECISIONS
    }
    result: dict[str, Any] = {"rows": args.rows, "settings": settings, "pgvector": pgvector}
    result["build_memory"] = args.build_memory
    for precision, store in stores.items():
        store.create_collection(precision=precision, index=False)
        result[f"ingest_rows_per_s_{precision}"] = ingest(store, vectors)
        print(f"ingest {precision}: {result[f'ingest_rows_per_s_{precision}']:,.0f} rows/s")
        checkpoint(result)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        start = time.perf_counter()
        connection.execute(sa.text("VACUUM (ANALYZE) crab_nodes"))
        result["vacuum_s"] = time.perf_counter() - start
        table_rows = len(PRECISIONS) * args.rows
        result["heap_bytes_per_row"] = size(connection, "crab_nodes") / table_rows
        toast = connection.scalar(
            sa.text(
                "SELECT reltoastrelid::regclass::text FROM pg_class WHERE relname = 'crab_nodes'"
            )
        )
        result["toast_bytes_per_row"] = size(connection, toast) / table_rows
        others = connection.execute(
            sa.text(
                "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index "
                "WHERE indrelid = 'crab_nodes'::regclass"
            )
        ).all()
        result["other_indexes_bytes_per_row"] = {
            name: bytes_ / table_rows for name, bytes_ in others
        }

    for precision, store in stores.items():
        seen.clear()
        start = time.perf_counter()
        build_index(engine, store.collection_name, maintenance_work_mem=args.build_memory)
        result[f"build_s_{precision}"] = time.perf_counter() - start
        spilled = [m for m in seen if "no longer fits" in m]
        fits = re.search(r"after ([\d,]+) tuples", spilled[0]) if spilled else None
        result[f"fits_in_memory_tuples_{precision}"] = (
            int(fits.group(1).replace(",", "")) if fits else args.rows
        )
        result[f"build_notices_{precision}"] = list(seen)
        with engine.connect() as connection:
            index = index_name(connection, store.collection_name)
            result[f"index_bytes_{precision}"] = size(connection, index)
        print(
            f"build {precision}: {result[f'build_s_{precision}']:.0f} s, "
            f"{result[f'index_bytes_{precision}'] / 2**20:,.0f} MiB; {seen}",
            flush=True,
        )
        checkpoint(result)

    truth = exact_top(vectors, queries)
    del vectors
    for precision, store in stores.items():
        with engine.connect() as connection:  # the index into shared buffers, as far as it fits
            index = index_name(connection, store.collection_name)
            connection.execute(sa.text("SELECT pg_prewarm(:r)"), {"r": index})
        for ef in EF_SEARCH:
            query_pass(store, queries[:50], truth[:50], ef)  # warm-up
            p50, p95, recall = query_pass(store, queries, truth, ef)
            result[f"query_{precision}_ef{ef}"] = {"p50_ms": p50, "p95_ms": p95, "recall": recall}
            print(f"query {precision} ef_search={ef}: {p50:.2f} / {p95:.2f} ms, {recall:.3f}")
            checkpoint(result)
    for store in stores.values():
        store.close()
    engine.dispose()
    if not args.url:
        server.stop(pgdata)
    tmp.cleanup()
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
    result["total_s"] = time.perf_counter() - started
    report(result)
    return result


def report(r: dict[str, Any]) -> None:
    rows = r["rows"]
    mib = 2**20
    lines = [
        f"_{rows:,} × {DIM}-dim clustered unit vectors per collection, 200 queries, k={K}; "
        f"{r['machine']}; PostgreSQL {r['settings']['server_version']} + pgvector {r['pgvector']}, "
        f"shared_buffers {r['settings']['shared_buffers']}, "
        f"max_parallel_maintenance_workers {r['settings']['max_parallel_maintenance_workers']}; "
        f"one run, {r['total_s'] / 60:.0f} min_",
        "",
        "| measure | `vector` | `halfvec` |",
        "|---|---:|---:|",
    ]

    def row(label: str, fmt: Any) -> None:
        lines.append(f"| {label} | " + " | ".join(fmt(p) for p in PRECISIONS) + " |")

    row("ingest, `store.add` (no index)", lambda p: f"{r[f'ingest_rows_per_s_{p}']:,.0f} rows/s")
    row(
        "heap per row (shared table; + TOAST)",
        lambda p: f"{r['heap_bytes_per_row']:,.0f} B (+{r['toast_bytes_per_row']:,.0f})",
    )
    row("HNSW index size", lambda p: f"{r[f'index_bytes_{p}'] / mib:,.0f} MiB")
    row("HNSW index per row", lambda p: f"{r[f'index_bytes_{p}'] / rows:,.0f} B")
    memory = r["build_memory"]
    row(f"HNSW build, maintenance_work_mem={memory}", lambda p: f"{r[f'build_s_{p}']:,.0f} s")
    row(
        f"graph fitted in {memory} until",
        lambda p: f"{r[f'fits_in_memory_tuples_{p}']:,} rows",
    )
    for ef in EF_SEARCH:
        row(
            f"query p50 / p95 / recall@10, ef_search={ef}",
            lambda p, ef=ef: "{p50_ms:.2f} ms / {p95_ms:.2f} ms / {recall:.3f}".format(
                **r[f"query_{p}_ef{ef}"]
            ),
        )
    others = ", ".join(
        f"{name} {bytes_:,.0f} B" for name, bytes_ in r["other_indexes_bytes_per_row"].items()
    )
    lines += ["", f"Other indexes on crab_nodes, per row: {others}."]
    text = "\n".join(lines) + "\n"
    print(text)
    out = HERE / "results" / f"sizing-{datetime.date.today().isoformat()}"
    out.parent.mkdir(exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(r, indent=2) + "\n")
    print("written to", out.with_suffix(".md"))


if __name__ == "__main__":
    main()
