"""Options and helpers the ``crab`` commands share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..store.modes import DEFAULT_MODE, SEARCH_MODES

__all__ = [
    "RERANK_WEIGHTS",
    "chunk_options",
    "gpu_option",
    "model_options",
    "open_pipeline",
    "pop_chunking",
    "search_options",
]

F = TypeVar("F", bound=Callable[..., Any])


def gpu_option(f: F) -> F:
    return click.option(
        "--n-gpu-layers",
        envvar="CRAB_N_GPU_LAYERS",
        type=click.IntRange(min=-1),
        default=0,
        show_default=True,
        help="Model layers offloaded to the GPU (-1: all); a CPU build ignores it.",
    )(f)


def ray_options(what: str) -> Callable[[F], F]:
    """``--ray [ADDRESS]``, ``--ray-workers``, ``--ray-cpus-per-worker``; ``what`` names the
    actors in the help ("Embedding actors", "Queue workers")."""

    def decorate(f: F) -> F:
        for option in reversed(
            [
                click.option(
                    "--ray",
                    "ray_address",
                    is_flag=False,
                    flag_value="",
                    metavar="[ADDRESS]",
                    help="Run on a Ray cluster (default: RAY_ADDRESS, a local `ray start`, "
                    "else a new one).",
                ),
                click.option(
                    "--ray-workers",
                    type=click.IntRange(min=1),
                    help=f"{what} as Ray actors; default: all the cluster's CPUs.",
                ),
                click.option(
                    "--ray-cpus-per-worker",
                    type=click.IntRange(min=1),
                    default=1,
                    show_default=True,
                ),
            ]
        ):
            f = option(f)
        return f

    return decorate


RERANK_WEIGHTS = click.option(
    "--rerank-weights",
    envvar="CRAB_RERANK_WEIGHTS",
    type=click.Choice(["auto", "file", "f32", "bf16"]),
    default="auto",
    show_default=True,
    help="auto: the fastest on this CPU of the file and its float32 / bf16 copies (timed "
    "once, remembered); file, f32, bf16 force one (copies are made once in the cache).",
)


def model_options(f: F) -> F:
    f = gpu_option(f)
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
            RERANK_WEIGHTS,
        ]
    ):
        f = option(f)
    return f


def chunk_options(f: F) -> F:
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
                help="Keep each document that fits the model's context as one chunk "
                "(default: yes).",
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


def pop_chunking(opts: dict[str, Any]) -> dict[str, Any]:
    """The chunking options given (taken out of ``opts``), as ``ingest`` keyword arguments."""
    names = ("chunk_size", "chunk_overlap", "whole", "title")
    given = {name: opts.pop(name, None) for name in names}
    return {name: value for name, value in given.items() if value is not None}


def open_pipeline(opts: dict[str, Any], *, create: bool, rerank: bool = True) -> Any:
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


def search_options(f: F) -> F:
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
    return model_options(f)
