"""What a user gets: the bundled corpus through `crab ingest`, the labelled questions through
`crab query` and `crab ask`, against the plain references on the same GGUF in the same test.

The rule for the defaults on this set (tests/test_quality_corpora.py holds it on the others):
the CLI's default (hybrid) is never below the plain model (paragraphs, or each passage whole,
exact search) by more than 0.01 in hit@10 and nDCG@10, and never below dense; dense itself
is held to the plain model − 0.02."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from _models import ROOT
from click.testing import CliRunner

from llama_index_crab.cli import main
from llama_index_crab.eval.evaluate import BeirData, hit_at, load_beir, ndcg_at

pytestmark = pytest.mark.slow

CORPUS = ROOT / "examples" / "corpus" / "python-reference"
DATA = Path(__file__).parent / "data" / "python-reference-qa"
MARGIN = 0.01
DENSE_MARGIN = 0.02


def _normal(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def labelled() -> BeirData:
    return load_beir(DATA)


@pytest.fixture(scope="module")
def ingested(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The corpus ingested with `crab ingest` into its own collection: the CLI's env."""
    env = {"CRAB_DATABASE_URL": database_url, "CRAB_COLLECTION": "quality-test"}
    result = CliRunner().invoke(main, ["ingest", str(CORPUS)], env=env)
    assert result.exit_code == 0, result.output
    assert "79 added" in result.output
    return env


def _cli_json(env: dict[str, str], *args: str) -> Any:
    result = CliRunner().invoke(main, [*args, "--json"], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _ranked(results: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(Path(r["source"]).name for r in results))


@pytest.fixture(scope="module")
def reference(labelled: BeirData) -> dict[str, float]:
    """The better of the two plain references, per metric."""
    from llama_index_crab import LlamaCppEmbedding
    from llama_index_crab.eval.baseline import paragraph_baseline, whole_baseline
    from llama_index_crab.pipeline import default_embed_model

    with LlamaCppEmbedding(default_embed_model()) as model:
        plain = [
            _scores(baseline(labelled.corpus, labelled.queries, model, top=10), labelled)
            for baseline in (paragraph_baseline, whole_baseline)
        ]
    return {metric: max(p[metric] for p in plain) for metric in plain[0]}


def _scores(runs: dict[str, list[str]], data: BeirData) -> dict[str, float]:
    n = len(runs)
    return {
        "hit@10": sum(hit_at(runs[q], data.qrels[q]) for q in runs) / n,
        "nDCG@10": sum(ndcg_at(runs[q], data.qrels[q]) for q in runs) / n,
    }


@pytest.fixture(scope="module")
def ours(ingested: dict[str, str], labelled: BeirData) -> dict[str, dict[str, float]]:
    """hit@10 and nDCG@10 of `crab query --top-k 10`, dense and hybrid (the default)."""
    scores = {}
    for mode in ("dense", "hybrid"):
        runs = {
            qid: _ranked(
                _cli_json(
                    ingested, "query", labelled.queries[qid], "--mode", mode, "--top-k", "10"
                )["results"]
            )
            for qid in labelled.qrels
        }
        scores[mode] = _scores(runs, labelled)
    return scores


@pytest.mark.parametrize(("mode", "margin"), [("dense", DENSE_MARGIN), ("hybrid", MARGIN)])
def test_crab_query_is_as_good_as_the_plain_reference(
    mode: str, margin: float, ours: dict[str, dict[str, float]], reference: dict[str, float]
) -> None:
    print(f"{mode}: ours {ours[mode]}, reference {reference}")
    for metric, value in reference.items():
        assert ours[mode][metric] >= value - margin, (mode, metric, ours, reference)


def test_hybrid_is_never_below_dense(ours: dict[str, dict[str, float]]) -> None:
    for metric in ("hit@10", "nDCG@10"):
        assert ours["hybrid"][metric] >= ours["dense"][metric], (metric, ours)


def _passage_sentences(passage: str) -> list[str]:
    parts = re.split(r"(?<=[.!?:;])\s+", _normal(passage))
    return [p for p in parts if len(p) >= 25]


def _quotes(answer: str, sources: dict[int, dict[str, Any]]) -> list[tuple[str, int]]:
    """``(quote, n)`` pairs of an answer. A quote may itself hold a bracketed number (a
    footnote mark of the documentation, e.g. ``Exponentiation [5]``): a piece that is not in
    its source is joined to the next one."""
    parts = re.split(r" \[(\d+)\](?: |$)", answer)
    quotes, pending = [], ""
    for i in range(0, len(parts) - 1, 2):
        text, n = pending + parts[i], int(parts[i + 1])
        inside = n in sources and _normal(text) in _normal(sources[n]["text"])
        if not inside and i + 3 < len(parts):
            pending = f"{text} [{n}] "
            continue
        quotes.append((_normal(text), n))
        pending = ""
    return quotes


def test_crab_ask_quotes_and_cites_an_answering_passage(
    ingested: dict[str, str], labelled: BeirData
) -> None:
    good = 0
    for qid, question in labelled.queries.items():
        out = _cli_json(ingested, "ask", question)
        sources = {row["n"]: row for row in out["sources"]}
        quotes = _quotes(out["answer"], sources)
        assert quotes, out["answer"]
        wanted = _passage_sentences(labelled.extra[qid]["answer_passage"])
        for text, n in quotes:
            assert text in _normal(sources[n]["text"]), "every quote comes from its source"
        good += any(
            any(s in text or text in s for s in wanted)
            and labelled.qrels[qid].get(Path(sources[n]["source"]).name, 0)
            for text, n in quotes
        )
    print(f"ask: {good} of {len(labelled.queries)} answers quote an answering passage")
    assert good >= 35  # the README has the measured count; the floor asked for is 20
