"""The ingest batching plan (pure): shared by the single-process and the Ray ingest."""

from __future__ import annotations

import pytest

from llama_index_crab.ingest.batching import Batcher


def test_small_documents_pool_until_the_batch_is_full() -> None:
    batcher: Batcher[str] = Batcher(10)
    assert batcher.add("a", 4) == []
    assert batcher.add("b", 5) == []
    assert batcher.add("c", 3) == [[[("a", 0, 4), ("b", 0, 5), ("c", 0, 3)]]]
    assert not batcher and batcher.flush() == []


def test_a_large_document_gets_its_own_group_one_call_per_batch() -> None:
    batcher: Batcher[str] = Batcher(10)
    batcher.add("a", 2)
    groups = batcher.add("big", 25)
    assert groups == [
        [[("a", 0, 2)]],
        [[("big", 0, 10)], [("big", 10, 20)], [("big", 20, 25)]],
    ]


def test_flush_returns_what_is_pooled() -> None:
    batcher: Batcher[str] = Batcher(10)
    batcher.add("a", 1)
    assert batcher.flush() == [[[("a", 0, 1)]]]


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch_chunks"):
        Batcher(0)
