"""`crab serve` with real clients: the `openai` package, HTTP requests, and the `crab` command.

One server process (the bundled q8_0 embedder and the toy reranker, a test collection) serves
most tests; it listens on a free loopback port. Only loopback addresses are used.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from _models import EMBEDDER_Q8, RERANKER_Q8, ROOT

CRAB = str(Path(sys.executable).with_name("crab"))
CORPUS = ROOT / "examples" / "corpus" / "python-reference"
TOPICS = ["with", "yield", "pass", "try"]
QUESTION = "how do generator functions use yield?"
http = httpx.Client(timeout=120)


class Server:
    """A `crab serve` process and where it listens."""

    def __init__(self, process: subprocess.Popen[str], url: str, env: dict[str, str]) -> None:
        self.process = process
        self.url = url
        self.env = env

    def stats(self) -> dict[str, dict[str, int]]:
        return http.get(f"{self.url}/stats").json()  # type: ignore[no-any-return]


def start_server(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], str]:
    """Start `crab serve ARGS` and wait for its ready line (the URL it listens on)."""
    process = subprocess.Popen(
        [CRAB, "serve", "--port", "0", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # the ready line, or "" when the process died
    if not line.startswith("crab serve: "):
        process.kill()
        _, err = process.communicate(timeout=30)
        pytest.fail(f"crab serve did not start: {line!r} {err}")
    return process, line.split()[2]


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def env(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of every `crab` run here: the test database, a new collection
    filled from a few corpus files, the bundled q8_0 embedder and the toy reranker."""
    tmp = tmp_path_factory.mktemp("serve")
    docs = tmp / "docs"
    docs.mkdir()
    for topic in TOPICS:
        shutil.copy(CORPUS / f"{topic}.md", docs / f"{topic}.md")
    env = {
        **os.environ,
        "CRAB_DATABASE_URL": database_url,
        "CRAB_COLLECTION": f"serve_{os.getpid()}",
        "CRAB_EMBED_MODEL": str(EMBEDDER_Q8),
        "CRAB_RERANK_MODEL": str(RERANKER_Q8),
        "CRAB_CACHE_DIR": str(tmp / "cache"),
    }
    done = subprocess.run(
        [CRAB, "ingest", str(docs)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return env


@pytest.fixture(scope="module")
def server(env: dict[str, str]) -> Iterator[Server]:
    process, url = start_server(env, "--max-request-bytes", str(512 * 1024))
    yield Server(process, url, env)
    stop(process)


def crab(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CRAB, *args], env=env, capture_output=True, text=True, timeout=300)


def test_openai_client_gets_our_vectors(server: Server) -> None:
    from openai import OpenAI

    from llama_index_crab import LlamaCppEmbedding

    texts = ["A man is eating food.", "The with statement wraps a block.", "def f(): yield 1"]
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    got = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)  # base64 by default
    as_float = client.embeddings.create(
        model="all-MiniLM-L6-v2", input=texts, encoding_format="float"
    )
    with LlamaCppEmbedding(str(EMBEDDER_Q8), weights="file") as model:  # as the server loads it
        expected = model.embed(texts)
    for vectors in (got, as_float):
        assert [d.index for d in vectors.data] == [0, 1, 2]
        found = np.array([d.embedding for d in vectors.data])
        assert found.shape == (3, 384)
        assert np.min(np.sum(found * expected, axis=1)) > 0.9999
    assert got.usage.prompt_tokens > 10


def test_rerank_gives_the_cli_scores(server: Server) -> None:
    docs = ["a cat sat on the mat", "the yield statement makes a generator", "pass does nothing"]
    reply = http.post(f"{server.url}/rerank", json={"query": QUESTION, "texts": docs})
    assert reply.status_code == 200, reply.text
    ranked = reply.json()
    cli = crab(server.env, "rerank", QUESTION, *docs)
    assert cli.returncode == 0, cli.stderr
    lines = [line.split() for line in cli.stdout.splitlines()]
    assert [r["index"] for r in ranked] == [int(line[1].strip("[]")) for line in lines]
    assert [round(r["score"], 4) for r in ranked] == pytest.approx(
        [float(line[0]) for line in lines], abs=2e-4
    )


def test_query_gives_the_cli_results(server: Server) -> None:
    reply = http.post(f"{server.url}/query", json={"query": QUESTION, "top_n": 3, "top_k": 10})
    assert reply.status_code == 200, reply.text
    local = crab(
        server.env, "query", QUESTION, "--top-n", "3", "--top-k", "10", "--json", "--no-serve"
    )
    assert local.returncode == 0, local.stderr
    served, expected = reply.json(), json.loads(local.stdout)
    assert set(served) == set(expected)
    assert served["stages"] == expected["stages"]
    assert [r["node_id"] for r in served["results"]] == [r["node_id"] for r in expected["results"]]
    assert [r["score"] for r in served["results"]] == pytest.approx(
        [r["score"] for r in expected["results"]], abs=1e-3
    )


def test_cli_query_and_ask_use_the_running_server(server: Server) -> None:
    before = server.stats()["embed"]["requests"]
    query = crab(server.env, "query", QUESTION, "--top-n", "2", "--top-k", "5", "--json")
    assert query.returncode == 0, query.stderr
    assert f"answered by crab serve at {server.url}" in query.stderr
    assert len(json.loads(query.stdout)["results"]) == 2
    ask = crab(server.env, "ask", QUESTION, "--top-n", "2", "--top-k", "5")
    assert ask.returncode == 0, ask.stderr
    assert "answered by crab serve" in ask.stderr and "answer:" in ask.stdout
    assert server.stats()["embed"]["requests"] >= before + 2


