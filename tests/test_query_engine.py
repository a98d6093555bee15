"""pipe.as_query_engine(): LlamaIndex's query engine answers as `crab ask` does — quoted,
cited sentences of its sources (no LLM called) — unless a chat model is given."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _models import EMBEDDER_Q8
from llama_index.core.llms.mock import MockLLM

from llama_index_crab import ExtractiveSynthesizer, Pipeline, build_pipeline
from llama_index_crab.answer.extractive import NOT_FOUND

CORPUS = Path(__file__).resolve().parents[1] / "examples" / "corpus" / "python-reference"


@pytest.fixture(scope="module")
def pipe(database_url: str) -> Pipeline:
    pipe = build_pipeline(
        EMBEDDER_Q8, database_url=database_url, collection="query_engine", rerank=False, top_n=3
    )
    pipe.store.clear()
    pipe.ingest([CORPUS / "with.md", CORPUS / "for.md", CORPUS / "raise.md"])
    yield pipe
    pipe.close()


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_answers_with_cited_quotes_of_its_sources(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llama_index.core import Settings

    # No LLM may be resolved: LlamaIndex's default would be OpenAI.
    monkeypatch.setattr(type(Settings), "llm", property(lambda self: pytest.fail("Settings.llm")))
    response = pipe.as_query_engine().query("What does the with statement do?")
    answer = str(response)
    assert answer != NOT_FOUND and pipe._llm is None  # no chat model was loaded
    cited = [int(n) for n in re.findall(r"\[(\d+)\]", answer)]
    assert cited and all(1 <= n <= len(response.source_nodes) for n in cited)
    for quote in response.metadata["quotes"]:
        source = response.source_nodes[quote["source"] - 1].node
        assert _flat(quote["text"]) in _flat(source.get_content())
    first = response.source_nodes[response.metadata["quotes"][0]["source"] - 1]
    assert first.node.metadata["file_path"] == "with.md"


def test_async_query_gives_the_same_answer(pipe: Pipeline) -> None:
    import asyncio

    engine = pipe.as_query_engine()
    question = "How do I raise an exception?"
    assert str(asyncio.run(engine.aquery(question))) == str(engine.query(question))


def test_a_given_llm_generates_instead(pipe: Pipeline) -> None:
    response = pipe.as_query_engine(llm=MockLLM(max_tokens=5)).query("What does for do?")
    assert "[1]" not in str(response)  # MockLLM echoes tokens of its prompt, no quotes
    assert response.source_nodes


def test_plain_text_chunks_are_numbered_sources(pipe: Pipeline) -> None:
    synthesizer = ExtractiveSynthesizer(pipe.embed_model)
    chunks = [
        "Cats sleep most of the day in warm places.",
        "The for statement iterates over the elements of a sequence.",
    ]
    answer = synthesizer.get_response("What does the for loop iterate over?", chunks)
    assert answer.startswith(chunks[1]) and answer.rstrip().endswith("[2]")
