"""`crab query` cold, and `crab serve` (issue #27): what a query costs a new process, and
what it costs through a resident server.

``python -m benchmarks.serve [--before PATH [--before-pgdata DIR]] [--runs 5]``. Uses the
embedded server of ``CRAB_PGDATA`` with the demo corpus ingested (``crab ingest
examples/corpus/python-reference``) in the collection ``CRAB_COLLECTION`` (default
"default"). ``--before PATH``: a checkout of an older version, timed interleaved with this
one (``git worktree add /tmp/before <commit>``), both with this venv's ``crab``.

1. ``crab query "..." --top-n 3`` wall time, a new process each run (the OS page cache
   warm, the database running): median of ``--runs``, before/after interleaved, and
   ``crab query`` answered by a running ``crab serve``.
2. ``POST /query`` p50/p95 over ``--queries`` questions of the labelled set with 1 and 8
   concurrent clients.
3. Embeddings/s: the corpus chunks through ``POST /v1/embeddings`` (32 texts per request,
   1 and 8 clients) against ``LlamaCppEmbedding.embed`` in this process (32 per call, and
   all in one call).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CRAB = str(Path(sys.executable).with_name("crab"))
QUESTION = "How do I catch an exception?"
QUERIES = ROOT / "tests" / "data" / "python-reference-qa" / "queries.jsonl"


def _env(repo: Path, pgdata: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    if pgdata is not None:
        env["CRAB_PGDATA"] = str(pgdata)
    return env


def cold_query(repo: Path, *extra: str, pgdata: Path | None = None) -> tuple[float, float, str]:
    """Wall and CPU seconds (user + system) of one `crab query` process from ``repo``, and
    its stderr. On a shared machine the CPU seconds move less than the wall time."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [CRAB, "query", QUESTION, "--top-n", "3", *extra],
        env=_env(repo, pgdata),
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if done.returncode != 0:
        raise RuntimeError(f"crab query failed ({repo}): {done.stderr.strip()}")
    return seconds, cpu, done.stderr


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _post(url: str, path: str, body: dict[str, Any]) -> Any:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=300)
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {data[:200]!r}")
        return json.loads(data)
    finally:
        connection.close()


def _get(url: str, path: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url + path, timeout=30) as response:
        return json.loads(response.read())


def served_latency(url: str, questions: list[str], clients: int) -> list[float]:
    """Seconds per ``POST /query``, ``clients`` at a time."""

    def one(question: str) -> float:
        start = time.perf_counter()
        _post(url, "/query", {"query": question, "top_n": 3})
        return time.perf_counter() - start

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, questions))


def served_embeddings(url: str, texts: list[str], clients: int, per_request: int = 32) -> float:
    """Texts per second through ``POST /v1/embeddings``."""
    batches = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda b: _post(url, "/v1/embeddings", {"input": b}), batches))
    return len(texts) / (time.perf_counter() - start)


def corpus_chunks(limit: int) -> list[str]:
    """Paragraphs of the demo corpus of 200-1,200 characters (about 40-300 tokens)."""
    texts: list[str] = []
    for path in sorted((ROOT / "examples" / "corpus" / "python-reference").glob("*.md")):
        for block in path.read_text().split("\n\n"):
            text = " ".join(block.split())
            if 200 <= len(text) <= 1200:
                texts.append(text)
    return texts[:limit]


