"""Query statements (dense, exact, full-text). The values a query varies are named
parameters (``query``, ``k``, ``vector``, ``ef_search``): ``store.compiled`` keeps their SQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa
from pgvector.sqlalchemy import VECTOR
from sqlalchemy.dialects.postgresql import REGCONFIG
from sqlalchemy.sql.elements import ColumnElement

from .hits import DEFAULT_ALPHA, RRF_K, Hit, fuse, hit, stored_metadata, vector_text
from .identity import Collection
from .schema import nodes

if TYPE_CHECKING:
    from llama_index.core.vector_stores.types import MetadataFilters

__all__ = [
    "COMMON_ROWS",
    "CUSTOM_PLANS",
    "DEFAULT_ALPHA",
    "HAS_TERMS",
    "MATCH_BUDGET",
    "RRF_K",
    "STORED",
    "Hit",
    "dense",
    "fuse",
    "hit",
    "probe",
    "settings",
    "stored_metadata",
    "text",
    "vector_text",
    "where",
]

# Whether a text holds a word the collection's full-text search keeps (not only stop words).
HAS_TERMS = "SELECT numnode(plainto_tsquery(CAST(:config AS regconfig), :text))"
STORED = (nodes.c.node_id, nodes.c.text, nodes.c.metadata, nodes.c.node_content)


def where(
    collection: Collection,
    filters: MetadataFilters | None,
    node_ids: Sequence[str] | None = None,
    doc_ids: Sequence[str] | None = None,
) -> tuple[ColumnElement[bool], bool]:
    """The row predicate and whether it narrows the collection beyond its id."""
    # The collection id is inlined (an int from our own table) so the planner can match
    # the partial index predicate even in a generic plan.
    parts: list[ColumnElement[bool]] = [
        nodes.c.collection_id == sa.literal_column(str(int(collection.id)))
    ]
    if filters is not None and filters.filters:
        from .filters import to_clause  # LlamaIndex's filter types: loaded only for filters

        parts.append(to_clause(filters, nodes.c.metadata))
    if node_ids is not None:
        parts.append(nodes.c.node_id.in_(list(node_ids)))
    if doc_ids is not None:
        parts.append(nodes.c.ref_doc_id.in_(list(doc_ids)))
    return sa.and_(*parts), len(parts) > 1


def _k(k: int) -> sa.BindParameter[int]:
    """The row limit as the named parameter ``k`` (the quick path passes it by name)."""
    return sa.bindparam("k", k, sa.Integer)


def _vector_literal(vector: np.ndarray) -> ColumnElement[str]:
    return sa.bindparam("vector", vector_text(vector), sa.Text)


def dense(
    collection: Collection,
    vector: np.ndarray,
    k: int,
    predicate: ColumnElement[bool],
    *,
    exact: bool,
    with_embedding: bool = False,
) -> sa.Select[tuple[str, str, dict[str, Any], float]]:
    """Top ``k`` by inner product. The approximate form repeats the index expression
    ``embedding::vector(N)`` (or ``halfvec(N)``); the exact one orders by the untyped
    column, which no index matches, so PostgreSQL scans the matching rows.
    ``with_embedding`` adds the stored vector as a last column, ``embedding``."""
    if exact:
        distance = nodes.c.embedding.op("<#>", return_type=sa.Float)(
            sa.cast(_vector_literal(vector), VECTOR())
        )
    else:
        typed = collection.vector_type()
        distance = sa.cast(nodes.c.embedding, typed).op("<#>", return_type=sa.Float)(
            sa.cast(_vector_literal(vector), typed)
        )
    columns = [*STORED, (-distance).label("score")]
    if with_embedding:
        columns.append(nodes.c.embedding)
    return sa.select(*columns).where(predicate).order_by(distance).limit(_k(k))


def probe(
    vector: np.ndarray,
    k: int,
    predicate: ColumnElement[bool],
    limit: int,
    *,
    with_embedding: bool = False,
) -> sa.Select[tuple[str, str, dict[str, Any], float, int]]:
    """Exact top ``k`` among at most ``limit + 1`` matching rows, with how many matched:
    if no more than ``limit`` did, the answer is exact and complete."""
    candidates = sa.select(*STORED, nodes.c.embedding).where(predicate).limit(limit + 1).subquery()
    distance = candidates.c.embedding.op("<#>", return_type=sa.Float)(
        sa.cast(_vector_literal(vector), VECTOR())
    )
    columns = [
        candidates.c.node_id,
        candidates.c.text,
        candidates.c.metadata,
        candidates.c.node_content,
        (-distance).label("score"),
        sa.func.count().over().label("matched"),
    ]
    if with_embedding:
        columns.append(candidates.c.embedding)
    return sa.select(*columns).order_by(distance).limit(k)


# A question term found in more of a collection's rows than this is one of the collection's
# stop words (BM25 gives it little weight): it is neither counted past this nor matched.
# And rows are matched by the rarest terms only, as long as they hold at most MATCH_BUDGET
# rows between them. Both bound the work of a query on a large collection (collections
# smaller than this are searched as before: every term, exact document frequencies).
COMMON_ROWS = 20_000
MATCH_BUDGET = 20_000


def text(
    collection: Collection,
    query: str,
    k: int,
    predicate: ColumnElement[bool],
    *,
    common_rows: int | None = None,
    match_budget: int | None = None,
) -> sa.Select[tuple[str, str, dict[str, Any], float]]:
    """Top ``k`` rows sharing a term with ``query``, ranked BM25-style: each query term's
    ``ts_rank`` (term frequency, damped by the row's length) weighted by the term's inverse
    document frequency in the collection, so rare terms count more than common ones.

    Terms in more than ``common_rows`` rows are left out, and rows are matched by the rarest
    terms whose rows add up to ``match_budget`` (the rarest always): a query's work stays
    bounded however large the collection grows (defaults: ``COMMON_ROWS``, ``MATCH_BUDGET``)."""
    common_rows = COMMON_ROWS if common_rows is None else common_rows
    match_budget = MATCH_BUDGET if match_budget is None else match_budget
    config = sa.cast(sa.literal(collection.text_search_config), REGCONFIG)
    in_collection = nodes.c.collection_id == sa.literal_column(str(int(collection.id)))
    words = sa.func.to_tsvector(config, sa.bindparam("query", query, sa.Text))
    lexemes = sa.func.unnest(sa.func.tsvector_to_array(words)).column_valued("lexeme")
    terms = sa.select(
        lexemes.label("lexeme"),
        sa.func.plainto_tsquery(sa.cast(sa.literal("simple"), REGCONFIG), lexemes).label("q"),
    ).subquery("terms")
    total = sa.select(sa.func.count()).where(in_collection).scalar_subquery()
    # Rows holding the term, counted up to one past ``common_rows``: once per term.
    holding = (
        sa.select(sa.literal(1))
        .where(in_collection, nodes.c.text_search.op("@@")(terms.c.q))
        .limit(common_rows + 1)
        .correlate(terms)
        .subquery("holding")
    )
    frequency = sa.select(sa.func.count().label("df")).select_from(holding).lateral("frequency")
    counted = (
        sa.select(terms.c.lexeme, terms.c.q, frequency.c.df)
        .select_from(terms.join(frequency, sa.true()))
        .cte("counted")
        .prefix_with("MATERIALIZED")
    )
    rarest_first = sa.func.sum(counted.c.df).over(order_by=(counted.c.df, counted.c.lexeme))
    kept = (
        sa.select(counted.c.q, counted.c.df, (rarest_first - counted.c.df).label("before"))
        .where(counted.c.df <= common_rows)
        .subquery("kept")
    )
    idf = sa.func.ln(1.0 + (total - kept.c.df + 0.5) / (kept.c.df + 0.5))
    weighted = (
        sa.select(kept.c.q, idf.label("idf"))
        .where(kept.c.before < match_budget)
        .cte("weighted")
        .prefix_with("MATERIALIZED")
    )
    rank = sa.func.ts_rank(nodes.c.text_search, weighted.c.q, 1, type_=sa.Float)
    scores = (
        sa.select(
            nodes.c.node_id.label("node_id"), sa.func.sum(weighted.c.idf * rank).label("score")
        )
        .select_from(nodes.join(weighted, nodes.c.text_search.op("@@")(weighted.c.q)))
        .where(predicate)
        .group_by(nodes.c.node_id)
        .order_by(sa.literal_column("score").desc(), nodes.c.node_id)
        .limit(_k(k))
        .subquery("scores")
    )
    return (
        sa.select(*STORED, scores.c.score)
        .join_from(nodes, scores, nodes.c.node_id == scores.c.node_id)
        .where(in_collection)
        .order_by(scores.c.score.desc(), nodes.c.node_id)
    )


# psycopg prepares a statement after 5 runs, and PostgreSQL may then switch to a generic
# plan that cannot see the filter values; a generic plan for a selective filter scans the
# whole table (70 ms instead of 5 ms for 1% of 100k rows).
CUSTOM_PLANS = sa.func.set_config("plan_cache_mode", "force_custom_plan", True)


def settings(ef_search: int, iterative_scan: str, max_scan_tuples: int | None) -> sa.Select[Any]:
    """Per-transaction settings for the index path (``SET LOCAL`` with bound values).

    JSONB filter expressions have no statistics, so the planner's row estimates for them
    are guesses, and a low guess makes it sort a scan instead of walking the index. The
    store makes that choice itself: the index (with iterative scan so k rows come back),
    then the exact path if a very selective filter leaves fewer than k.
    """
    values = [
        sa.func.set_config("hnsw.ef_search", sa.bindparam("ef_search", str(int(ef_search))), True),
        sa.func.set_config("hnsw.iterative_scan", iterative_scan, True),
        sa.func.set_config("enable_sort", "off", True),
        CUSTOM_PLANS,
    ]
    if max_scan_tuples is not None:
        values.append(sa.func.set_config("hnsw.max_scan_tuples", str(int(max_scan_tuples)), True))
    return sa.select(*values)
