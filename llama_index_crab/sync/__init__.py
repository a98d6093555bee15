"""Keep collections in sync with tables of the user's own database: triggers write changed
row keys into a queue, workers embed the rows and replace their chunks."""

from .rowfilter import Condition
from .sources import Source, backfill, get_sources, unvectorize, vectorize
from .status import SourceStatus, sync_status
from .worker import Worker, WorkerReport

__all__ = [
    "Condition",
    "Source",
    "SourceStatus",
    "Worker",
    "WorkerReport",
    "backfill",
    "get_sources",
    "sync_status",
    "unvectorize",
    "vectorize",
]
