"""Property test of metadata filters: random nested AND/OR/NOT filters over random metadata
select exactly the rows a plain Python evaluation selects, and never make bad SQL.

It extends test_filters.py (fixed operator table, LlamaIndex's own evaluator) with generated
data; the Python model below is the semantics documented in llama_index_crab.store.filters.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from helpers import node, unit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)

from llama_index_crab.store.collections import EmbeddingIdentity
from llama_index_crab.store.vector_store import PostgresVectorStore

DIM = 4
KEYS = ["a", "b", "tags", "a.b", "$.x", "k'q"]
# LIKE wildcards, quotes, a backslash, non-ASCII without case pairs (Python's and
# PostgreSQL's lower() agree on these), an astral character.
ALPHABET = "aAbB%_'\"\\é🦀 "

strings = st.text(ALPHABET, max_size=4)
ints = st.integers(-3, 3)
floats = st.sampled_from([-1.5, -0.0, 0.5, 2.0, 3.0, 1e-7])
numbers = st.one_of(ints, floats)
scalars = st.one_of(strings, numbers)
values = st.one_of(
    scalars,
    st.none(),
    st.lists(st.one_of(strings, ints), max_size=3),
    st.just(""),
    st.just([]),
)
metadata = st.dictionaries(st.sampled_from(KEYS), values, max_size=len(KEYS))
homogeneous_lists = st.one_of(
    st.lists(strings, max_size=3), st.lists(ints, max_size=3), st.lists(floats, max_size=3)
)

SINGLE_OPS = ["==", "!=", ">", ">=", "<", "<=", "contains"]
LIST_OPS = ["in", "nin", "any", "all"]
TEXT_OPS = ["text_match", "text_match_insensitive"]


@st.composite
def leaves(draw: st.DrawFn) -> MetadataFilter:
    key = draw(st.sampled_from(KEYS))
    kind = draw(st.sampled_from(["single", "list", "text", "empty"]))
    if kind == "single":
        op, value = draw(st.sampled_from(SINGLE_OPS)), draw(scalars)
    elif kind == "list":
        op, value = draw(st.sampled_from(LIST_OPS)), draw(homogeneous_lists)
    elif kind == "text":
        op, value = draw(st.sampled_from(TEXT_OPS)), draw(strings)
    else:
        op, value = "is_empty", None
    return MetadataFilter(key=key, value=value, operator=op)


def _group(children: list[Any], condition: str) -> MetadataFilters:
    return MetadataFilters(filters=children, condition=condition)


conditions = st.sampled_from(["and", "or", "not"])
filter_trees = st.recursive(
    st.builds(lambda leaf, c: _group([leaf], c), leaves(), conditions),
    lambda inner: st.builds(
        _group, st.lists(st.one_of(leaves(), inner), min_size=0, max_size=3), conditions
    ),
    max_leaves=6,
)


# -- the plain Python model ------------------------------------------------------------------


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "null" if value is None else "other"


def _same(a: Any, b: Any) -> bool:
    return _kind(a) == _kind(b) and a == b


def _has(field: Any, value: Any) -> bool:
    if isinstance(field, list):
        return any(_same(item, value) for item in field)
    return isinstance(field, str) and isinstance(value, str) and value in field


def _leaf(item: MetadataFilter, meta: dict[str, Any]) -> bool:
    op, value, field = FilterOperator(item.operator), item.value, meta.get(item.key)
    if op == FilterOperator.IS_EMPTY:
        return field is None or field == "" or field == []
    if op == FilterOperator.NE:
        return not _same(field, value)
    if op == FilterOperator.NIN:
        return not any(_same(field, v) for v in value)
    if field is None:
        return False
    if op == FilterOperator.EQ:
        return _same(field, value)
    if op in (FilterOperator.GT, FilterOperator.GTE, FilterOperator.LT, FilterOperator.LTE):
        if _kind(field) != _kind(value) or _kind(value) not in ("number", "string"):
            return False
        return {
            FilterOperator.GT: field > value,
            FilterOperator.GTE: field >= value,
            FilterOperator.LT: field < value,
            FilterOperator.LTE: field <= value,
        }[op]
    if op == FilterOperator.IN:
        return any(_same(field, v) for v in value)
    if op == FilterOperator.CONTAINS:
        return _has(field, value)
    if op == FilterOperator.ANY:
        return any(_has(field, v) for v in value)
    if op == FilterOperator.ALL:
        return all(_has(field, v) for v in value)
    if not isinstance(field, str):
        return False
    if op == FilterOperator.TEXT_MATCH:
        return value in field
    return value.lower() in field.lower()


def evaluate(filters: MetadataFilters, meta: dict[str, Any]) -> bool:
    results = [
        evaluate(item, meta) if isinstance(item, MetadataFilters) else _leaf(item, meta)
        for item in filters.filters
    ]
    if filters.condition == FilterCondition.AND:
        return all(results)
    if filters.condition == FilterCondition.OR:
        return any(results)
    return not any(results)


def test_the_model_agrees_with_hand_picked_cases() -> None:
    meta = {"n": 7.0, "s": "a%b", "tags": ["x", 3]}
    cases = [
        (MetadataFilter(key="n", value=7), True),
        (MetadataFilter(key="n", value="7"), False),
        (MetadataFilter(key="s", value="%", operator="text_match"), True),
        (MetadataFilter(key="tags", value=3, operator="contains"), True),
        (MetadataFilter(key="tags", value=["x", "y"], operator="all"), False),
        (MetadataFilter(key="tags", value=[4, 3], operator="any"), True),
        (MetadataFilter(key="gone", value=1, operator="!="), True),
        (MetadataFilter(key="s", value=1, operator=">"), False),
    ]
    for leaf, expected in cases:
        assert evaluate(_group([leaf], "and"), meta) is expected, leaf


# -- against the database ------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(database_url: str) -> Iterator[PostgresVectorStore]:
    identity = EmbeddingIdentity("filters-property", DIM, "mean")
    with PostgresVectorStore(database_url, "filters_property", identity) as store:
        store.create_collection()
        yield store


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(rows=st.lists(metadata, min_size=1, max_size=12), filters=filter_trees)
def test_random_filters_select_what_python_selects(
    store: PostgresVectorStore, rows: list[dict[str, Any]], filters: MetadataFilters
) -> None:
    rng = np.random.default_rng(len(rows))
    store.clear()
    store.add([node(f"r{i:02d}", unit(rng, DIM), metadata=meta) for i, meta in enumerate(rows)])
    # An empty filter list at the top means "no filter", as in LlamaIndex.
    keep = [evaluate(filters, meta) or not filters.filters for meta in rows]
    expected = [f"r{i:02d}" for i, kept in enumerate(keep) if kept]

    assert [n.node_id for n in store.get_nodes(filters=filters)] == expected
    query = VectorStoreQuery(
        query_embedding=unit(rng, DIM).tolist(), similarity_top_k=len(rows), filters=filters
    )
    assert sorted(store.query(query).ids or []) == expected
    assert sorted(store.query(query, exact=True).ids or []) == expected
