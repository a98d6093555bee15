from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from helpers import node, unit
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)
from llama_index.core.vector_stores.utils import build_metadata_filter_fn
from sqlalchemy.dialects import postgresql

from llama_index_crab.store.collections import EmbeddingIdentity
from llama_index_crab.store.filters import to_clause
from llama_index_crab.store.schema import nodes
from llama_index_crab.store.vector_store import PostgresVectorStore

HOSTILE = [
    "it's",
    'say "hi"',
    "back\\slash",
    "'; DROP TABLE crab_nodes; --",
    "100%_sure",
    "$1 ?? %s %(x)s",
    "ünïcødé ✓",
]

METADATA: dict[str, dict[str, Any]] = {
    "a": {"n": 1, "s": "apple", "tags": ["x", "y"], "e": ""},
    "b": {"n": 2.5, "s": "Banana", "tags": ["y"], "e": []},
    "c": {"n": 10, "s": "cherry pie", "tags": [], "e": None},
    "d": {"n": "10", "s": "it's", "tags": ["x", 3]},
    "e": {"s": 'say "hi"', "tags": "x-ray"},
    "f": {"n": -3, "s": "back\\slash", "tags": [1, 2, 3]},
    "g": {"n": None, "s": "'; DROP TABLE crab_nodes; --"},
    "h": {"n": 0, "s": "100%_sure", "tags": ["z"], "e": "no"},
    "i": {"n": 7, "s": "Zebra", "tags": ["a", "b", "c"]},
    "j": {"n": 7.0, "s": "ünïcødé ✓"},
    "k": {"s": "$1 ?? %s %(x)s", "tags": "yz"},
}

FILTERS: list[tuple[str, Any, str]] = [
    ("n", 10, "=="),
    ("n", "10", "=="),
    ("n", 7, "=="),
    ("s", "it's", "=="),
    ("n", 10, "!="),
    ("s", "apple", "!="),
    ("n", 2, ">"),
    ("n", 2.5, ">="),
    ("n", 7, "<"),
    ("n", 0, "<="),
    ("s", "b", ">"),
    ("s", "Banana", "<="),
    ("n", [1, 10, 7], "in"),
    ("s", ["apple", "it's", "nope"], "in"),
    ("n", [1, 10], "nin"),
    ("tags", ["x", "z"], "any"),
    ("tags", [2, 9], "any"),
    ("tags", ["x", "y"], "all"),
    ("tags", [], "all"),
    ("tags", "x", "contains"),
    ("tags", 3, "contains"),
    ("s", "an", "text_match"),
    ("s", "AN", "text_match"),
    ("s", "an", "text_match_insensitive"),
    ("s", "%", "text_match"),
    ("s", "_", "text_match"),
    ("s", "\\", "text_match"),
    ("e", None, "is_empty"),
    ("tags", None, "is_empty"),
    ("missing", None, "is_empty"),
    ("missing", 1, "!="),
    ("missing", 1, "=="),
] + [("s", value, "==") for value in HOSTILE]


def _reference(filters: MetadataFilters, metadata: dict[str, Any]) -> bool:
    """LlamaIndex's in-memory semantics; a TypeError (e.g. "a" > 1) counts as no match."""
    results = []
    for item in filters.filters:
        if isinstance(item, MetadataFilters):
            results.append(_reference(item, metadata))
            continue
        try:
            one = MetadataFilters(filters=[item])
            results.append(build_metadata_filter_fn(lambda _: metadata, one)("x"))
        except TypeError:
            results.append(False)
    condition = filters.condition or FilterCondition.AND
    if condition == FilterCondition.AND:
        return all(results)
    if condition == FilterCondition.OR:
        return any(results)
    return not any(results)


@pytest.fixture(scope="module")
def store(database_url: str) -> Iterator[PostgresVectorStore]:
    rng = np.random.default_rng(1)
    with PostgresVectorStore(database_url, "filters", EmbeddingIdentity("m", 4, "mean")) as store:
        store.create_collection()
        store.add([node(key, unit(rng, 4), metadata=meta) for key, meta in METADATA.items()])
        yield store


def _matching(store: PostgresVectorStore, filters: MetadataFilters) -> list[str]:
    return sorted(n.node_id for n in store.get_nodes(filters=filters))


@pytest.mark.parametrize(("key", "value", "operator"), FILTERS)
def test_operator_matches_llamaindex_semantics(
    store: PostgresVectorStore, key: str, value: Any, operator: str
) -> None:
    filters = MetadataFilters(filters=[MetadataFilter(key=key, value=value, operator=operator)])
    expected = sorted(k for k, meta in METADATA.items() if _reference(filters, meta))
    assert _matching(store, filters) == expected


def test_every_llamaindex_operator_is_covered() -> None:
    assert {FilterOperator(op) for _, _, op in FILTERS} == set(FilterOperator)


def test_hostile_values_match_exactly_one_node(store: PostgresVectorStore) -> None:
    for value in HOSTILE:
        filters = MetadataFilters(filters=[MetadataFilter(key="s", value=value)])
        assert len(_matching(store, filters)) == 1, value
    assert len(store.get_nodes()) == len(METADATA)


def test_hostile_keys_are_bound_too(store: PostgresVectorStore) -> None:
    for key in HOSTILE:
        filters = MetadataFilters(filters=[MetadataFilter(key=key, value=1)])
        assert _matching(store, filters) == []


def test_values_and_keys_never_appear_in_the_sql_text() -> None:
    filters = MetadataFilters(
        filters=[
            MetadataFilter(key=f"k{v}", value=v, operator=op)
            for v in HOSTILE
            for op in ("==", "text_match", ">")
        ]
    )
    compiled = to_clause(filters, nodes.c.metadata).compile(dialect=postgresql.psycopg.dialect())
    for value in HOSTILE:
        assert value not in str(compiled)
        assert value in compiled.params.values()


def test_nested_and_or_not(store: PostgresVectorStore) -> None:
    filters = MetadataFilters(
        condition="or",
        filters=[
            MetadataFilters(
                condition="and",
                filters=[
                    MetadataFilter(key="n", value=5, operator=">"),
                    MetadataFilter(key="tags", value="a", operator="contains"),
                ],
            ),
            MetadataFilters(
                condition="not",
                filters=[
                    MetadataFilter(key="s", value="e", operator="text_match_insensitive"),
                    MetadataFilter(key="n", value=None, operator="is_empty"),
                ],
            ),
        ],
    )
    expected = sorted(k for k, meta in METADATA.items() if _reference(filters, meta))
    assert expected == ["b", "d", "f", "i", "j"]
    assert _matching(store, filters) == expected


@pytest.mark.parametrize(
    ("value", "operator"),
    [(None, "=="), ("x", "in"), ([1], "=="), ([1], ">"), (1, "text_match")],
)
def test_bad_filter_values_raise_value_error(value: Any, operator: str) -> None:
    filters = MetadataFilters(filters=[MetadataFilter(key="k", value=value, operator=operator)])
    with pytest.raises(ValueError):
        to_clause(filters, nodes.c.metadata)


def test_filtered_query_is_still_one_statement(store: PostgresVectorStore) -> None:
    filters = MetadataFilters(filters=[MetadataFilter(key="s", value=HOSTILE[3])])
    clause = to_clause(filters, nodes.c.metadata)
    statement = sa.select(sa.func.count()).select_from(nodes).where(clause)
    with store.client.connect() as connection:
        assert connection.scalar(statement) == 1
        assert connection.scalar(sa.text("SELECT to_regclass('crab_nodes') IS NOT NULL"))
