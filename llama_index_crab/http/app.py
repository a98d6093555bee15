"""The HTTP routes of `crab serve` (Starlette): OpenAI embeddings, TEI rerank, query, ask."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .guard import Guard, error_body

if TYPE_CHECKING:
    from .service import Service

__all__ = ["MAX_INPUTS", "create_app"]

MAX_INPUTS = 2048  # texts per embeddings or rerank request (OpenAI's own limit for inputs)
MAX_TOP = 1000
MODES = ("dense", "text", "hybrid")
Endpoint = Callable[[Request], Awaitable[Response]]


class BadRequest(ValueError):
    """A request whose fields are wrong (400)."""


def _status(exc: Exception) -> int:
    from ..errors import (
        CollectionMismatchError,
        CollectionNotFoundError,
        DatabaseUnavailableError,
        SchemaError,
    )

    if isinstance(exc, CollectionNotFoundError):
        return 404
    if isinstance(exc, (CollectionMismatchError, SchemaError)):
        return 409
    if isinstance(exc, DatabaseUnavailableError):
        return 503
    if isinstance(exc, (ValueError, TypeError)):
        return 400
    return 500


def _error(status: int, message: str) -> Response:
    return Response(error_body(status, message), status, media_type="application/json")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if exc.status_code != 404 else f"no route {request.url.path}"
    return _error(exc.status_code, str(detail))


def _handled(endpoint: Endpoint) -> Endpoint:
    """``endpoint`` with every error turned into a one-line JSON reply; unexpected ones
    say so (the message masked as the command line masks it)."""

    @functools.wraps(endpoint)
    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Exception as exc:
            from ..errors import describe

            return _error(_status(exc), describe(exc))

    return run


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _field(
    body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None
) -> Any:
    value = body.get(name, default)
    if value is None and default is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        want = " or ".join(k.__name__ for k in _kinds(kind))
        raise BadRequest(f"field {name!r} must be {want}, got {json.dumps(value)[:80]}")
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _text(body: dict[str, Any], name: str) -> str:
    value = _field(body, name, str)
    if value is None or not value.strip():
        raise BadRequest(f"field {name!r} must be a non-empty string")
    return str(value)


def _texts(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise BadRequest(f"field {name!r} must be a string or a non-empty list of strings")
    if len(value) > MAX_INPUTS:
        raise BadRequest(f"field {name!r} has {len(value)} texts; at most {MAX_INPUTS} per request")
    for i, text in enumerate(value):
        if isinstance(text, (int, list)) and not isinstance(text, bool):
            raise BadRequest(
                f"{name}[{i}] is a token id list; send texts (token ids of another tokenizer "
                "mean nothing to this model; LangChain: OpenAIEmbeddings("
                "check_embedding_ctx_length=False))"
            )
        if not isinstance(text, str):
            raise BadRequest(f"{name}[{i}] must be a string, got {json.dumps(text)[:40]}")
        if not text.strip():
            raise BadRequest(f"{name}[{i}] is empty or whitespace-only; remove it")
    return value


def _search_options(body: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The collection and ``Pipeline.search`` options of a /query or /ask body."""
    collection = _field(body, "collection", str)
    options: dict[str, Any] = {}
    for name in ("top_k", "top_n"):
        value = _field(body, name, int)
        if value is not None:
            if not 1 <= value <= MAX_TOP:
                raise BadRequest(f"field {name!r} must be from 1 to {MAX_TOP}, got {value}")
            options[name] = value
    mode = _field(body, "mode", str)
    if mode is not None:
        if mode not in MODES:
            raise BadRequest(f"field 'mode' must be one of {', '.join(MODES)}, got {mode!r}")
        options["mode"] = mode
    options["rerank"] = _field(body, "rerank", bool, True)
    filters = _field(body, "filters", dict)
    if filters:
        from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters

        for key, value in filters.items():
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise BadRequest(f"filter {key!r} must have a string or number value")
        options["filters"] = MetadataFilters(
            filters=[MetadataFilter(key=k, value=v) for k, v in filters.items()]
        )
    return collection, options


def create_app(service: Service, *, token: str | None = None, max_body: int = 4 << 20) -> Any:
    """The ASGI application of ``service``: routes behind a :class:`Guard`."""

    async def health(request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "model": service.model_name,
                "reranker": service.reranker_name,
                "collection": service.collection,
            }
        )

    async def stats(request: Request) -> Response:
        return JSONResponse(service.stats())

    async def models(request: Request) -> Response:
        names = [service.model_name] + ([service.reranker_name] if service.reranker_name else [])
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "crab"} for n in names]
        return JSONResponse({"object": "list", "data": data})

    async def embeddings(request: Request) -> Response:
        body = await _body(request)
        if "input" not in body:
            raise BadRequest("field 'input' is required: a string or a list of strings")
        texts = _texts(body["input"], "input")
        encoding = _field(body, "encoding_format", str, "float")
        if encoding not in ("float", "base64"):
            raise BadRequest(f"encoding_format must be 'float' or 'base64', got {encoding!r}")
        dimensions = _field(body, "dimensions", int)
        if dimensions is not None and dimensions != service.dimension:
            raise BadRequest(
                f"this model gives {service.dimension}-dim vectors; 'dimensions' "
                f"{dimensions} cannot be served (leave it out)"
            )
        kind = _field(body, "input_type", str, "document")
        if kind not in ("query", "document", "passage"):
            raise BadRequest(f"input_type must be 'query' or 'document', got {kind!r}")
        found = await service.embed(texts, query=kind == "query")
        data = []
        for i, (vector, _) in enumerate(found):
            value: Any = (
                base64.b64encode(vector.astype("<f4").tobytes()).decode()
                if encoding == "base64"
                else vector.tolist()
            )
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(n for _, n in found)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": service.model_name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def rerank(request: Request) -> Response:
        body = await _body(request)
        query = _text(body, "query")
        texts = _texts(body.get("texts"), "texts")
        raw = _field(body, "raw_scores", bool, False)
        with_text = _field(body, "return_text", bool, False)
        scores = await service.rerank(query, texts, raw=raw)
        ranked = sorted(range(len(texts)), key=lambda i: -scores[i])
        return JSONResponse(
            [
                {"index": i, "score": scores[i], **({"text": texts[i]} if with_text else {})}
                for i in ranked
            ]
        )

    async def query(request: Request) -> Response:
        body = await _body(request)
        text = _text(body, "query")
        collection, options = _search_options(body)
        return JSONResponse(await service.search(text, collection, **options))

    async def ask(request: Request) -> Response:
        body = await _body(request)
        question = _text(body, "question")
        chat_model = _field(body, "chat_model", str)
        collection, options = _search_options(body)
        return JSONResponse(await service.ask(question, collection, chat_model, **options))

    routes = [
        Route("/health", _handled(health), methods=["GET"]),
        Route("/stats", _handled(stats), methods=["GET"]),
        Route("/v1/models", _handled(models), methods=["GET"]),
        Route("/v1/embeddings", _handled(embeddings), methods=["POST"]),
        Route("/embeddings", _handled(embeddings), methods=["POST"]),
        Route("/rerank", _handled(rerank), methods=["POST"]),
        Route("/query", _handled(query), methods=["POST"]),
        Route("/ask", _handled(ask), methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    return Guard(app, token=token, max_body=max_body)
