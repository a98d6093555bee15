"""Full-text search that matches questions: any term, stop words dropped, rare terms first."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import sqlalchemy as sa
from helpers import node
from llama_index.core.vector_stores.types import VectorStoreQuery

from llama_index_crab.store import search as _search
from llama_index_crab.store.collections import EmbeddingIdentity
from llama_index_crab.store.db import to_url
from llama_index_crab.store.vector_store import PostgresVectorStore

TEXTS = {
    "handling": "Handling exceptions: a try statement catches errors raised in its block.",
    "loops": "The for statement iterates over the items of a sequence in order.",
    "with": "The with statement wraps a block with a context manager's enter and exit.",
    "common": "A statement, a statement and another statement: statements everywhere.",
    "walrus": "An assignment expression, the walrus operator, names a value inside one.",
}


@pytest.fixture(scope="module")
def store(database_url: str) -> Iterator[PostgresVectorStore]:
    engine = sa.create_engine(to_url(database_url))
    identity = EmbeddingIdentity("m", 4, "mean")
    store = PostgresVectorStore(engine, "text_search_questions", identity)
    store.create_collection()
    vector = np.array([1.0, 0.0, 0.0, 0.0])
    store.add([node(key, vector, text=text) for key, text in TEXTS.items()])
    yield store
    store.close()
    engine.dispose()


def _text(store: PostgresVectorStore, question: str) -> list[str]:
    query = VectorStoreQuery(query_str=question, similarity_top_k=5, mode="text_search")
    return store.query(query).ids or []


def test_a_new_collection_stems_english_and_drops_stop_words(store: PostgresVectorStore) -> None:
    with store.client.connect() as connection:
        config = connection.scalar(
            sa.text("SELECT text_search_config FROM crab_collections WHERE name = :n"),
            {"n": store.collection_name},
        )
    assert config == "english"


def test_a_natural_question_matches_without_every_word(store: PostgresVectorStore) -> None:
    # "how", "do", "I", "my" are in no row; "handle" must find "Handling", "exceptions".
    assert _text(store, "How do I handle my exceptions?")[0] == "handling"


def test_a_question_of_stop_words_only_finds_nothing(store: PostgresVectorStore) -> None:
    assert _text(store, "what is it and how?") == []


def test_rare_terms_outweigh_common_ones(store: PostgresVectorStore) -> None:
    # "statement" is in four rows, one of them many times; "iterates" in one.
    assert _text(store, "which statement iterates?")[0] == "loops"


def test_operators_in_the_question_are_words(store: PostgresVectorStore) -> None:
    found = _text(store, 'walrus -operator "or" OR assignment')
    assert found[0] == "walrus"


# The bounds that keep a query's work flat on large collections, shown with small numbers:
# "statement" is in 4 of the 5 rows, "block" in 2, "iterates" in 1.


def test_a_term_in_more_rows_than_common_rows_is_left_out(
    store: PostgresVectorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert set(_text(store, "statement")) == {"handling", "loops", "with", "common"}
    monkeypatch.setattr(_search, "COMMON_ROWS", 3)
    assert _text(store, "statement") == []  # one of this collection's stop words now
    assert _text(store, "which statement wraps a block?") == ["with", "handling"]


def test_rows_are_matched_by_the_rarest_terms_within_the_budget(
    store: PostgresVectorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert set(_text(store, "iterates block")) == {"loops", "with", "handling"}
    monkeypatch.setattr(_search, "MATCH_BUDGET", 1)
    assert _text(store, "iterates block") == ["loops"]  # the rarest term always matches
    monkeypatch.setattr(_search, "MATCH_BUDGET", 3)
    assert set(_text(store, "iterates block")) == {"loops", "with", "handling"}
