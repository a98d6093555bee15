"""Does the number of collections slow one collection down? (issue #15)

    .venv/bin/python -m benchmarks.bench_collections [--counts 1 10 100] [--rows 200]

Every collection adds a partial HNSW index to ``crab_nodes``: each inserted row is tested
against every index predicate, and the planner considers every index for each query.
Three databases on one embedded server hold 1, 10 and 100 collections (the others with
``--rows`` nodes and their index: only the number of indexes matters to the target); one
target collection per database starts with ``--target`` nodes. Rounds alternate between
the databases (so machine noise hits all alike): insert ``--batch`` nodes into the target
with ``store.add``, then run 50 queries and EXPLAIN ten. Reported per database: insert
rows/s, query p50/p95, planning time (median of ``EXPLAIN (SUMMARY)``).
Writes benchmarks/results/collections-DATE.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import VectorStoreQuery

from benchmarks.bench_store import DIM, clustered
from llama_index_crab.server import postgres as server
from llama_index_crab.store import migrate
from llama_index_crab.store.collections import EmbeddingIdentity, build_index
from llama_index_crab.store.db import to_url
from llama_index_crab.store.vector_store import PostgresVectorStore

HERE = Path(__file__).resolve().parent

IDENTITY = EmbeddingIdentity("bench", DIM, "mean")


def nodes_for(vectors: np.ndarray, prefix: str) -> list[TextNode]:
    return [
        TextNode(id_=f"{prefix}{i}", text=f"document {i}", embedding=v.tolist(), metadata={"i": i})
        for i, v in enumerate(vectors)
    ]


def admin(url: str, statement: str) -> None:
    engine = sa.create_engine(to_url(url), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with engine.connect() as connection:
        connection.execute(sa.text(statement))
    engine.dispose()


def planning_ms(engine: sa.Engine, collection_id: int, vector: np.ndarray) -> tuple[float, str]:
    literal = "[" + ",".join(f"{x:.6f}" for x in vector) + "]"
    sql = (
        "EXPLAIN (SUMMARY ON, FORMAT JSON) SELECT node_id FROM crab_nodes "
        f"WHERE collection_id = {collection_id} "
        f"ORDER BY embedding::vector({DIM}) <#> '{literal}'::vector({DIM}) LIMIT 10"
    )
    with engine.connect() as connection:
        plan = connection.scalar(sa.text(sql))
    plan = plan if isinstance(plan, list) else json.loads(plan)
    return float(plan[0]["Planning Time"]), json.dumps(plan[0]["Plan"])


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--rows", type=int, default=200, help="nodes in each other collection")
    parser.add_argument("--target", type=int, default=20_000, help="nodes in the target at start")
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="crab-colls-")
    server_url = server.start(Path(tmp.name) / "pgdata")
    total = args.target + args.batch * args.rounds
    vectors, queries = clustered(total + args.rows, 50)
    setups = {}
    for count in args.counts:
        url = to_url(server_url).set(database=f"colls_{count}")
        admin(server_url, f"CREATE DATABASE colls_{count}")
        url_text = url.render_as_string(hide_password=False)
        migrate.upgrade(url_text)
        engine = sa.create_engine(url)
        for other in range(count - 1):  # bulk loads, then one index build each
            store = PostgresVectorStore(engine, f"other_{other}", IDENTITY)
            store.create_collection(index=False)
            store.add(nodes_for(vectors[total:], f"o{other}_"))
            build_index(engine, store.collection_name)
        target = PostgresVectorStore(engine, "target", IDENTITY)
        collection = target.create_collection(index=False)
        for offset in range(0, args.target, args.batch):
            target.add(nodes_for(vectors[offset : offset + args.batch], f"t{offset}_"))
        build_index(engine, "target")
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(sa.text("VACUUM ANALYZE crab_nodes"))
        setups[count] = (engine, target, collection.id)
        print(f"{count} collections ready", flush=True)

    plain = [VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=10) for q in queries]
    inserted = {count: 0.0 for count in args.counts}
    latencies: dict[int, list[float]] = {count: [] for count in args.counts}
    plans: dict[int, list[float]] = {count: [] for count in args.counts}
    shapes: dict[int, str] = {}
    for round_ in range(args.rounds):
        offset = args.target + round_ * args.batch
        batch = nodes_for(vectors[offset : offset + args.batch], f"r{round_}_")
        turn = round_ % len(args.counts)  # a different database goes first each round
        for count in args.counts[turn:] + args.counts[:turn]:
            engine, target, collection_id = setups[count]
            start = time.perf_counter()
            target.add(batch)
            inserted[count] += time.perf_counter() - start
            for query in plain:
                start = time.perf_counter()
                target.query(query)
                latencies[count].append((time.perf_counter() - start) * 1000)
            for q in queries[:10]:
                ms, shapes[count] = planning_ms(engine, collection_id, q)
                plans[count].append(ms)
        print(f"round {round_ + 1}/{args.rounds}", flush=True)

    with setups[args.counts[0]][0].connect() as connection:
        version = connection.scalar(sa.text("SELECT current_setting('server_version')"))
        pgvector = connection.scalar(
            sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        )
    for engine, target, _ in setups.values():
        target.close()
        engine.dispose()
    server.stop(Path(tmp.name) / "pgdata")
    tmp.cleanup()

    lines = [
        f"_Target collection: {args.target:,} → {total:,} nodes ({DIM}-dim clustered), other "
        f"collections {args.rows:,} nodes each, all with their HNSW index; {args.rounds} "
        f"interleaved rounds of {args.batch:,} inserts + 50 queries (k=10, ef_search 64); "
        f"{platform.machine()}, {os.cpu_count()} cores, PostgreSQL {version} + pgvector "
        f"{pgvector}_",
        "",
        "| collections in the database | insert rows/s | query p50 | query p95 "
        "| planning time (median) | plan uses the collection's index |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for count in args.counts:
        rate = args.batch * args.rounds / inserted[count]
        index_used = f"crab_nodes_hnsw_{setups[count][2]}" in shapes[count]
        lines.append(
            f"| {count} | {rate:,.0f} | {np.percentile(latencies[count], 50):.2f} ms "
            f"| {np.percentile(latencies[count], 95):.2f} ms | "
            f"{np.median(plans[count]):.3f} ms | {'yes' if index_used else 'NO'} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    out = HERE / "results" / f"collections-{datetime.date.today().isoformat()}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    print("written to", out)
    return text


if __name__ == "__main__":
    main()
