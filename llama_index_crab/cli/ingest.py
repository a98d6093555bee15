"""``crab ingest``: files and folders into a collection, with a progress bar."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from .group import fail
from .options import chunk_options, model_options, open_pipeline, pop_chunking, ray_options

__all__ = ["ingest"]


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@chunk_options
@click.option(
    "--batch-chunks",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Chunks per embed + write transaction.",
)
@click.option(
    "--prune/--no-prune",
    default=True,
    show_default=True,
    help="Mirror the folders: remove documents whose files are gone from them.",
)
@click.option(
    "--follow-links",
    is_flag=True,
    help="Also ingest symbolic links that lead out of the folders (and, as root, links "
    "other users left in folders they can write).",
)
@ray_options("Embedding workers")
@click.option("--ray-writers", type=int, default=1, show_default=True, help="Database connections.")
@model_options
def ingest(
    paths: tuple[str, ...],
    batch_chunks: int,
    ray_address: str | None,
    ray_workers: int | None,
    ray_cpus_per_worker: int,
    ray_writers: int,
    prune: bool,
    follow_links: bool,
    **opts: Any,
) -> None:
    """Ingest files and folders (.txt .md .html .pdf); unchanged files are skipped, and
    documents of files gone from the folders removed (--no-prune keeps them).

    A file that cannot be read is reported and the rest ingested (exit code 1).
    With --ray, put it after the paths (or give it an address): `crab ingest docs/ --ray`.
    """
    from ..ingest.files import find_files

    found = find_files(paths, follow_links=follow_links)
    pipe = open_pipeline(opts, create=False, rerank=False)
    kwargs: dict[str, Any] = pop_chunking(opts)
    if ray_address is not None:
        kwargs |= {
            "executor": "ray",
            "address": ray_address or None,
            "workers": ray_workers,
            "cpus_per_worker": ray_cpus_per_worker,
            "writers": ray_writers,
        }
    try:  # a missing collection is made by the first write: a failed run leaves none
        report = _ingest_with_progress(pipe, found, prune, batch_chunks, kwargs)
    finally:
        pipe.close()
    failed = [p for p in report.problems if p.error]
    for problem in report.problems:
        click.echo(f"{'error' if problem.error else 'warning'}: {problem}", err=True)
    seconds = " ".join(f"{k} {v:.1f}s" for k, v in report.seconds.items())
    counts = [
        (report.empty, "empty skipped"),
        (report.removed, "removed"),
        (len(report.problems) - len(failed), "skipped"),
        (len(failed), "failed"),
    ]
    click.echo(
        f"{report.added} added, {report.updated} updated, {report.unchanged} unchanged"
        + "".join(f", {n} {what}" for n, what in counts if n)
        + f"; {report.chunks} chunks into {opts['collection']!r} ({seconds})"
    )
    if failed:
        fail(f"{len(failed)} files could not be ingested (listed above); fix them and run again")
        sys.exit(1)


def _ingest_with_progress(
    pipe: Any, found: Any, prune: bool, batch_chunks: int, kwargs: dict[str, Any]
) -> Any:
    """Run the ingest with a progress bar, shown from the first document done: an error
    before (an old schema, a refused write) stays a one-line message."""
    from tqdm import tqdm

    started = time.perf_counter()
    bars: list[Any] = []
    chunks = 0

    def progress(docs: int, new_chunks: int) -> None:
        nonlocal chunks
        if not bars:
            bars.append(tqdm(total=len(found.files), unit="doc", desc="ingest", file=sys.stderr))
        chunks += new_chunks
        bars[0].update(docs)
        rate = chunks / (time.perf_counter() - started)
        bars[0].set_postfix_str(f"{chunks} chunks, {rate:.0f} chunks/s")

    try:
        report = pipe.ingest(
            found, progress=progress, batch_chunks=batch_chunks, prune=prune, **kwargs
        )
        if bars:
            bars[0].update(len(found.files) - bars[0].n)
    finally:
        for bar in bars:
            bar.close()
    return report
