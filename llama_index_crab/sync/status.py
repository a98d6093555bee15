"""How far each declared table's collection is behind: queue depth, lag, failures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa

from ..store.db import transaction
from .sources import QUEUE, get_sources

__all__ = ["SourceStatus", "sync_status"]


@dataclass(frozen=True)
class SourceStatus:
    """One source: its queue (items, of which failing), the age of its oldest item in
    seconds (the lag), whether its backfill is done, and its errors (count, message)."""

    collection: str
    table: str
    queued: int
    failing: int
    lag_seconds: float
    backfilled: bool
    source_error: str | None
    errors: list[tuple[int, str]] = field(default_factory=list)
    where: str = ""  # the filter as a person reads it; "": every row


def sync_status(
    bind: str | sa.URL | sa.Engine, collections: Sequence[str] = ()
) -> list[SourceStatus]:
    """The status of every declared table (of ``collections`` only, when given)."""
    with transaction(bind) as connection:
        sources = get_sources(connection, collections)
        counts = {
            row[0]: row[1:]
            for row in connection.execute(
                sa.text(
                    "SELECT source_id, count(*), count(*) FILTER (WHERE attempts > 0), "
                    "coalesce(extract(epoch FROM now() - min(enqueued_at)), 0) "
                    f"FROM {QUEUE} GROUP BY source_id"
                )
            )
        }
        errors: dict[int, list[tuple[int, str]]] = {}
        for source_id, count, error in connection.execute(
            sa.text(
                f"SELECT source_id, count(*), last_error FROM {QUEUE} "
                "WHERE last_error IS NOT NULL GROUP BY source_id, last_error ORDER BY 2 DESC"
            )
        ):
            errors.setdefault(source_id, []).append((int(count), error))
    return [
        SourceStatus(
            s.collection,
            s.label,
            int(counts.get(s.id, (0, 0, 0))[0]),
            int(counts.get(s.id, (0, 0, 0))[1]),
            float(counts.get(s.id, (0, 0, 0))[2]),
            s.backfilled_at is not None,
            s.last_error,
            errors.get(s.id, [])[:5],
            s.where,
        )
        for s in sources
    ]
