"""`crab query` without LlamaIndex: the common case answered on the package's own parts.

Importing LlamaIndex takes longer than the rest of a cold query together, so a query with
no reranker, no filter and no replica embeds the question with the model runner, runs the
store's own statements (``store.search``) on one connection and prints the same JSON as
the full pipeline. Anything else, or anything unexpected (another collection's model, a
schema to migrate), returns None and the pipeline answers as before.
"""

from __future__ import annotations

import json
import time
from typing import Any

__all__ = ["quick_query"]

EF_SEARCH = 64  # PostgresVectorStore's default
ITERATIVE_SCAN = "relaxed_order"


def quick_query(text: str, opts: dict[str, Any], filters: tuple[str, ...]) -> dict[str, Any] | None:
    """What ``crab query --json`` prints for ``text``, or None when the pipeline must
    answer (a reranker, filters, replicas, or a collection this path does not fit)."""
    reranking = opts["rerank_model"] and not opts["no_rerank"]
    if reranking or filters or opts["read_urls"] or not text.strip():
        return None
    import sqlalchemy as sa

    from ..errors import CollectionMismatchError, CollectionNotFoundError, SchemaError
    from ..pipeline import default_embed_model, resolve_database_url
    from ..store import migrate
    from ..store.collections import get_collection
    from ..store.db import to_url, translate_errors

    url = resolve_database_url(opts["database_url"])
    engine = sa.create_engine(to_url(url), poolclass=sa.NullPool)
    try:
        with translate_errors(engine.url), engine.connect() as connection:
            try:
                migrate.check(connection)
                collection = get_collection(connection, opts["collection"])
            except (SchemaError, CollectionNotFoundError):
                return None  # the pipeline says what to do
            terms = sa.text("SELECT numnode(plainto_tsquery(CAST(:config AS regconfig), :text))")
            config = collection.text_search_config
            if not connection.scalar(terms, {"config": config, "text": text}):
                return None  # only stop words: the pipeline says there is nothing to search
            model = opts["embed_model"] or default_embed_model(collection.identity.model)
            found = _embed(text, model, collection, opts["mode"], opts["n_gpu_layers"])
            if found is None:
                return None
            vector, embed_seconds = found
            try:
                hits, search_seconds = _search(connection, collection, text, vector, opts)
            except CollectionMismatchError:
                return None
    finally:
        engine.dispose()
    timings = {"embed": embed_seconds} if vector is not None else {}
    timings["search"] = search_seconds
    mode = opts["mode"]
    # as query_json words a search without a reranker
    stages = f"{mode} search, not reranked (no reranker set: --rerank-model or CRAB_RERANK_MODEL)"
    rows = [
        {
            "rank": i,
            "score": round(score, 4),
            "retrieval_score": None,
            "source": _source(node_id, metadata),
            "node_id": node_id,
            "text": node_text,
        }
        for i, (node_id, node_text, metadata, score) in enumerate(hits, 1)
    ]
    spent = {k: round(v * 1000, 1) for k, v in timings.items()}
    return {"query": text, "stages": stages, "results": rows, "timings_ms": spent}


def _embed(text: str, model: str, collection: Any, mode: str, n_gpu_layers: int) -> Any:
    """(unit query vector or None for text search, seconds); None when the model is not
    the collection's (as ``LlamaCppEmbedding.identity()`` sees it) or not plain."""
    import numpy as np

    from ..models.gguf import file_identity, gguf_pooling, read_metadata, resolve_model_path
    from ..models.runtime import GpuOptions, LlamaRunner
    from ..models.weights import model_file
    from ..pipeline import recorded_weights
    from ..store.collections import EmbeddingIdentity

    # The file build_pipeline's embedder loads, and the one its identity names.
    source = resolve_model_path(model)
    path = model_file(source, recorded_weights(model))
    meta = read_metadata(path)
    declared = gguf_pooling(path)
    if declared in ("none", "rank"):
        return None  # token-level or a cross-encoder: the model class explains
    pooling = declared or "mean"
    dimension = int(str(meta[f"{meta['general.architecture']}.embedding_length"]))
    ours = EmbeddingIdentity(file_identity(source), dimension, pooling)
    recorded = collection.identity
    if ours.model_key != recorded.model_key or (dimension, pooling, "", "") != (
        recorded.dimension,
        recorded.pooling,
        recorded.query_prefix,
        recorded.text_prefix,
    ):
        return None
    if mode == "text":
        return None, 0.0
    start = time.perf_counter()
    gpu = GpuOptions(n_gpu_layers=n_gpu_layers).gpu_options()
    runner = LlamaRunner(path, n_contexts=1, gpu=gpu)
    try:
        info = runner.info
        body = runner.tokenize(text)
        if runner.pooling == "last" or len(body) + len(info.head) + len(info.tail) > (
            runner.max_length
        ):
            return None  # an end-token rule or a cut: LlamaCppEmbedding's to apply
        vector = runner.run([[*info.head, *body, *info.tail]])[0]
    finally:
        runner.close()
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm < 1e-6:
        return None  # the pipeline reports the model's fault
    return vector / norm, time.perf_counter() - start


def _search(
    connection: Any, collection: Any, text: str, vector: Any, opts: dict[str, Any]
) -> tuple[list[Any], float]:
    """The hits of PostgresVectorStore's unfiltered dense, text or hybrid query, as
    ``Pipeline.search`` asks for them without a reranker."""
    import sqlalchemy as sa

    from ..store import search
    from ..store.modes import HYBRID_DEPTH

    mode = opts["mode"]
    top_k, top_n = opts["top_k"], opts["top_n"]
    n = top_n if top_n is not None else top_k if top_k is not None else 5
    k = top_k if top_k is not None else n
    start = time.perf_counter()
    predicate, _ = search.where(collection, None)
    text_hits: list[Any] = []
    if mode != "dense":
        sparse_k = max(k, HYBRID_DEPTH) if mode == "hybrid" else k
        connection.execute(sa.select(search.CUSTOM_PLANS))
        statement = search.text(collection, text, sparse_k, predicate)
        text_hits = [search.hit(row) for row in connection.execute(statement)]
        if mode == "text":
            return text_hits[:n], time.perf_counter() - start
    fetch = max(k, HYBRID_DEPTH) if mode == "hybrid" else k
    ef_search = min(max(EF_SEARCH, fetch), 1000)
    connection.execute(search.settings(ef_search, ITERATIVE_SCAN, None))
    statement = search.dense(collection, vector, fetch, predicate, exact=False)
    rows = sorted(connection.execute(statement).all(), key=lambda row: -float(row.score))
    dense = [search.hit(row) for row in rows]
    hits = dense if mode == "dense" else search.fuse(dense, text_hits, k, None)
    return hits[:n], time.perf_counter() - start


def _source(node_id: str, metadata: dict[str, Any]) -> str:
    """``pipeline.source_name`` of the node these columns rebuild."""
    found = metadata.get("file_path") or metadata.get("file_name")
    if found:
        return str(found)
    try:
        relationships = json.loads(metadata.get("_node_content") or "{}")["relationships"]
        return str(relationships["1"]["node_id"])
    except (ValueError, KeyError, TypeError):
        return node_id
