"""Table sync with a row filter (``--where`` and its twins), on a real server: rows outside
never reach the queue, rows moving out lose their chunks, rows moving in are embedded."""

from __future__ import annotations

import pytest
from _sync import Synced, embedder, synced, table
from click.testing import CliRunner

from llama_index_crab.cli import main
from llama_index_crab.cli.sync import _values

__all__ = ["embedder", "synced", "table"]  # the shared fixtures, used by name


def test_rows_outside_the_filter_never_reach_the_queue(synced: Synced) -> None:
    t = synced.table
    synced.declare(where={"status": "published"})
    synced.sql(
        f"INSERT INTO {t} (id, body, status) VALUES (1, 'printer on fire', 'published'), "
        "(2, 'draft about wifi', 'draft'), (3, 'no status yet', NULL)"
    )
    assert synced.queued_keys() == [{"id": 1}]
    synced.sql(f"UPDATE {t} SET body = 'still a draft' WHERE id = 2")  # outside, stays outside
    synced.sql(f"DELETE FROM {t} WHERE id = 3")
    assert synced.queued_keys() == [{"id": 1}]
    synced.drain()
    assert synced.docs() == {f"{t}:1": ["printer on fire"]}


def test_a_row_leaving_the_filter_loses_its_chunks_and_one_entering_is_embedded(
    synced: Synced,
) -> None:
    t = synced.table
    synced.sql(
        f"INSERT INTO {t} (id, body, status) VALUES (1, 'printer on fire', 'published'), "
        "(2, 'wifi drops', 'draft')"
    )
    synced.declare(where={"status": ["published", "review"]})
    synced.drain()
    assert list(synced.docs()) == [f"{t}:1"]
    synced.sql(f"UPDATE {t} SET status = 'archived' WHERE id = 1")
    synced.sql(f"UPDATE {t} SET status = 'review' WHERE id = 2")
    report = synced.drain()
    assert (report.deleted, report.embedded) == (1, 1)
    assert synced.docs() == {f"{t}:2": ["wifi drops"]}
    synced.sql(f"UPDATE {t} SET id = 5 WHERE id = 2")  # a new key, still inside
    synced.drain()
    assert synced.docs() == {f"{t}:5": ["wifi drops"]}


def test_the_backfill_queues_only_rows_inside_the_filter(synced: Synced) -> None:
    t = synced.table
    synced.sql(
        f"INSERT INTO {t} (id, body, n, status) SELECT i, 'row ' || i, i % 3, "
        "CASE WHEN i % 4 = 0 THEN NULL ELSE 'x' END FROM generate_series(1, 40) AS i"
    )
    source = synced.declare(where_not={"n": 0, "status": None}, backfill_rows=7)
    assert source.where == "n <> '0' AND status IS NOT NULL"
    keys = sorted(k["id"] for k in synced.queued_keys())
    assert keys == [i for i in range(1, 41) if i % 3 != 0 and i % 4 != 0]
    synced.drain()
    assert len(synced.docs()) == len(keys)


def test_declaring_again_with_another_filter_evaluates_every_row_again(synced: Synced) -> None:
    t = synced.table
    synced.sql(
        f"INSERT INTO {t} (id, body, status) VALUES (1, 'printer on fire', 'published'), "
        "(2, 'wifi drops', 'draft'), (3, 'mail bounces', 'published')"
    )
    synced.declare(where={"status": "published"})
    synced.drain()
    assert set(synced.docs()) == {f"{t}:1", f"{t}:3"}
    synced.declare(where={"status": "draft"})
    assert synced.status().where == "status = 'draft'"
    report = synced.drain()
    assert (report.deleted, report.embedded) == (2, 1)
    assert synced.docs() == {f"{t}:2": ["wifi drops"]}
    synced.declare()  # no filter: every row
    assert synced.drain().embedded == 2  # row 2's text unchanged: not embedded again
    assert set(synced.docs()) == {f"{t}:1", f"{t}:2", f"{t}:3"}


def test_a_filter_on_a_missing_column_or_a_value_of_another_type_is_refused(
    synced: Synced,
) -> None:
    with pytest.raises(ValueError, match=r"has no column 'stat' \(the filter column\).*'status'"):
        synced.declare(where={"stat": "published"})
    with pytest.raises(ValueError, match=r"value 'ten' does not fit column 'n' .*type integer"):
        synced.declare(where_not={"n": [1, "ten"]})
    triggers = f"SELECT count(*) FROM pg_trigger WHERE tgrelid = '{synced.table}'::regclass"
    assert synced.sql(triggers) == [(0,)]


def test_values_are_literals_of_the_column_type_never_sql(synced: Synced) -> None:
    t = synced.table
    synced.sql(f"INSERT INTO {t} (id, body, title) VALUES (1, 'quoted', 'it''s'), (2, 'x', 'a')")
    synced.declare(where={"title": "it's", "n": [None, 7]})
    synced.drain()
    assert list(synced.docs()) == [f"{t}:1"]
    hostile = "'); DROP TABLE " + t + "; --"
    synced.declare(where={"title": hostile})
    synced.drain()
    assert synced.docs() == {}
    assert synced.sql(f"SELECT count(*) FROM {t}") == [(2,)]


def test_values_split_on_commas_unless_escaped() -> None:
    assert _values("a,b") == ["a", "b"]
    assert _values(r"New York\, NY,Paris") == ["New York, NY", "Paris"]
    assert _values("") == [""]


def test_the_where_options_through_the_cli(synced: Synced) -> None:
    from _sync import MODEL

    t, c = synced.table, synced.collection
    env = {"CRAB_DATABASE_URL": synced.url, "CRAB_EMBED_MODEL": MODEL}
    run = CliRunner().invoke
    synced.sql(
        f"INSERT INTO {t} (id, body, n, status) VALUES (1, 'printer jams', 1, 'open'), "
        "(2, 'wifi drops', NULL, 'open'), (3, 'mail bounces', 2, 'closed')"
    )
    declare = ["vectorize", t, "--column", "body", "-c", c]
    where = ["--where", "status=open,pending", "--where-not-null", "n"]
    declared = run(main, [*declare, *where], env=env)
    assert declared.exit_code == 0, declared.output
    assert "where status IN ('open', 'pending') AND n IS NOT NULL" in declared.output
    assert "1 existing rows queued" in declared.output
    status = run(main, ["vectorize", "--status", "-c", c], env=env)
    assert f"{t} where status IN ('open', 'pending') AND n IS NOT NULL -> " in status.output
    assert run(main, ["worker", "--once", "-c", c], env=env).exit_code == 0
    assert list(synced.docs()) == [f"{t}:1"]

    bad = run(main, [*declare, "--where", "n=ten"], env=env)
    assert bad.exit_code == 1
    assert "does not fit column 'n'" in bad.output and len(bad.output.splitlines()) == 1
    twice = run(main, [*declare, "--where", "n=1", "--where-null", "n"], env=env)
    assert twice.exit_code == 2 and "give it once" in twice.output
