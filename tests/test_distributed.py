"""Distributed ingest on a real two-node Ray cluster (ray.cluster_utils.Cluster, 1 CPU each).

The cluster starts once for the module; every run is compared row by row with a
single-process `crab ingest` of the same folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from _models import EMBEDDER_Q8, ROOT
from click.testing import CliRunner

from llama_index_crab import ClusterError, DatabaseUnavailableError, build_pipeline
from llama_index_crab.cli import main
from llama_index_crab.ingest.distributed import ingest_distributed
from llama_index_crab.store.db import to_url

pytestmark = pytest.mark.slow

CORPUS = ROOT / "examples" / "corpus" / "python-reference"
TOPICS = ["assert", "break", "continue", "del", "global", "if", "pass", "raise", "return", "with"]
Row = tuple[str, str | None, str, str, str]
BATCH = 4  # chunks per embedding batch: several batches for two workers (and a kill)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    docs = tmp_path_factory.mktemp("docs")
    for topic in TOPICS:
        shutil.copy(CORPUS / f"{topic}.md", docs / f"{topic}.md")
    return docs


def _cli(database_url: str, collection: str, *args: str) -> str:
    env = {"CRAB_DATABASE_URL": database_url, "CRAB_COLLECTION": collection}
    result = CliRunner().invoke(main, ["ingest", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def reference(database_url: str, folder: Path) -> list[Row]:
    """What a single-process `crab ingest` stores for the folder."""
    _cli(database_url, "distributed_ref", str(folder), "--batch-chunks", str(BATCH))
    return _rows(database_url, "distributed_ref")


def _rows(database_url: str, collection: str) -> list[Row]:
    """Every stored node: id, document, text, metadata, node JSON; vectors kept aside."""
    rows, _ = _stored(database_url, collection)
    return rows


def _stored(database_url: str, collection: str) -> tuple[list[Row], np.ndarray]:
    engine = sa.create_engine(to_url(database_url), poolclass=sa.NullPool)
    with engine.connect() as c:
        out = c.execute(
            sa.text(
                "SELECT n.node_id, n.ref_doc_id, n.text, n.metadata::text, n.node_content, "
                "n.embedding::text FROM crab_nodes n JOIN crab_collections c "
                "ON c.id = n.collection_id WHERE c.name = :name ORDER BY n.node_id"
            ),
            {"name": collection},
        ).all()
    engine.dispose()
    vectors = np.array([[float(x) for x in r[5].strip("[]").split(",")] for r in out])
    return [(r[0], r[1], r[2], r[3], r[4]) for r in out], vectors


def _embedders() -> dict[int, int]:
    """{pid: parent pid} of this test's Ray embedding actors (Ray titles them ray::Embedder)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes()
            parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if title.startswith(b"ray::Embedder") and _descends_from_us(parent):
            found[int(entry)] = parent
    return found


def _descends_from_us(pid: int) -> bool:
    while pid > 1:
        if pid == os.getpid():
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
    return False


def test_cli_ray_matches_crab_ingest_row_by_row_and_rerun_adds_nothing(
    cluster: Any, database_url: str, folder: Path, reference: list[Row], collection_name: str
) -> None:
    first = _cli(database_url, collection_name, str(folder), "--batch-chunks", "4", "--ray")
    assert f"{len(TOPICS)} added, 0 updated, 0 unchanged" in first
    rows, vectors = _stored(database_url, collection_name)
    expected, expected_vectors = _stored(database_url, "distributed_ref")
    assert rows == expected  # same node ids, documents, texts, metadata, node JSON
    assert np.abs(vectors - expected_vectors).max() <= 1e-6  # the same batches: the same vectors

    again = _cli(database_url, collection_name, str(folder), "--ray", "--ray-workers=1")
    assert f"0 added, 0 updated, {len(TOPICS)} unchanged" in again
    assert _rows(database_url, collection_name) == expected


def _ingest_in_thread(
    database_url: str, collection: str, folder: Path, retries: int
) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        pipe = build_pipeline(
            EMBEDDER_Q8, database_url=database_url, collection=collection, rerank=False
        )
        try:
            outcome["report"] = pipe.ingest(
                [folder],
                executor="ray",
                workers=2,
                batch_chunks=BATCH,
                files_per_task=2,
                max_retries=retries,
            )
        except Exception as exc:
            outcome["error"] = exc
        finally:
            pipe.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _kill_an_embedder_mid_batch() -> tuple[dict[int, int], int]:
    """Wait until both actors are up and one is embedding, then SIGKILL that one."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        actors = _embedders()
        busy = [pid for pid in actors if b".embed" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        if len(actors) == 2 and busy:
            os.kill(busy[0], signal.SIGKILL)
            return actors, busy[0]
        time.sleep(0.005)
    raise AssertionError("no embedding actor got to work within 120 s")


def test_killed_embedding_actor_is_restarted_and_the_run_completes(
    cluster: Any, database_url: str, folder: Path, reference: list[Row], collection_name: str
) -> None:
    thread, outcome = _ingest_in_thread(database_url, collection_name, folder, retries=3)
    actors, _ = _kill_an_embedder_mid_batch()
    assert len(set(actors.values())) == 2, "one embedding actor on each node (two raylets)"
    thread.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["report"].added == len(TOPICS)
    assert _rows(database_url, collection_name) == reference  # no duplicate, nothing missing


def test_worker_lost_for_good_fails_clearly_and_rerun_completes(
    cluster: Any, database_url: str, folder: Path, reference: list[Row], collection_name: str
) -> None:
    thread, outcome = _ingest_in_thread(database_url, collection_name, folder, retries=0)
    _kill_an_embedder_mid_batch()
    thread.join(timeout=300)
    error = outcome.get("error")
    assert isinstance(error, ClusterError), outcome
    assert "run the ingest again" in str(error) and "\n" not in str(error)
    partial = _rows(database_url, collection_name)
    assert len(partial) < len(reference)
    for doc in {r[1] for r in partial}:  # each document whole or absent
        assert [r for r in partial if r[1] == doc] == [r for r in reference if r[1] == doc]

    thread, outcome = _ingest_in_thread(database_url, collection_name, folder, retries=3)
    thread.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["report"].unchanged == len({r[1] for r in partial})
    assert _rows(database_url, collection_name) == reference


def test_unreachable_database_is_a_clear_error_before_any_work(
    cluster: Any, folder: Path, collection_name: str
) -> None:
    from llama_index_crab import LlamaCppEmbedding, PostgresVectorStore

    model = LlamaCppEmbedding(EMBEDDER_Q8)
    store = PostgresVectorStore(
        "postgresql://crab@127.0.0.1:9/nowhere?connect_timeout=2",
        collection_name,
        identity=model.identity(),
    )
    before = set(_embedders())  # earlier tests' actors may still be exiting
    with pytest.raises(DatabaseUnavailableError):
        ingest_distributed([folder], model, store)
    assert set(_embedders()) <= before, "no actor was started"
    store.close()


def test_unreachable_cluster_is_one_line_and_exit_code_1(
    database_url: str, folder: Path, collection_name: str
) -> None:
    env = {**os.environ, "CRAB_DATABASE_URL": database_url, "CRAB_COLLECTION": collection_name}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "llama_index_crab.cli",
            "ingest",
            str(folder),
            "--ray",
            "127.0.0.1:9",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("error: could not reach the Ray cluster at '127.0.0.1:9'")
    )
    assert "Traceback" not in done.stderr
    assert _rows(database_url, collection_name) == []
