"""Concurrent requests folded into one model call: a small asyncio batcher.

Requests queue while the model is busy; when it is free, everything queued goes into the
next call. A lone request waits for nothing, and under load each call carries what arrived
during the previous one, so the model decodes fewer, larger batches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["BatchStats", "Batcher"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class BatchStats:
    """What a batcher did: requests taken, items in them, and model calls made."""

    requests: int = 0
    items: int = 0
    calls: int = 0
    largest: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "items": self.items,
            "calls": self.calls,
            "largest": self.largest,
        }


@dataclass
class _Pending(Generic[T, R]):
    items: Sequence[T]
    future: asyncio.Future[list[R]] = field(repr=False)


class Batcher(Generic[T, R]):
    """Run ``call(items)`` on one worker thread for the items of many concurrent requests.

    ``call`` takes a list of items and returns one result per item, in order. At most
    ``max_items`` items go into one call (a request is never split; a larger one gets a call
    of its own). An exception from ``call`` fails every request of that call.
    """

    def __init__(self, call: Callable[[list[T]], list[R]], *, max_items: int = 256) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be ≥ 1, got {max_items}")
        self._call = call
        self.max_items = max_items
        self.stats = BatchStats()
        self._queue: list[_Pending[T, R]] = []
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="crab-batch")

    async def submit(self, items: Sequence[T]) -> list[R]:
        """The results for ``items``, computed in a call shared with concurrent requests."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run())
        pending: _Pending[T, R] = _Pending(list(items), loop.create_future())
        self._queue.append(pending)
        self._wake.set()
        return await pending.future

    def _take(self) -> list[_Pending[T, R]]:
        """The longest prefix of the queue within ``max_items`` (at least one request)."""
        taken = [self._queue.pop(0)]
        size = len(taken[0].items)
        while self._queue and size + len(self._queue[0].items) <= self.max_items:
            size += len(self._queue[0].items)
            taken.append(self._queue.pop(0))
        return taken

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            taken = [p for p in self._take() if not p.future.cancelled()]
            if not taken:
                continue
            items = [item for p in taken for item in p.items]
            self.stats.requests += len(taken)
            self.stats.items += len(items)
            self.stats.calls += 1
            self.stats.largest = max(self.stats.largest, len(items))
            try:
                results = await loop.run_in_executor(self._thread, self._call, items)
                if len(results) != len(items):
                    raise RuntimeError(f"{len(results)} results for {len(items)} items")
            except Exception as exc:
                for p in taken:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            start = 0
            for p in taken:
                if not p.future.done():
                    p.future.set_result(list(results[start : start + len(p.items)]))
                start += len(p.items)

    async def aclose(self) -> None:
        """Stop the worker; requests still queued fail."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        for p in self._queue:
            if not p.future.done():
                p.future.set_exception(RuntimeError("the server is shutting down"))
        self._queue.clear()
        self._thread.shutdown(wait=False)
