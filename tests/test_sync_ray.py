"""Table sync workers as Ray actors, on a real two-node cluster (ray.cluster_utils.Cluster,
1 CPU each) and a real server."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from _sync import MODEL, Synced, embedder, synced, table
from click.testing import CliRunner

from llama_index_crab.cli import main
from llama_index_crab.sync.cluster import merge_reports, run_on_ray

__all__ = ["embedder", "synced", "table"]  # the shared fixtures, used by name

pytestmark = pytest.mark.slow


def test_two_actors_share_the_queue_and_write_every_row_once(cluster: Any, synced: Synced) -> None:
    rows = 200
    synced.sql(
        f"INSERT INTO {synced.table} (id, body) SELECT i, 'row ' || i || ' text' "
        "FROM generate_series(1, :rows) AS i",
        rows=rows,
    )
    synced.declare()
    reports = run_on_ray(synced.url, [synced.collection], workers=2, once=True, batch_rows=20)
    assert len(reports) == 2
    assert sum(r.done for r in reports) == rows and min(r.done for r in reports) > 0
    assert merge_reports(reports).embedded == rows
    assert len(synced.docs()) == rows and synced.status().queued == 0


def test_crab_worker_ray(cluster: Any, synced: Synced) -> None:
    synced.sql(f"INSERT INTO {synced.table} (id, body) VALUES (1, 'printer jams'), (2, 'wifi')")
    synced.declare()
    env = {"CRAB_DATABASE_URL": synced.url, "CRAB_EMBED_MODEL": MODEL}
    args = ["worker", "--once", "-c", synced.collection, "--ray", "--ray-workers", "2"]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    assert "2 Ray workers: 2 queue items done: 2 rows embedded" in result.output
    assert set(synced.docs()) == {f"{synced.table}:1", f"{synced.table}:2"}


def test_actors_keep_following_the_table_until_stopped(cluster: Any, synced: Synced) -> None:
    synced.declare()
    stop, reports = threading.Event(), []

    def follow() -> None:
        found = run_on_ray(synced.url, [synced.collection], workers=2, stop=stop, poll_seconds=0.2)
        reports.extend(found)

    runner = threading.Thread(target=follow)
    runner.start()
    synced.sql(f"INSERT INTO {synced.table} (id, body) VALUES (1, 'written while they run')")
    deadline = time.monotonic() + 60
    while not synced.docs() and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    runner.join(timeout=30)
    assert not runner.is_alive()
    assert synced.docs() == {f"{synced.table}:1": ["written while they run"]}
    assert merge_reports(reports).embedded == 1