def test_concurrent_requests_share_decodes(server: Server) -> None:
    texts = [f"question number {i} about context managers" for i in range(24)]
    before = server.stats()["embed"]
    barrier = threading.Barrier(len(texts))
    statuses: list[int] = []

    def one(text: str) -> None:
        barrier.wait()
        reply = http.post(f"{server.url}/v1/embeddings", json={"input": text}, timeout=60)
        statuses.append(reply.status_code)

    threads = [threading.Thread(target=one, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = server.stats()["embed"]
    assert statuses == [200] * len(texts)
    assert after["requests"] - before["requests"] == len(texts)
    assert after["decodes"] - before["decodes"] < len(texts)
    assert after["largest"] > 1


def one_line_error(reply: httpx.Response, status: int) -> str:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert reply.text.count("\n") == 1 and reply.text.endswith("\n")
    error = reply.json()["error"]
    assert error["code"] == status
    return str(error["message"])


def test_malformed_requests_get_one_line_json_errors(server: Server) -> None:
    url = server.url
    bad_json = http.post(f"{url}/v1/embeddings", content=b"{not json", timeout=10)
    assert "not JSON" in one_line_error(bad_json, 400)
    no_input = http.post(f"{url}/v1/embeddings", json={"model": "x"})
    assert "'input' is required" in one_line_error(no_input, 400)
    tokens = http.post(f"{url}/v1/embeddings", json={"input": [[101, 2023]]})
    assert "token id" in one_line_error(tokens, 400)
    empty = http.post(f"{url}/rerank", json={"query": "q", "texts": ["  "]})
    assert "empty" in one_line_error(empty, 400)
    top = http.post(f"{url}/query", json={"query": "q", "top_n": 0})
    assert "top_n" in one_line_error(top, 400)
    missing = http.post(f"{url}/query", json={"query": "q", "collection": "no_such_thing"})
    assert "no_such_thing" in one_line_error(missing, 404)
    assert "/nowhere" in one_line_error(http.get(f"{url}/nowhere"), 404)
    assert one_line_error(http.get(f"{url}/v1/embeddings"), 405)


def test_oversize_requests_are_refused(server: Server) -> None:
    big = {"input": ["word " * 200_000]}  # 1 MB of text, over the 512 KiB limit given
    reply = http.post(f"{server.url}/v1/embeddings", json=big, timeout=30)
    assert "--max-request-bytes" in one_line_error(reply, 413)
    many = {"input": ["a text"] * 3000}
    assert "at most 2048" in one_line_error(
        http.post(f"{server.url}/v1/embeddings", json=many), 400
    )


def test_listens_on_loopback_only_by_default(server: Server) -> None:
    import psutil

    listening = [
        c.laddr
        for c in psutil.Process(server.process.pid).net_connections("inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening)


def test_a_network_host_needs_a_token(env: dict[str, str]) -> None:
    started = time.perf_counter()
    refused = crab(env, "serve", "--host", "0.0.0.0", "--port", "0")
    assert refused.returncode != 0
    assert "--token" in refused.stderr and refused.stderr.count("\n") == 1
    assert time.perf_counter() - started < 60


def test_unix_socket_with_token(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "crab.sock"
    own = {**env, "CRAB_CACHE_DIR": str(tmp_path / "cache")}  # its own server file
    process, where = start_server(own, "--socket", str(path), "--token", "s3cret")
    try:
        assert where == f"unix:{path}"
        assert path.stat().st_mode & 0o777 == 0o600
        client = httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), timeout=120)
        assert "token" in one_line_error(client.get("http://crab/health"), 401)
        wrong = client.get("http://crab/health", headers={"Authorization": "Bearer nope"})
        assert one_line_error(wrong, 401)
        right = client.get("http://crab/health", headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200 and right.json()["status"] == "ok"
        query = crab(own, "query", QUESTION, "--top-n", "1", "--top-k", "3")
        assert query.returncode == 0 and f"crab serve at unix:{path}" in query.stderr
    finally:
        stop(process)
    assert not path.exists()


def test_other_machines_are_refused_without_a_token() -> None:
    """The guard in front of the routes, given a connection from another address (an ASGI
    scope as uvicorn makes it; nothing is sent over a network)."""
    import asyncio

    from llama_index_crab.http.guard import Guard

    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"{}"})  # type: ignore[operator]

    async def call(guard: Guard, client: tuple[str, int] | None, headers: list) -> int:  # type: ignore[type-arg]
        sent: list[dict] = []  # type: ignore[type-arg]

        async def receive() -> dict:  # type: ignore[type-arg]
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:  # type: ignore[type-arg]
            sent.append(message)

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/health",
            "headers": headers,
            "client": client,
        }
        await guard(scope, receive, send)
        return int(sent[0]["status"])

    open_guard = Guard(app, token=None, max_body=1000)
    token_guard = Guard(app, token="t", max_body=1000)
    bearer = [(b"authorization", b"Bearer t")]
    assert asyncio.run(call(open_guard, ("192.0.2.7", 40000), [])) == 403
    assert asyncio.run(call(open_guard, ("127.0.0.1", 40000), [])) == 200
    assert asyncio.run(call(open_guard, None, [])) == 200  # a Unix socket
    assert asyncio.run(call(token_guard, ("192.0.2.7", 40000), [])) == 401
    assert asyncio.run(call(token_guard, ("192.0.2.7", 40000), bearer)) == 200
