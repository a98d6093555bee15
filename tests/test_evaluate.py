from __future__ import annotations

import json
from pathlib import Path

import pytest
from _models import ROOT
from click.testing import CliRunner

from llama_index_crab.cli import main
from llama_index_crab.eval.evaluate import load_beir, mean_metrics, mrr_at, ndcg_at, recall_at

CORPUS = ROOT / "examples" / "corpus" / "python-reference"
TOPICS = {
    "with": "What does the with statement do with a context manager?",
    "yield": "How do generator functions produce values?",
    "import": "How are modules found and loaded?",
    "raise": "How do I signal an error by raising an exception?",
    "while": "How do I repeat a block as long as a condition is true?",
    "lambda": "How do I write an anonymous function expression?",
}


def test_metrics_on_a_hand_computed_ranking() -> None:
    relevant = {"a": 1, "b": 2}
    ranked = ["x", "b", "y", "a"]
    dcg = 3 / 1.5849625007211562 + 1 / 2.321928094887362
    idcg = 3 + 1 / 1.5849625007211562
    assert ndcg_at(ranked, relevant) == pytest.approx(dcg / idcg)
    assert mrr_at(ranked, relevant) == pytest.approx(0.5)
    assert recall_at(ranked, relevant, k=2) == pytest.approx(0.5)
    assert recall_at(ranked, relevant) == 1.0
    assert ndcg_at(["x"], {}) == 0.0


@pytest.fixture
def beir(tmp_path: Path) -> Path:
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    docs = sorted(CORPUS.glob("*.md"))[:40] + [CORPUS / f"{t}.md" for t in TOPICS]
    with (root / "corpus.jsonl").open("w") as fh:
        for path in dict.fromkeys(docs):
            title, _, body = path.read_text().partition("\n")
            fh.write(
                json.dumps({"_id": path.stem, "title": title.strip("# "), "text": body[:1500]})
                + "\n"
            )
    with (root / "queries.jsonl").open("w") as fh:
        for i, text in enumerate(TOPICS.values()):
            fh.write(json.dumps({"_id": f"q{i}", "text": text}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\t{t}\t1" for i, t in enumerate(TOPICS)]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_load_beir(beir: Path) -> None:
    data = load_beir(beir)
    assert len(data.queries) == len(data.qrels) == 6
    assert data.qrels["q0"] == {"with": 1}
    assert data.corpus["with"].startswith('The "with" statement')


def test_missing_beir_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="corpus.jsonl"):
        load_beir(tmp_path)


def _rows(output: str) -> dict[str, list[float]]:
    return {
        line.split("|")[1].strip(): [float(x) for x in line.split("|")[2:6]]
        for line in output.splitlines()
        if line.startswith("| ") and not line.startswith("| 6 queries")
    }


def test_crab_eval_scores_each_mode_through_the_ingest_path(
    beir: Path, database_url: str, collection_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRAB_DATABASE_URL", database_url)
    monkeypatch.delenv("CRAB_RERANK_MODEL", raising=False)
    result = CliRunner().invoke(main, ["eval", str(beir), "-c", collection_name, "--baseline"])
    assert result.exit_code == 0, result.output
    rows = _rows(result.output)
    baselines = {"baseline: paragraphs, exact", "baseline: whole passages, exact"}
    assert set(rows) == baselines | {"dense", "text", "hybrid"}
    hit, ndcg, mrr, recall = rows["dense"]
    assert recall == 1.0  # 46 documents, top 100 chunks: every relevant one is found
    assert 0.5 <= ndcg <= 1.0 and 0.5 <= mrr <= 1.0 and hit >= 0.8  # MiniLM finds these topics


def test_crab_eval_reranks_when_a_reranker_is_given(
    beir: Path, database_url: str, collection_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRAB_DATABASE_URL", database_url)
    toy = str(ROOT / "models" / "minilm-toy-reranker-q8_0.gguf")
    args = ["eval", str(beir), "-c", collection_name, "--mode", "dense", "--rerank-model", toy]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert set(_rows(result.output)) == {"dense", "dense + rerank"}


def test_recall_is_measured_at_the_cutoff_it_reports() -> None:
    qrels = {"q": {"a": 1, "b": 1}}
    metrics = mean_metrics({"q": ["x", "a", "y", "b"]}, qrels, recall_k=2)
    assert (metrics.recall, metrics.recall_k) == (0.5, 2)
    assert mean_metrics({"q": ["x", "a", "y", "b"]}, qrels, recall_k=4).recall == 1.0
