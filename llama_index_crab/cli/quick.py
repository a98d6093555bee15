"""`crab query` without LlamaIndex or SQLAlchemy: the common case on the package's own parts.

Importing LlamaIndex and SQLAlchemy takes longer than the rest of a cold query together, so
a query with no reranker, no filter and no replica embeds the question with the model
runner, runs the store's own statements (``store.compiled``) on one psycopg connection and
prints the same JSON as the full pipeline. Anything else, or anything unexpected (another
collection's model, a schema to migrate, a database error), returns None and the pipeline
answers, or says what is wrong, as before.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

__all__ = ["quick_query"]


def quick_query(text: str, opts: dict[str, Any], filters: tuple[str, ...]) -> dict[str, Any] | None:
    """What ``crab query --json`` prints for ``text``, or None when the pipeline must
    answer (a reranker, filters, replicas, or a collection this path does not fit)."""
    reranking = opts["rerank_model"] and not opts["no_rerank"]
    if reranking or filters or opts["read_urls"] or not text.strip():
        return None
    import psycopg

    from ..store import plain

    connection = plain.connect(_database_url(opts["database_url"]))
    if connection is None:
        return None
    try:
        with connection:
            found = _answer(connection, text, opts)
    except psycopg.Error:
        return None  # the pipeline runs it again and reports it as the store does
    if found is None:
        return None
    hits, timings = found
    # as query_json words a search without a reranker
    stages = (
        f"{opts['mode']} search, not reranked "
        "(no reranker set: --rerank-model or CRAB_RERANK_MODEL)"
    )
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


def _database_url(url: str | None) -> str:
    """``resolve_database_url`` without its migration check (done here, on this connection)."""
    chosen = url or os.environ.get("CRAB_DATABASE_URL")
    if chosen:
        return chosen
    from ..server import postgres as server

    return server.start()


def _answer(connection: Any, text: str, opts: dict[str, Any]) -> Any:
    """(hits, seconds per stage), or None when the pipeline must answer."""
    from ..pipeline import default_embed_model
    from ..store import compiled
    from ..store.identity import collection_from_row
    from ..store.plain import run

    shared = compiled.shared()
    if run(connection, shared["has_version_table"])[0][0] is None:
        return None
    if [row[0] for row in run(connection, shared["versions"])] != [shared["head"]]:
        return None  # the pipeline migrates the embedded server, or says to
    rows = run(connection, shared["collection"], dicts=True, name=opts["collection"])
    if not rows:
        return None  # the pipeline says what to do
    collection = collection_from_row(rows[0])
    config = collection.text_search_config
    if not run(connection, shared["has_terms"], config=config, text=text)[0][0]:
        return None  # only stop words: the pipeline says there is nothing to search
    model = opts["embed_model"] or default_embed_model(collection.identity.model)
    found = _embed(text, model, collection, opts["mode"], opts["n_gpu_layers"])
    if found is None:
        return None
    vector, timings = found
    start = time.perf_counter()
    hits = _search(connection, compiled.for_collection(collection), text, vector, opts)
    timings["search"] = time.perf_counter() - start
    return hits, timings


def _embed(text: str, model: str, collection: Any, mode: str, n_gpu_layers: int) -> Any:
    """(unit query vector or None for text search, seconds per stage); None when the model
    is not the collection's (as ``LlamaCppEmbedding.identity()`` sees it) or not plain."""
    import numpy as np

    from ..models.gguf import file_identity, gguf_pooling, read_metadata, resolve_model_path
    from ..models.runtime import LlamaRunner, gpu_settings
    from ..models.weights import model_file
    from ..pipeline import recorded_weights
    from ..store.identity import EmbeddingIdentity

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
        return None, {}
    start = time.perf_counter()
    # One short sequence: a second thread would mostly wait for the first.
    runner = LlamaRunner(path, n_contexts=1, n_threads=1, gpu=gpu_settings(n_gpu_layers))
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
    return vector / norm, {"embed": time.perf_counter() - start}


def _search(
    connection: Any, statements: dict[str, Any], text: str, vector: Any, opts: dict[str, Any]
) -> list[Any]:
    """The hits of PostgresVectorStore's unfiltered dense, text or hybrid query, as
    ``Pipeline.search`` asks for them without a reranker."""
    from ..pipeline import DEFAULT_TOP_N
    from ..store.compiled import ef_search_for
    from ..store.hits import fuse, hit, vector_text
    from ..store.modes import depth, unranked_counts
    from ..store.plain import run

    mode = opts["mode"]
    k, n = unranked_counts(opts["top_k"], opts["top_n"], DEFAULT_TOP_N)
    fetch = depth(mode, k)
    text_hits: list[Any] = []
    if mode != "dense":
        run(connection, statements["custom_plans"])
        found = run(connection, statements["text"], query=text, k=fetch)
        text_hits = [hit(row) for row in found]
        if mode == "text":
            return text_hits[:n]
    run(connection, statements["settings"], ef_search=str(ef_search_for(fetch)))
    rows = run(connection, statements["dense"], vector=vector_text(vector), k=fetch)
    # relaxed_order iterative scans may swap a few
    dense = [hit(row) for row in sorted(rows, key=lambda row: -float(row[4]))]
    hits = dense if mode == "dense" else fuse(dense, text_hits, k, None)
    return hits[:n]


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
