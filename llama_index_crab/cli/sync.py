"""``crab vectorize`` and ``crab worker``: keep a collection in sync with a table."""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

import click

__all__ = ["vectorize", "worker"]


def _url(database_url: str | None) -> str:
    from ..pipeline import resolve_database_url

    return resolve_database_url(database_url)


def _columns(values: tuple[str, ...]) -> list[str]:
    """Columns given repeated or comma-separated (``--metadata a,b --metadata c``)."""
    return [c.strip() for value in values for c in value.split(",") if c.strip()]


def _print_status(url: str, collections: tuple[str, ...]) -> None:
    from ..sync import sync_status

    found = sync_status(url, collections)
    if not found:
        click.echo(
            "no table is kept in sync" + (f" with {', '.join(collections)}" if collections else "")
        )
        return
    for s in found:
        backfill = (
            "backfilled" if s.backfilled else "backfill not finished (run `crab vectorize` again)"
        )
        click.echo(
            f"{s.table} -> {s.collection!r}: {s.queued} queued, {s.failing} failing, "
            f"lag {s.lag_seconds:.1f} s, {backfill}"
        )
        if s.source_error:
            click.echo(f"  error: {s.source_error}")
        for count, error in s.errors:
            click.echo(f"  {count} item(s) failing: {error}")


@click.command()
@click.argument("table", required=False)
@click.option("--column", help="The text column to embed (one document per row).")
@click.option("--key", multiple=True, help="Column(s) naming a row; default: the primary key.")
@click.option("--metadata", multiple=True, help="Column(s) copied into each chunk's metadata.")
@click.option("--collection", "-c", envvar="CRAB_COLLECTION", help="Default: the table's name.")
@click.option("--embed-model", envvar="CRAB_EMBED_MODEL", help="Embedding GGUF for the workers.")
@click.option("--database-url", envvar="CRAB_DATABASE_URL", help="Default: the embedded server.")
@click.option("--no-backfill", is_flag=True, help="Only rows changed from now on.")
@click.option("--drop", is_flag=True, help="Stop syncing TABLE: remove its triggers.")
@click.option("--drop-collection", is_flag=True, help="With --drop: delete the collection too.")
@click.option("--status", is_flag=True, help="Show queue depth, lag and failures.")
def vectorize(
    table: str | None,
    column: str | None,
    key: tuple[str, ...],
    metadata: tuple[str, ...],
    collection: str | None,
    embed_model: str | None,
    database_url: str | None,
    no_backfill: bool,
    drop: bool,
    drop_collection: bool,
    status: bool,
) -> None:
    """Keep a collection in sync with the rows of TABLE: triggers queue every change,
    `crab worker` embeds them. Existing rows are queued once (resumable: run it again)."""
    from ..store.vector_store import PostgresVectorStore
    from ..sync import unvectorize
    from ..sync import vectorize as declare

    url = _url(database_url)
    if status:
        _print_status(url, (collection,) if collection else ())
        return
    if table is None:
        raise click.UsageError("give the TABLE to keep in sync (or --status)")
    name = collection or table.rpartition(".")[2].strip('"')
    if drop:
        store = PostgresVectorStore(url, name)
        try:
            found = unvectorize(store, table, drop_collection=drop_collection)
        finally:
            store.close()
        click.echo(
            f"{table} is {'no longer' if found else 'not'} kept in sync with {name!r}"
            + (f"; collection {name!r} dropped" if drop_collection else "")
        )
        return
    if drop_collection:
        raise click.UsageError("--drop-collection goes with --drop")
    if column is None:
        raise click.UsageError("give the text column to embed: --column COLUMN")
    from ..pipeline import build_pipeline

    pipe = build_pipeline(embed_model, None, database_url=url, collection=name, rerank=False)
    try:
        source = declare(
            pipe.store,
            table,
            column=column,
            key=_columns(key),
            metadata=_columns(metadata),
            embed_model=embed_model,
            backfill_rows=None,
        )
        from ..sync import backfill

        queued = 0 if no_backfill else backfill(url, source)
    finally:
        pipe.close()
    extra = f", metadata {', '.join(source.metadata_columns)}" if source.metadata_columns else ""
    click.echo(
        f"{source.label} -> collection {name!r} (key {', '.join(source.key_columns)}, "
        f"text {source.text_column}{extra}); {queued} existing rows queued; "
        f"run `crab worker -c {name}` to embed them"
    )


@click.command()
@click.option("--collection", "-c", "collections", multiple=True, help="Default: every synced one.")
@click.option("--once", is_flag=True, help="Process what is queued, then exit (cron, CI).")
@click.option("--status", is_flag=True, help="Show queue depth, lag and failures, then exit.")
@click.option("--batch-rows", type=click.IntRange(min=1), default=256, show_default=True)
@click.option(
    "--poll",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds between queue checks when no NOTIFY comes.",
)
@click.option("--embed-model", envvar="CRAB_EMBED_MODEL", help="Override the recorded model.")
@click.option("--database-url", envvar="CRAB_DATABASE_URL", help="Default: the embedded server.")
@click.option("--n-gpu-layers", type=click.IntRange(min=-1), default=0, envvar="CRAB_N_GPU_LAYERS")
def worker(
    collections: tuple[str, ...],
    once: bool,
    status: bool,
    batch_rows: int,
    poll: float,
    embed_model: str | None,
    database_url: str | None,
    n_gpu_layers: int,
) -> None:
    """Embed the queued rows of the tables `crab vectorize` declared; several workers (on
    any machines) share the queue. Wakes on NOTIFY; Ctrl-C or SIGTERM stops it."""
    from ..sync import Worker

    url = _url(database_url)
    if status:
        _print_status(url, collections)
        return
    stop = threading.Event()
    if not once and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    runner = Worker(
        url,
        collections,
        embed_model=embed_model,
        batch_rows=batch_rows,
        poll_seconds=poll,
        n_gpu_layers=n_gpu_layers,
    )
    shown = [time.monotonic()]

    def progress(report: Any) -> None:
        if time.monotonic() - shown[0] >= 2:
            shown[0] = time.monotonic()
            click.echo(_summary(report), err=True)

    try:
        report = runner.run(once=once, stop=stop, progress=progress)
    finally:
        runner.close()
    click.echo(_summary(report))
    if report.failed:
        click.secho(
            f"error: {report.failed} queue item(s) failed and wait for a retry: "
            f"{report.errors[0]} (see `crab worker --status`)",
            fg="red",
            err=True,
        )
        sys.exit(1)


def _summary(report: Any) -> str:
    parts = [
        (report.embedded, "rows embedded"),
        (report.reused, "metadata updated"),
        (report.unchanged, "unchanged"),
        (report.deleted, "removed"),
        (report.empty, "empty text skipped"),
        (report.failed, "failed"),
    ]
    return (
        f"{report.done} queue items done: "
        + ", ".join(f"{n} {what}" for n, what in parts if n or what == "rows embedded")
        + f" ({report.chunks} chunks)"
    )
