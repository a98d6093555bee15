from __future__ import annotations

import subprocess
import sys

import llama_index_crab
from llama_index_crab.models.batching import plan_batches


def test_all_is_locked() -> None:
    assert llama_index_crab.__all__ == [
        "ClusterError",
        "CollectionInfo",
        "CollectionMismatchError",
        "CollectionNotFoundError",
        "CrabError",
        "DatabaseUnavailableError",
        "EmbeddingIdentity",
        "EmbeddingModeError",
        "ExtractiveSynthesizer",
        "IngestReport",
        "InputTooLongError",
        "LlamaCppChat",
        "LlamaCppEmbedding",
        "LlamaCppRerank",
        "ModelError",
        "PgvectorMissingError",
        "Pipeline",
        "PoolingError",
        "PostgresVectorStore",
        "ReplicaWarning",
        "SchemaError",
        "SearchMode",
        "SearchResult",
        "StoreError",
        "TruncationWarning",
        "VectorValueError",
        "build_index",
        "build_pipeline",
        "create_collection",
        "drop_collection",
        "list_collections",
    ]
    assert all(hasattr(llama_index_crab, name) for name in llama_index_crab.__all__)


def test_import_is_light() -> None:
    code = "import sys, llama_index_crab; print('llama_cpp' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_plan_batches_respects_budget_and_groups_by_length() -> None:
    lengths = [5, 300, 40, 512, 7, 250, 60, 3]
    plan = plan_batches(lengths, max_tokens=512, max_seqs=3)
    assert sorted(i for batch in plan for i in batch) == list(range(len(lengths)))
    for batch in plan:
        assert len(batch) <= 3
        assert len(batch) == 1 or sum(lengths[i] for i in batch) <= 512
    assert plan[0] == [3]  # longest first, alone
    firsts = [lengths[b[0]] for b in plan]
    assert firsts == sorted(firsts, reverse=True)


def test_plan_batches_puts_an_oversized_sequence_alone() -> None:
    assert plan_batches([900, 10, 10], max_tokens=512, max_seqs=8) == [[0], [1, 2]]
