from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from _models import EMBEDDER_BF16, EMBEDDER_Q8, ROOT
from click.testing import CliRunner

from llama_index_crab.cli import main
from llama_index_crab.pipeline import bundled_embedder
from llama_index_crab.store.db import to_url

CORPUS = ROOT / "examples" / "corpus" / "python-reference"
TOPICS = ["with", "yield", "pass", "break", "continue", "global"]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for topic in TOPICS:
        shutil.copy(CORPUS / f"{topic}.md", folder / f"{topic}.md")
    return folder


@pytest.fixture
def cli(database_url: str, collection_name: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("CRAB_DATABASE_URL", database_url)
    monkeypatch.setenv("CRAB_COLLECTION", collection_name)
    return CliRunner()


def rows(database_url: str, collection: str) -> list[tuple[str, str, int]]:
    engine = sa.create_engine(to_url(database_url), poolclass=sa.NullPool)
    with engine.connect() as c:
        out = c.execute(
            sa.text(
                "SELECT n.ref_doc_id, n.text, (n.metadata->>'chunk')::int FROM crab_nodes n "
                "JOIN crab_collections c ON c.id = n.collection_id WHERE c.name = :name"
            ),
            {"name": collection},
        ).all()
    engine.dispose()
    return sorted((r[0], r[1], r[2]) for r in out)


def test_ingest_then_skip_unchanged_then_replace_changed(
    cli: CliRunner, corpus: Path, database_url: str, collection_name: str
) -> None:
    first = cli.invoke(main, ["ingest", str(corpus)])
    assert first.exit_code == 0, first.output
    assert "6 added, 0 updated, 0 unchanged" in first.output
    before = rows(database_url, collection_name)
    assert len({r[0] for r in before}) == 6

    again = cli.invoke(main, ["ingest", str(corpus)])
    assert "0 added, 0 updated, 6 unchanged" in again.output
    assert rows(database_url, collection_name) == before

    (corpus / "pass.md").write_text("# pass\n\nThe pass statement does nothing at all.\n")
    changed = cli.invoke(main, ["ingest", str(corpus)])
    assert "0 added, 1 updated, 5 unchanged" in changed.output
    after = rows(database_url, collection_name)
    pass_rows = [r for r in after if r[0].endswith("pass.md")]
    assert [r[1] for r in pass_rows] == ["# pass\n\nThe pass statement does nothing at all."]
    assert [r for r in after if not r[0].endswith("pass.md")] == [
        r for r in before if not r[0].endswith("pass.md")
    ]


def test_query_prints_ranked_results_and_timings(cli: CliRunner, corpus: Path) -> None:
    assert cli.invoke(main, ["ingest", str(corpus)]).exit_code == 0
    result = cli.invoke(main, ["query", "generator functions and yield", "--top-n", "3"])
    assert result.exit_code == 0, result.output
    assert " 1. " in result.output and " 3. " in result.output and " 4. " not in result.output
    assert "yield.md" in result.output
    status = result.output.strip().splitlines()[-1]
    assert status.startswith("hybrid search, not reranked (no reranker set")
    assert " ms, search " in status


def test_query_json_no_rerank_and_filter(cli: CliRunner, corpus: Path) -> None:
    assert cli.invoke(main, ["ingest", str(corpus)]).exit_code == 0
    result = cli.invoke(
        main, ["query", "loops", "--json", "--no-rerank", "--filter", "file_name=break.md"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["results"] and all(r["source"] == "break.md" for r in data["results"])
    assert "rerank" not in data["timings_ms"]
    scores = [r["score"] for r in data["results"]]
    assert scores == sorted(scores, reverse=True)


def test_hostile_filter_value_is_just_a_value(cli: CliRunner, corpus: Path) -> None:
    assert cli.invoke(main, ["ingest", str(corpus)]).exit_code == 0
    result = cli.invoke(
        main, ["query", "x", "--json", "--filter", "file_name=a'; DROP TABLE crab_nodes; --"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["results"] == []
    assert cli.invoke(main, ["query", "x", "--json"]).exit_code == 0


def test_ask_answers_with_sources(cli: CliRunner, corpus: Path) -> None:
    assert cli.invoke(main, ["ingest", str(corpus)]).exit_code == 0
    result = cli.invoke(main, ["ask", "What does the yield statement do?", "--top-n", "2"])
    assert result.exit_code == 0, result.output
    answer, sources = result.output.split("answer:", 1)[1].split("\nsources:", 1)
    assert "[1]" in sources and "[2]" in sources and "[3]" not in sources
    assert len(answer.split()) >= 3


def test_collections_lists_model_and_count(
    cli: CliRunner, corpus: Path, collection_name: str
) -> None:
    assert cli.invoke(main, ["ingest", str(corpus)]).exit_code == 0
    result = cli.invoke(main, ["collections"])
    line = next(l for l in result.output.splitlines() if l.startswith(collection_name))
    bundled = bundled_embedder()  # the bf16 file: its identity, whatever weights "auto" loads
    assert bundled is not None and f"{bundled.name}@" in line
    assert "384-dim" in line and "indexed" in line


def test_embed_and_rerank_commands() -> None:
    runner = CliRunner()
    vector = json.loads(runner.invoke(main, ["embed", "hello world"]).output)
    assert len(vector) == 384
    toy = str(ROOT / "models" / "minilm-toy-reranker-q8_0.gguf")
    args = ["rerank", "database joins", "cats purr", "SQL joins combine tables"]
    result = runner.invoke(main, [*args, "--rerank-model", toy])
    assert result.exit_code == 0
    assert result.output.splitlines()[0].endswith("SQL joins combine tables")


def test_no_reranker_is_a_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRAB_RERANK_MODEL", raising=False)
    result = CliRunner().invoke(main, ["rerank", "database joins", "cats purr"])
    assert result.exit_code == 1
    assert "no reranker given: pass --rerank-model" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_doctor_reports_each_check(cli: CliRunner, corpus: Path) -> None:
    assert cli.invoke(main, ["ingest", str(corpus)]).exit_code == 0
    result = cli.invoke(main, ["doctor"])
    assert result.exit_code == 0, result.output
    for name in (
        "embedding model",
        "weights",
        "reranker",
        "chat model",
        "database",
        "pgvector",
        "migrations",
        "collection",
    ):
        assert f"ok   {name}" in result.output
    assert "pooling mean, 384-dim" in result.output


def test_doctor_fails_with_fix_for_missing_collection(cli: CliRunner) -> None:
    result = cli.invoke(main, ["doctor"])
    assert result.exit_code == 1
    assert "FAIL collection" in result.output


def test_unknown_collection_is_one_line_error(cli: CliRunner) -> None:
    result = cli.invoke(main, ["query", "anything"])
    assert result.exit_code == 1
    assert result.output.startswith("error: no collection named")
    assert len(result.output.strip().splitlines()) == 1


def test_unreachable_database_hides_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRAB_DATABASE_URL", "postgresql://crab:s3cret-pw@127.0.0.1:1/nowhere")
    result = CliRunner().invoke(main, ["query", "anything"])
    assert result.exit_code == 1
    assert result.output.startswith("error: ")
    assert "s3cret-pw" not in result.output


def test_missing_model_is_one_line_error(cli: CliRunner) -> None:
    result = cli.invoke(main, ["query", "x", "--embed-model", "nowhere/model.gguf"])
    assert result.exit_code == 1
    assert "not found" in result.output and "Traceback" not in result.output


def test_model_mismatch_with_collection(cli: CliRunner, corpus: Path) -> None:
    assert (
        cli.invoke(main, ["ingest", str(corpus), "--embed-model", str(EMBEDDER_Q8)]).exit_code == 0
    )
    result = cli.invoke(main, ["query", "x", "--embed-model", str(EMBEDDER_BF16)])
    assert result.exit_code == 1
    assert "re-embed" in result.output or "another collection" in result.output


def test_debug_shows_the_traceback(cli: CliRunner) -> None:
    result = cli.invoke(main, ["--debug", "query", "anything"])
    assert result.exit_code != 0
    assert result.exception is not None and "no collection" in str(result.exception)