def start_server(repo: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [CRAB, "serve", "--port", "0"],
        env=_env(repo),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("crab serve: "):
        process.kill()
        raise RuntimeError(f"crab serve did not start: {line!r}")
    return process, line.split()[2]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve")
    parser.add_argument("--before", type=Path, help="checkout of the version to compare with")
    parser.add_argument(
        "--before-pgdata",
        type=Path,
        help="data directory for --before (an older version may not read the newer schema): "
        "run its `crab ingest examples/corpus/python-reference` there first",
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--texts", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the embeddings test")
    args = parser.parse_args(argv)
    here = ROOT
    out: list[str] = []

    # 1. cold `crab query`, interleaved with the older checkout
    times: dict[str, list[tuple[float, float]]] = {"after": []}
    if args.before:
        times["before"] = []
    for r in range(args.runs):
        names = list(times) if r % 2 == 0 else list(reversed(times))
        for name in names:
            if name == "after":
                wall, cpu, _ = cold_query(here, "--no-serve")
            else:
                wall, cpu, _ = cold_query(args.before, pgdata=args.before_pgdata)
            times[name].append((wall, cpu))
            print(f"  cold {name} run {r + 1}: {wall:.2f} s wall, {cpu:.2f} s CPU", file=sys.stderr)

    process, url = start_server(here)
    try:
        times["served"] = []
        for _ in range(args.runs):
            wall, cpu, err = cold_query(here)
            if "crab serve" not in err:
                raise RuntimeError(f"crab query did not use the server: {err}")
            times["served"].append((wall, cpu))
        labels = {
            "before": "before (in-process)",
            "after": "after, in-process (`--no-serve`)",
            "served": "after, answered by a running `crab serve`",
        }
        out.append(
            '| `crab query "How do I catch an exception?" --top-n 3`, a new process '
            f"| wall, median of {args.runs} | CPU (user+sys), median | wall of each run |"
        )
        out.append("|---|---:|---:|---|")
        for name in ("before", "after", "served"):
            if name not in times:
                continue
            walls = [w for w, _ in times[name]]
            cpus = [c for _, c in times[name]]
            out.append(
                f"| {labels[name]} | {statistics.median(walls):.2f} s "
                f"| {statistics.median(cpus):.2f} s | "
                + ", ".join(f"{w:.2f}" for w in walls)
                + " |"
            )

        # 2. latency through the server
        lines = QUERIES.read_text().splitlines()
        questions = [json.loads(line)["text"] for line in lines][: args.queries]
        served_latency(url, questions[:5], 1)  # warm-up
        out.append("")
        out.append(
            f"| `POST /query` (hybrid, top 3), {len(questions)} questions | p50 | p95 | queries/s |"
        )
        out.append("|---|---:|---:|---:|")
        for clients in (1, 8):
            start = time.perf_counter()
            seconds = served_latency(url, questions, clients)
            rate = len(questions) / (time.perf_counter() - start)
            out.append(
                f"| {clients} client{'s' if clients > 1 else ''} | "
                f"{_percentile(seconds, 0.5) * 1000:.1f} ms | "
                f"{_percentile(seconds, 0.95) * 1000:.1f} ms | {rate:.1f} |"
            )

        # 3. embeddings/s, server against in-process, interleaved
        texts = corpus_chunks(args.texts)
        from llama_index_crab import LlamaCppEmbedding
        from llama_index_crab.pipeline import default_embed_model

        model = LlamaCppEmbedding(default_embed_model())
        model.embed(texts[:32])
        rates: dict[str, list[float]] = {}

        def local(per_call: int) -> float:
            start = time.perf_counter()
            for i in range(0, len(texts), per_call):
                model.embed(texts[i : i + per_call])
            return len(texts) / (time.perf_counter() - start)

        alternatives = {
            "in-process, 32 per call": lambda: local(32),
            "in-process, all in one call": lambda: local(len(texts)),
            "`/v1/embeddings`, 32 per request, 1 client": lambda: served_embeddings(url, texts, 1),
            "`/v1/embeddings`, 32 per request, 8 clients": lambda: served_embeddings(url, texts, 8),
        }
        for r in range(args.rounds):
            names = list(alternatives) if r % 2 == 0 else list(reversed(alternatives))
            for name in names:
                rates.setdefault(name, []).append(alternatives[name]())
        model.close()
        out.append("")
        out.append(
            f"| embeddings, {len(texts)} corpus paragraphs (40-300 tokens) "
            f"| texts/s (best of {args.rounds}) |"
        )
        out.append("|---|---:|")
        for name, values in rates.items():
            out.append(f"| {name} | {max(values):.0f} |")
        stats = _get(url, "/stats")
        out.append("")
        out.append(f"server counters at the end: `{json.dumps(stats)}`")
    finally:
        process.terminate()
        process.wait(timeout=30)
    print("\n".join(out))


if __name__ == "__main__":
    main()
