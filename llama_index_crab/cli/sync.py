"""``crab vectorize`` and ``crab worker``: keep a collection in sync with a table."""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

import click

from .options import ray_options

__all__ = ["vectorize", "worker"]


def _url(database_url: str | None) -> str:
    from ..pipeline import resolve_database_url

    return resolve_database_url(database_url)


def _columns(values: tuple[str, ...]) -> list[str]:
    """Columns given repeated or comma-separated (``--metadata a,b --metadata c``)."""
    return [c.strip() for value in values for c in value.split(",") if c.strip()]


def _values(text: str) -> list[str]:
    """``a,b`` -> ``["a", "b"]``; ``\\,`` is a comma inside a value."""
    values, current, chars = [], "", iter(text)
    for char in chars:
        if char == "\\":
            current += next(chars, "\\")
        elif char == ",":
            values.append(current)
            current = ""
        else:
            current += char
    return [*values, current]


def _where(
    equal: tuple[str, ...], null: tuple[str, ...], option: str
) -> dict[str, list[str | None]]:
    """``--where COL=V1,V2`` and ``--where-null COL`` (or their ``-not`` twins) as the
    ``{column: values}`` the API takes; a column given twice is refused."""
    found: dict[str, list[str | None]] = {}
    pairs = [(*p.partition("="), p) for p in equal] + [(c, "=", None, c) for c in null]
    for column, sep, value, given in pairs:
        if not sep or not column:
            raise click.UsageError(f"{option} {given!r} must look like COLUMN=VALUE")
        if column in found:
            raise click.UsageError(
                f"column {column!r} is in {option} twice; give it once, with its values "
                "separated by commas (COLUMN=V1,V2 keeps a row whose COLUMN is any of them)"
            )
        found[column] = [None] if value is None else list(_values(value))
    return found


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
        where = f" where {s.where}" if s.where else ""
        click.echo(
            f"{s.table}{where} -> {s.collection!r}: {s.queued} queued, {s.failing} failing, "
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
@click.option(
    "--where",
    multiple=True,
    metavar="COL=V[,V…]",
    help="Only rows whose COL is V (or any of V1,V2; \\, in a value); repeat: all must hold.",
)
@click.option(
    "--where-not",
    multiple=True,
    metavar="COL=V[,V…]",
    help="Only rows whose COL is none of them (NULL is none).",
)
@click.option("--where-null", multiple=True, metavar="COL", help="Only rows whose COL is NULL.")
@click.option(
    "--where-not-null", multiple=True, metavar="COL", help="Only rows whose COL is not NULL."
)
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
    where: tuple[str, ...],
    where_not: tuple[str, ...],
    where_null: tuple[str, ...],
    where_not_null: tuple[str, ...],
    collection: str | None,
    embed_model: str | None,
    database_url: str | None,
    no_backfill: bool,
    drop: bool,
    drop_collection: bool,
    status: bool,
) -> None:
    """Keep a collection in sync with the rows of TABLE (those the --where options keep):
    triggers queue every change, `crab worker` embeds them. Existing rows are queued once
    (resumable: run it again); declaring TABLE again with other options re-evaluates every
    row."""
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
    kept = _where(where, where_null, "--where/--where-null")
    left_out = _where(where_not, where_not_null, "--where-not/--where-not-null")
    from ..pipeline import build_pipeline

    pipe = build_pipeline(embed_model, None, database_url=url, collection=name, rerank=False)
    try:
        source = declare(
            pipe.store,
            table,
            column=column,
            key=_columns(key),
            metadata=_columns(metadata),
            where=kept,
            where_not=left_out,
            embed_model=embed_model,
            backfill_rows=None,
        )
        from ..sync import backfill

        queued = 0 if no_backfill else backfill(url, source)
    finally:
        pipe.close()
    extra = f", metadata {', '.join(source.metadata_columns)}" if source.metadata_columns else ""
    extra += f", where {source.where}" if source.where else ""
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
@ray_options("Queue workers")
def worker(
    collections: tuple[str, ...],
    once: bool,
    status: bool,
    batch_rows: int,
    poll: float,
    embed_model: str | None,
    database_url: str | None,
    n_gpu_layers: int,
    ray_address: str | None,
    ray_workers: int | None,
    ray_cpus_per_worker: int,
) -> None:
    """Embed the queued rows of the tables `crab vectorize` declared; several workers (on
    any machines, or as Ray actors with --ray) share the queue. Wakes on NOTIFY; Ctrl-C
    or SIGTERM stops it."""
    from ..sync import Worker

    url = _url(database_url)
    if status:
        _print_status(url, collections)
        return
    stop = threading.Event()
    if not once and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    options: dict[str, Any] = {
        "embed_model": embed_model,
        "batch_rows": batch_rows,
        "poll_seconds": poll,
        "n_gpu_layers": n_gpu_layers,
    }
    if ray_address is not None:
        from ..sync.cluster import merge_reports, run_on_ray

        reports = run_on_ray(
            url,
            collections,
            address=ray_address or None,
            workers=ray_workers,
            cpus_per_worker=ray_cpus_per_worker,
            once=once,
            stop=stop,
            **options,
        )
        _finish(merge_reports(reports), f"{len(reports)} Ray workers: ")
        return
    runner = Worker(url, collections, **options)
    shown = [time.monotonic()]

    def progress(report: Any) -> None:
        if time.monotonic() - shown[0] >= 2:
            shown[0] = time.monotonic()
            click.echo(_summary(report), err=True)

    try:
        report = runner.run(once=once, stop=stop, progress=progress)
    finally:
        runner.close()
    _finish(report)


def _finish(report: Any, prefix: str = "") -> None:
    click.echo(prefix + _summary(report))
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
