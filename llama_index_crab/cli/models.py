"""``crab embed`` and ``crab rerank``: one model on the given texts, no database."""

from __future__ import annotations

import json

import click

from .options import RERANK_WEIGHTS, gpu_option

__all__ = ["embed", "rerank"]


@click.command()
@click.argument("text")
@click.option("--embed-model", envvar="CRAB_EMBED_MODEL")
@gpu_option
def embed(text: str, embed_model: str | None, n_gpu_layers: int) -> None:
    """Print the embedding of TEXT as JSON."""
    from ..models.embedding import LlamaCppEmbedding
    from ..pipeline import default_embed_model

    path = embed_model or default_embed_model()
    with LlamaCppEmbedding(path, n_gpu_layers=n_gpu_layers) as model:
        click.echo(json.dumps(model.get_text_embedding(text)))


@click.command()
@click.argument("query_text", metavar="QUERY")
@click.argument("documents", nargs=-1, required=True)
@click.option("--rerank-model", envvar="CRAB_RERANK_MODEL")
@RERANK_WEIGHTS
@gpu_option
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
