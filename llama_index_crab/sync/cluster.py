"""Table sync workers as Ray actors: each runs the queue loop of :class:`.Worker`.

They share the queue as worker processes started by hand do (``FOR UPDATE SKIP LOCKED``);
Ray places them on the cluster's nodes and restarts one whose process dies (its batch rolls
back, its items come back to the queue).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from .worker import Worker, WorkerReport

__all__ = ["SyncActor", "merge_reports", "run_on_ray"]


class SyncActor:
    """One :class:`.Worker` in a Ray actor; ``halt`` (a concurrent call) ends its loop."""

    def __init__(self, database_url: str, collections: Sequence[str], options: dict[str, Any]):
        self.stop = threading.Event()
        self.worker = Worker(database_url, collections, **options)

    def run(self, once: bool) -> WorkerReport:
        try:
            return self.worker.run(once=once, stop=self.stop)
        finally:
            self.worker.close()  # its connections go now, not when Ray reaps the actor

    def ready(self) -> None:
        """Returns once the worker has loaded its models."""
        self.worker.prepare()

    def halt(self) -> None:
        self.stop.set()


def run_on_ray(
    database_url: str,
    collections: Sequence[str] = (),
    *,
    address: str | None = None,
    workers: int | None = None,
    cpus_per_worker: int = 1,
    once: bool = False,
    stop: threading.Event | None = None,
    **options: Any,
) -> list[WorkerReport]:
    """Run ``workers`` :class:`.Worker` actors (default: as many as the cluster's CPUs
    allow), ``cpus_per_worker`` CPUs and llama.cpp threads each, until ``stop`` is set (or,
    with ``once``, until each finds nothing ready); their reports. ``options`` go to
    :class:`.Worker`; ``address`` as for ``crab ingest --ray``. ``database_url`` must reach
    the database from every node."""
    import ray as ray_module

    from ..ingest.distributed import connect

    ray: Any = ray_module  # its remote functions and actors are untyped

    if cpus_per_worker < 1 or (workers is not None and workers < 1):
        raise ValueError(f"workers and cpus_per_worker must be ≥ 1, got {workers!r}")
    owned = connect(address)
    stop = stop or threading.Event()
    actors: list[Any] = []
    try:
        if workers is None:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus_per_worker)
        actor = ray.remote(SyncActor).options(
            num_cpus=cpus_per_worker, max_concurrency=2, max_restarts=3, max_task_retries=3
        )
        options = {**options, "n_threads": cpus_per_worker}
        actors += [actor.remote(database_url, list(collections), options) for _ in range(workers)]
        # All start together, models loaded: the first actor up would drain a small queue alone.
        ray.get([a.ready.remote() for a in actors])
        pending = [a.run.remote(once) for a in actors]
        halted = False
        while True:
            _, waiting = ray.wait(pending, num_returns=len(pending), timeout=0.5)
            if not waiting:
                return list(ray.get(pending))
            if stop.is_set() and not halted:
                ray.get([a.halt.remote() for a in actors])
                halted = True
    finally:
        for handle in actors:  # stopping cuts a batch short: it rolls back, its items stay
            ray.kill(handle)
        if owned:
            ray.shutdown()


def merge_reports(reports: Sequence[WorkerReport]) -> WorkerReport:
    """One report adding up ``reports``."""
    merged = WorkerReport()
    for report in reports:
        for f in fields(WorkerReport):
            if f.name == "errors":
                merged.errors += [e for e in report.errors if e not in merged.errors]
            else:
                setattr(merged, f.name, getattr(merged, f.name) + getattr(report, f.name))
    return merged
