"""Time LlamaIndex's PGVectorStore.add() on the benchmark's vectors.

Runs inside benchmarks/.venv-pgvectorstore (llama-index-vector-stores-postgres 0.9.0 pins
SQLAlchemy < 2.1 and needs psycopg2 + asyncpg); bench_store.py drives it as a subprocess.
Prints one JSON line: {"rows": ..., "seconds": ..., "cpu": client CPU seconds}.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from llama_index.core.schema import TextNode
from llama_index.vector_stores.postgres import PGVectorStore


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket-dir", required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--user", default="postgres")
    parser.add_argument("--vectors", required=True)
    parser.add_argument("--categories", required=True)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--batch", type=int, default=10_000)
    args = parser.parse_args()
    vectors = np.load(args.vectors)[: args.rows]
    categories = np.load(args.categories)[: args.rows]
    sync_url = f"postgresql+psycopg2://{args.user}@/{args.database}?host={args.socket_dir}"
    async_url = f"postgresql+asyncpg://{args.user}@/{args.database}?host={args.socket_dir}"
    store = PGVectorStore.from_params(
        connection_string=sync_url,
        async_connection_string=async_url,
        table_name="bench_pgvectorstore",
        embed_dim=vectors.shape[1],
    )
    nodes = [
        TextNode(
            id_=f"n{i}",
            text=f"document {i} in category {int(c)}",
            embedding=v.tolist(),
            metadata={"category": int(c)},
        )
        for i, (v, c) in enumerate(zip(vectors, categories, strict=True))
    ]
    store.add(nodes[:1])  # table creation is not ingest
    start, cpu = time.perf_counter(), time.process_time()
    for offset in range(1, len(nodes), args.batch):
        store.add(nodes[offset : offset + args.batch])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({"rows": len(nodes) - 1, "seconds": seconds, "cpu": cpu}))


if __name__ == "__main__":
    main()
