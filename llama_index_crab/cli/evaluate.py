"""``crab eval``: retrieval scored on BEIR data through the ingest path."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..store.modes import SEARCH_MODES
from .options import chunk_options, model_options, open_pipeline, pop_chunking

__all__ = ["eval_"]


@click.command(name="eval")
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
@chunk_options
@model_options
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
    chunking = pop_chunking(opts)
    pipe = open_pipeline(opts, create=True, rerank=rerank)
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
