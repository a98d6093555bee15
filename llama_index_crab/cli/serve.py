"""``crab serve``: the models kept loaded behind an HTTP API."""

from __future__ import annotations

import sys
from typing import Any

import click

from .options import model_options

__all__ = ["serve"]


@click.command()
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
@model_options
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
