"""What `crab serve` keeps loaded: the models, their batchers and a pipeline per collection."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .batcher import Batcher

if TYPE_CHECKING:
    from ..pipeline import Pipeline

__all__ = ["Service"]

T = TypeVar("T")


def _same_file(path: str | None) -> str | None:
    """A model path made absolute when it names a file, else as it is."""
    return os.path.realpath(path) if path and os.path.exists(path) else path


class Service:
    """The loaded models of ``pipeline`` shared by every request and collection.

    Embedding and reranking requests go through one :class:`Batcher` each, so concurrent
    requests share a decode; searches and answers run on a thread pool, their question
    embedded and their candidates reranked through the same batchers.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        read_urls: Sequence[str] = (),
        chat_model: str | None = None,
        workers: int = 16,
    ) -> None:
        self.pipeline = pipeline
        self.chat_model = chat_model
        self.read_urls = list(read_urls)
        self.embed_model = pipeline.embed_model
        self.reranker = pipeline.reranker
        self.collection = pipeline.store.collection_name
        self.embeddings: Batcher[tuple[str, str], tuple[np.ndarray, int]] = Batcher(
            self._embed, max_items=256
        )
        self.scores: Batcher[tuple[str, str, bool], float] | None = None
        if self.reranker is not None:
            self.scores = Batcher(self._score, max_items=512)
        self._pipelines: dict[str, Pipeline] = {self.collection: pipeline}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="crab-serve")
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def model_name(self) -> str:
        return str(self.embed_model.model_name)

    @property
    def reranker_name(self) -> str | None:
        return Path(self.reranker.model_path).name if self.reranker is not None else None

    @property
    def dimension(self) -> int:
        return self.embed_model.dimension

    def warm_up(self) -> None:
        """Load the models and run one search, so the first request waits for nothing."""
        self.embed_model.embed(["warm up"])
        if self.reranker is not None:
            self.reranker.score("warm up", ["warm up"])
        from ..errors import CollectionNotFoundError

        try:
            self.pipeline.search("warm up", top_n=1)
        except CollectionNotFoundError:
            pass  # embeddings and reranking work without one; /query says what to do

    # -- batched model calls (on the batchers' threads) -------------------------------------

    def _embed(self, items: list[tuple[str, str]]) -> list[tuple[np.ndarray, int]]:
        """Vectors and token counts for (prefix, text) items, one model call per prefix."""
        out: list[tuple[np.ndarray, int] | None] = [None] * len(items)
        runner = self.embed_model.runner
        by_prefix: dict[str, list[int]] = {}
        for i, (prefix, _) in enumerate(items):
            by_prefix.setdefault(prefix, []).append(i)
        extra = len(runner.info.head) + len(runner.info.tail)
        for prefix, where in by_prefix.items():
            texts = [items[i][1] for i in where]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # over-long texts are cut, as in-process
                vectors = self.embed_model.embed(texts, prefix=prefix)
            for i, text, vector in zip(where, texts, vectors):
                tokens = min(len(runner.tokenize(prefix + text)) + extra, runner.max_length)
                out[i] = (vector, tokens)
        return [o for o in out if o is not None]

    def _score(self, items: list[tuple[str, str, bool]]) -> list[float]:
        """Cross-encoder scores of (query, document, raw) items in one model call per kind."""
        if self.reranker is None:
            raise ValueError("this server has no reranker; start crab serve with --rerank-model")
        out = [0.0] * len(items)
        for raw in (False, True):
            where = [i for i, item in enumerate(items) if item[2] is raw]
            if where:
                pairs = [(items[i][0], items[i][1]) for i in where]
                scores = self.reranker.score_pairs(pairs, scores="raw" if raw else None)
                for i, score in zip(where, scores):
                    out[i] = score
        return out

    # -- requests ------------------------------------------------------------------------

    async def embed(
        self, texts: Sequence[str], *, query: bool = False
    ) -> list[tuple[np.ndarray, int]]:
        prefix = (self.embed_model.query_prefix if query else self.embed_model.text_prefix) or ""
        return await self.embeddings.submit([(prefix, t) for t in texts])

    async def rerank(self, query: str, texts: Sequence[str], *, raw: bool = False) -> list[float]:
        if self.scores is None:
            raise ValueError("this server has no reranker; start crab serve with --rerank-model")
        return await self.scores.submit([(query, t, raw) for t in texts])

    async def search(self, text: str, collection: str | None, **options: Any) -> dict[str, Any]:
        """What ``crab query --json`` prints, for ``text`` in ``collection``."""
        from ..pipeline import query_json

        pipe = await self._pipeline(collection)
        result, timings = await self._search(pipe, text, options)
        return query_json(text, result, pipe, timings)

    async def ask(
        self, question: str, collection: str | None, chat_model: str | None, **options: Any
    ) -> dict[str, Any]:
        """What ``crab ask --json`` prints, for ``question`` in ``collection``; ``chat_model``
        must be the one this server loaded (or None for none)."""
        from ..errors import CollectionMismatchError
        from ..pipeline import ask_json

        if _same_file(chat_model) != _same_file(self.chat_model):
            have = f"the chat model {self.chat_model}" if self.chat_model else "no chat model"
            raise CollectionMismatchError(
                f"this server has {have}; start crab serve with --chat-model "
                f"{chat_model or '(none)'} for these answers"
            )
        pipe = await self._pipeline(collection)
        vector, _ = await self._question_vector(pipe, question, options)
        score = self._threadsafe_score()

        def answer() -> dict[str, Any]:
            found, pieces = pipe.ask(question, vector=vector, score=score, **options)
            return ask_json(question, found, "".join(pieces))

        return await self._in_pool(answer)

    async def _search(
        self, pipe: Pipeline, text: str, options: dict[str, Any]
    ) -> tuple[Any, dict[str, float]]:
        vector, timings = await self._question_vector(pipe, text, options)
        score = self._threadsafe_score()
        result = await self._in_pool(
            lambda: pipe.search(text, vector=vector, score=score, **options)
        )
        return result, {**timings, **result.timings}

    async def _question_vector(
        self, pipe: Pipeline, text: str, options: dict[str, Any]
    ) -> tuple[list[float] | None, dict[str, float]]:
        """The question's embedding through the batcher (None for text search), and the
        seconds it took."""
        if (options.get("mode") or pipe.mode) == "text":
            return None, {}
        start = time.perf_counter()
        vector = (await self.embed([text], query=True))[0][0].tolist()
        return vector, {"embed": time.perf_counter() - start}

    def _threadsafe_score(self) -> Any:
        """A ``score(query, texts)`` for the pool's threads that goes through the batcher."""
        if self.scores is None:
            return None
        loop = asyncio.get_running_loop()

        def score(query: str, texts: list[str]) -> list[float]:
            future = asyncio.run_coroutine_threadsafe(self.rerank(query, texts), loop)
            return future.result()

        return score

    async def _pipeline(self, collection: str | None) -> Pipeline:
        name = collection or self.collection
        with self._lock:
            found = self._pipelines.get(name)
        if found is not None:
            return found
        return await self._in_pool(lambda: self._new_pipeline(name))

    def _new_pipeline(self, name: str) -> Pipeline:
        from ..pipeline import Pipeline
        from ..store.vector_store import PostgresVectorStore

        base = self.pipeline
        identity = self.embed_model.identity()
        store = PostgresVectorStore(
            base.store.client, name, identity=identity, read_urls=self.read_urls
        )
        pipe = Pipeline(
            self.embed_model,
            store,
            self.reranker,
            similarity_top_k=base.similarity_top_k,
            top_n=base.top_n,
            llm=base._llm,
            mode=base.mode,
        )
        with self._lock:
            return self._pipelines.setdefault(name, pipe)

    async def _in_pool(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, work)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"embed": self.embeddings.stats.as_dict()}
        out["embed"]["decodes"] = self.embed_model.runner.decodes
        if self.scores is not None and self.reranker is not None:
            out["rerank"] = self.scores.stats.as_dict()
            out["rerank"]["decodes"] = self.reranker.runner.decodes
        return out

    async def aclose(self) -> None:
        await self.embeddings.aclose()
        if self.scores is not None:
            await self.scores.aclose()
        self._pool.shutdown(wait=False)
        for name, pipe in self._pipelines.items():
            if name != self.collection:
                pipe.store.close()
        self.pipeline.close()
