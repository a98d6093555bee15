from __future__ import annotations

from types import ModuleType

import pytest
from _pg import collection_name, database_url, empty_database, engine, pg_server
from _ray import cluster

__all__ = ["cluster", "collection_name", "database_url", "empty_database", "engine", "pg_server"]

# A test module holding any of these loads llama.cpp models or runs the CLI in processes:
# its tests are marked `model` and left out of `make test-fast`.
_HEAVY = (
    "_models",
    "_robust",
    "LlamaCppEmbedding",
    "LlamaCppRerank",
    "LlamaCppChat",
    "build_pipeline",
    "main",
    "subprocess",
)


def _heavy(module: ModuleType) -> bool:
    return any(name in vars(module) for name in _HEAVY)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and _heavy(module):
            item.add_marker(pytest.mark.model)
