"""Ingest on a Ray cluster: the same documents, chunks and vectors as ``crab ingest``.

The driver lists the files and the hashes already stored; reader actors read and chunk
(unchanged files are skipped there, as in a single-process run); a pool of embedding
actors, spread over the cluster's nodes, loads the model once each; a few writer actors
(one database connection each) write every batch of whole documents in one transaction
with :meth:`.PostgresVectorStore.replace_documents`, the single-process write path. A worker that
dies is restarted by Ray and its batch redone; since a document is only ever replaced
whole, a retried or interrupted run leaves no duplicate and no partial document.
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ClusterError, CrabError
from .batching import Batcher, WriteGroup
from .files import FileSet, find_files
from .local import IngestReport, Progress, prune_documents, record_written, splitter_for

if TYPE_CHECKING:
    from ..models.embedding import LlamaCppEmbedding
    from ..store.vector_store import PostgresVectorStore

__all__ = ["connect", "ingest_distributed"]

# Model settings the actors rebuild the embedding model from (threads come from Ray's CPUs).
SPEC_FIELDS = (
    "model_path",
    "pooling",
    "normalize",
    "add_start_token",
    "query_prefix",
    "text_prefix",
    "truncate",
    "allow_empty",
    "max_length",
    "batch_tokens",
    "flash_attn",
)
IN_FLIGHT = 2  # batches queued per embedding actor, so it never waits for the next one


def ingest_distributed(
    paths: Iterable[str | Path] | FileSet,
    embed_model: LlamaCppEmbedding,
    store: PostgresVectorStore,
    *,
    address: str | None = None,
    workers: int | None = None,
    cpus_per_worker: int = 1,
    writers: int = 1,
    batch_chunks: int = 512,
    prune: bool = True,
    files_per_task: int = 8,
    max_retries: int = 3,
    progress: Progress | None = None,
    follow_links: bool = False,
    **chunking: Any,
) -> IngestReport:
    """Ingest files and folders into ``store`` on a Ray cluster, with the result of
    :func:`.ingest.ingest_paths` (same arguments): the same chunks, the same batches of
    ``batch_chunks`` (llama.cpp's vectors depend on which texts share a batch, by up to
    1e-3), so the same vectors.

    ``address`` is passed to ``ray.init`` when Ray is not initialised yet (None: the
    cluster in ``RAY_ADDRESS`` or one started with ``ray start`` here, else a new local
    one). ``workers`` embedding actors (default: as many as the cluster's CPUs allow)
    take ``cpus_per_worker`` CPUs and threads each; ``writers`` bounds the database
    connections; a read task reads ``files_per_task`` files. The files must be readable
    at the same path on every node, and the store's URL must reach the database from every
    node. ``report.seconds`` sums each stage over all workers.
    """
    if embed_model._llm is not None:
        raise ValueError(
            "a distributed ingest rebuilds the model on every worker; pass the embedding "
            "model as a GGUF path, not a llama_cpp.Llama"
        )
    sizes = {"cpus_per_worker": cpus_per_worker, "writers": writers, "batch_chunks": batch_chunks}
    sizes |= {"files_per_task": files_per_task, "max_retries + 1": max_retries + 1}
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} must be ≥ 1, got {value!r}")
    inspect.signature(splitter_for).bind(embed_model, **chunking)  # a bad option fails here
    found = paths if isinstance(paths, FileSet) else find_files(paths, follow_links=follow_links)
    report = IngestReport(problems=list(found.problems))
    known = store.document_hashes()  # the database is checked before any work is sent out
    import ray

    owned = connect(address)
    try:
        spec = tuple((name, getattr(embed_model, name)) for name in SPEC_FIELDS)
        # The actors load the very file the driver's model loads (its weights already chosen).
        spec += (("weights", "file"),)
        run = _Run(ray, spec, store, cpus_per_worker, writers, max_retries, workers)
        run.chunking, run.batcher = tuple(sorted(chunking.items())), Batcher(batch_chunks)
        run.ingest(found, known, report, files_per_task, progress)
    finally:
        if owned:
            ray.shutdown()
    if prune:
        report.removed = prune_documents(store, found, known)
    return report


# One embedding job: (read task's documents, index of a document, first and end chunk).
Part = tuple[Any, int, int, int]


class _Run:
    """One run's actors, and the driver loop that feeds them in the single-process order."""

    chunking: tuple[tuple[str, Any], ...] = ()

    def __init__(
        self,
        ray: Any,
        spec: tuple[tuple[str, Any], ...],
        store: PostgresVectorStore,
        cpus: int,
        writers: int,
        retries: int,
        workers: int | None,
    ) -> None:
        from . import ray_workers as _ray_workers

        self.ray, self.spec = ray, spec
        total = int(ray.cluster_resources().get("CPU", 0))
        count = workers if workers is not None else max(1, total // cpus)
        if count < 1 or count * cpus > total:
            raise ValueError(
                f"{count} workers × {cpus} CPUs do not fit the Ray cluster's {total} CPUs; "
                "use fewer workers or fewer CPUs per worker"
            )
        actor = {"max_restarts": retries, "max_task_retries": retries}
        embedder = ray.remote(_ray_workers.Embedder).options(
            num_cpus=cpus, scheduling_strategy="SPREAD", **actor
        )
        # Readers and writers take no CPU slot: they are a few % of the work, and the
        # driver keeps only one read per embedding actor ahead of it.
        writer = ray.remote(_ray_workers.Writer).options(num_cpus=0, **actor)
        reader = ray.remote(_ray_workers.Reader).options(
            num_cpus=0, scheduling_strategy="SPREAD", **actor
        )
        url = store.client.url.render_as_string(hide_password=False)
        self.embedders = [embedder.remote(spec, cpus) for _ in range(count)]
        self.readers = [reader.remote() for _ in range(count)]
        self.writers = [
            writer.remote(url, store.collection_name, store._identity, store.normalize)
            for _ in range(writers)
        ]
        self.units: deque[tuple[list[Part], int]] = deque()  # (job, its write group)
        self.groups: list[list[Any]] = []  # per write group: its embedded jobs
        self.sizes: list[int] = []  # per write group: how many jobs it waits for
        self.batcher: Batcher[tuple[Any, int]] = Batcher(512)

    def ingest(
        self,
        found: FileSet,
        known: dict[str, str],
        report: IngestReport,
        files_per_task: int,
        progress: Progress | None,
    ) -> None:
        ray, files = self.ray, [str(f) for f in found.files]
        tasks = deque(files[i : i + files_per_task] for i in range(0, len(files), files_per_task))
        known_ref, roots = ray.put(known), [str(f) for f in found.folders]
        reads: deque[tuple[Any, Any]] = deque()  # (summary, documents), in file order
        embedding: dict[Any, tuple[int, int]] = {}  # embedded job -> (actor, write group)
        busy = [0] * len(self.embedders)
        writing: dict[Any, int] = {}  # write summary -> writer
        queued = [0] * len(self.writers)
        ahead = len(self.embedders)  # reads in flight: reading is ~3 % of the work
        try:
            while tasks or reads or self.batcher or self.units or embedding or writing:
                while tasks and len(reads) < ahead and len(self.units) <= IN_FLIGHT * ahead:
                    read = self.readers[len(tasks) % len(self.readers)].read
                    head, body = read.options(num_returns=2).remote(
                        tasks.popleft(), known_ref, self.spec, self.chunking, roots
                    )
                    reads.append((head, body))
                while reads and ray.wait([reads[0][0]], timeout=0, fetch_local=False)[0]:
                    head, body = reads.popleft()
                    self._batch(self._get(head), body, report, progress)
                if not tasks and not reads:
                    self._flush()
                for i in sorted(range(len(busy)), key=busy.__getitem__):
                    if self.units and busy[i] < IN_FLIGHT:
                        job, group = self.units.popleft()
                        embedding[self.embedders[i].embed.remote(job)] = (i, group)
                        busy[i] += 1
                waiting = [reads[0][0]] if reads else []
                waiting += [*embedding, *writing]
                if not waiting:
                    continue
                done = ray.wait(waiting, fetch_local=False)[0][0]
                if done in embedding:
                    actor, group = embedding.pop(done)
                    busy[actor] -= 1
                    self.groups[group].append(done)
                    if len(self.groups[group]) == self.sizes[group]:
                        w = min(range(len(queued)), key=queued.__getitem__)
                        writing[self.writers[w].write.remote(*self.groups[group])] = w
                        queued[w] += 1
                        self.groups[group] = []
                elif done in writing:
                    queued[writing.pop(done)] -= 1
                    written = self._get(done)
                    report.seconds["embed"] += written["embed"]
                    report.seconds["write"] += written["write"]
                    record_written(report, known, written["docs"], written["chunks"])
                    if progress is not None:
                        progress(len(written["docs"]), written["chunks"])
        finally:
            for handle in [*self.readers, *self.embedders, *self.writers]:
                ray.kill(handle)  # a write cut short rolls back: documents stay whole

    def _batch(
        self, head: dict[str, Any], body: Any, report: IngestReport, progress: Progress | None
    ) -> None:
        """Queue one read task's documents in the batches ``ingest_paths`` would make."""
        report.unchanged += head["unchanged"]
        report.empty += head["empty"]
        report.problems += head["problems"]
        report.seconds["read"] += head["seconds"]
        if progress is not None and head["unchanged"] + head["empty"]:
            progress(head["unchanged"] + head["empty"], 0)
        for i, chunks in enumerate(head["chunks"]):
            for group in self.batcher.add((body, i), chunks):
                self._group(group)

    def _flush(self) -> None:
        for group in self.batcher.flush():
            self._group(group)

    def _group(self, group: WriteGroup[tuple[Any, int]]) -> None:
        """Embed each job of ``group`` in one call; write its documents in one transaction."""
        jobs = [[(body, i, start, end) for (body, i), start, end in job] for job in group]
        self.units.extend((job, len(self.groups)) for job in jobs)
        self.groups.append([])
        self.sizes.append(len(jobs))

    def _get(self, ref: Any) -> Any:
        """The result of a task, or its error as one of ours (a clear line, no Ray traceback)."""
        from ray import exceptions

        try:
            return self.ray.get(ref)
        except exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, (CrabError, OSError, ValueError, TypeError)):
                raise cause from None
            if isinstance(cause, exceptions.RayError):
                raise _lost(cause) from exc
            raise
        except exceptions.RayError as exc:
            raise _lost(exc) from exc


def connect(address: str | None) -> bool:
    """Join the Ray cluster at ``address`` (None: ``RAY_ADDRESS``, one started with ``ray
    start`` here, else a new local one) unless Ray is initialised already; returns whether
    it joined (the caller then shuts Ray down)."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        _check_reachable(address)  # ray.init would retry for minutes
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(
            f"could not reach the Ray cluster at {address or 'auto'!r} ({exc}); start one "
            "with `ray start --head` or pass its address"
        ) from exc
    return True


def _check_reachable(address: str) -> None:
    import socket

    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", "local" or a form Ray parses itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise ClusterError(
            f"could not reach the Ray cluster at {address!r} ({exc.strerror or exc}); start "
            "it with `ray start --head` or check the address"
        ) from exc


def _lost(exc: Exception) -> ClusterError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ClusterError(
        f"a Ray worker was lost more often than it is retried ({first}); documents written "
        "so far are whole, run the ingest again to finish"
    )
