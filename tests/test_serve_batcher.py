"""The batcher of `crab serve`: concurrent requests share model calls, each gets its own
results in order, and a failing call fails only the requests in it."""

from __future__ import annotations

import asyncio
import threading

import pytest

from llama_index_crab.http.batcher import Batcher


class Doubler:
    """A model stand-in that records each call's items (a real function, no mock)."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.fail_on = fail_on
        self.release = threading.Event()
        self.release.set()

    def __call__(self, items: list[int]) -> list[int]:
        self.release.wait(5)
        self.calls.append(list(items))
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"item {self.fail_on} is bad")
        return [2 * i for i in items]


def test_concurrent_requests_share_calls_and_keep_their_order() -> None:
    model = Doubler()

    async def main() -> list[list[int]]:
        batcher: Batcher[int, int] = Batcher(model, max_items=100)
        model.release.clear()  # the first call waits, so the others queue behind it
        first = asyncio.ensure_future(batcher.submit([0]))
        await asyncio.sleep(0.05)
        rest = [batcher.submit([10 * r + i for i in range(r)]) for r in range(1, 9)]
        model.release.set()
        got = await asyncio.gather(first, *rest)
        await batcher.aclose()
        assert batcher.stats.requests == 9 and batcher.stats.calls == len(model.calls)
        return got

    got = asyncio.run(main())
    assert got[0] == [0]
    for r in range(1, 9):
        assert got[r] == [2 * (10 * r + i) for i in range(r)]
    assert len(model.calls) == 2  # the lone first request, then all eight queued together


def test_a_call_holds_at_most_max_items_but_never_splits_a_request() -> None:
    model = Doubler()

    async def main() -> None:
        batcher: Batcher[int, int] = Batcher(model, max_items=4)
        model.release.clear()
        first = asyncio.ensure_future(batcher.submit([1]))
        await asyncio.sleep(0.05)
        big = batcher.submit(list(range(10)))
        small = [batcher.submit([i]) for i in range(6)]
        model.release.set()
        results = await asyncio.gather(first, big, *small)
        assert results[1] == [2 * i for i in range(10)]
        await batcher.aclose()

    asyncio.run(main())
    assert [len(c) for c in model.calls] == [1, 10, 4, 2]


def test_a_failing_call_fails_only_its_requests() -> None:
    model = Doubler(fail_on=13)

    async def main() -> None:
        batcher: Batcher[int, int] = Batcher(model)
        with pytest.raises(ValueError, match="item 13 is bad"):
            await batcher.submit([12, 13])
        assert await batcher.submit([14]) == [28]
        await batcher.aclose()

    asyncio.run(main())
