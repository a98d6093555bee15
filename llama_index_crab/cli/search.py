"""``crab query`` and ``crab ask``: answered by a running ``crab serve`` when one fits,
else by the quick path or the pipeline in this process."""

from __future__ import annotations

import json
from typing import Any

import click

from .options import open_pipeline, search_options

__all__ = ["ask", "query"]


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


@click.command()
@click.argument("text")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@search_options
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

        pipe = open_pipeline(opts, create=False, rerank=not opts["no_rerank"])
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


@click.command()
@click.argument("question")
@click.option(
    "--chat-model",
    envvar="CRAB_CHAT_MODEL",
    help="GGUF chat model to write the answer; default: quote the sources' best sentences.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@search_options
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
    pipe = open_pipeline(opts, create=False, rerank=not opts["no_rerank"])
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
