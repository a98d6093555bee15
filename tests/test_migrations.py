from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from llama_index.core.schema import TextNode

from llama_index_crab import EmbeddingIdentity, PostgresVectorStore
from llama_index_crab.errors import DatabaseUnavailableError, PgvectorMissingError, SchemaError
from llama_index_crab.store import migrate
from llama_index_crab.store.db import to_url
from llama_index_crab.store.schema import VERSION_TABLE, metadata

REPO = Path(__file__).resolve().parents[1]
TABLES = {"crab_collections", "crab_nodes", "crab_staging", "crab_sync_queue", "crab_sync_sources"}


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(to_url(url), poolclass=sa.NullPool)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_creates_tables_and_extension(empty_database: str) -> None:
    assert migrate.current(empty_database) is None
    migrate.upgrade(empty_database)
    assert migrate.current(empty_database) == migrate.head()
    assert TABLES | {VERSION_TABLE} <= _tables(empty_database)
    engine = sa.create_engine(to_url(empty_database), poolclass=sa.NullPool)
    with engine.connect() as connection:
        version = connection.scalar(
            sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        )
    engine.dispose()
    assert version is not None and tuple(int(p) for p in version.split(".")[:2]) >= (0, 8)


def test_up_down_up(empty_database: str) -> None:
    migrate.upgrade(empty_database)
    migrate.downgrade(empty_database, "base")
    assert migrate.current(empty_database) is None
    assert not TABLES & _tables(empty_database)
    migrate.upgrade(empty_database)
    assert migrate.current(empty_database) == migrate.head()
    assert _tables(empty_database) >= TABLES


def test_step_by_step_down_and_up(empty_database: str) -> None:
    migrate.upgrade(empty_database, "0001")
    assert migrate.current(empty_database) == "0001"
    assert not TABLES & _tables(empty_database)
    migrate.upgrade(empty_database, "head")
    for revision in ("0005", "0004", "0003", "0002", "0001"):
        migrate.downgrade(empty_database, "-1")
        assert migrate.current(empty_database) == revision


def test_0003_moves_node_content_out_of_metadata_and_back(empty_database: str) -> None:
    """Nodes written under 0002 (``_node_content`` inside the jsonb) read back intact
    after 0003, and the downgrade puts them back as they were."""
    migrate.upgrade(empty_database, "0002")
    engine = sa.create_engine(to_url(empty_database), poolclass=sa.NullPool)
    vector = "[" + ",".join(["0.6", "0.8"]) + "]"
    old_metadata = {
        "topic": "x",
        "_node_content": TextNode(id_="n1", text="", metadata={"topic": "x"}).model_dump_json(),
        "_node_type": "TextNode",
    }
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO crab_collections (name, model, dimension, pooling) "
                    "VALUES ('old', 'm', 2, 'mean')"
                )
            )
            connection.execute(
                sa.text(
                    "INSERT INTO crab_nodes (collection_id, node_id, text, metadata, embedding, "
                    "text_search) SELECT id, 'n1', 'hello', CAST(:m AS jsonb), "
                    "CAST(:v AS vector), to_tsvector('hello') FROM crab_collections"
                ),
                {"m": json.dumps(old_metadata), "v": vector},
            )
        migrate.upgrade(empty_database)
        store = PostgresVectorStore(empty_database, "old", EmbeddingIdentity("m", 2, "mean"))
        (node,) = store.get_nodes(["n1"])
        store.close()
        assert (node.node_id, node.get_content(), node.metadata) == ("n1", "hello", {"topic": "x"})
        with engine.connect() as connection:
            stored = connection.scalar(sa.text("SELECT metadata FROM crab_nodes"))
        assert "_node_content" not in stored
        migrate.downgrade(empty_database, "0002")
        with engine.connect() as connection:
            assert connection.scalar(sa.text("SELECT metadata FROM crab_nodes")) == old_metadata
    finally:
        engine.dispose()


def test_0006_keeps_declared_sources_whole_and_back(empty_database: str) -> None:
    """A source declared under 0005 feeds every row after 0006 (an empty filter); the
    downgrade turns a pending reconcile item into the truncate item 0005 knows."""
    migrate.upgrade(empty_database, "0005")
    engine = sa.create_engine(to_url(empty_database), poolclass=sa.NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO crab_collections (name, model, dimension, pooling) "
                    "VALUES ('t', 'm', 2, 'mean')"
                )
            )
            connection.execute(
                sa.text(
                    "INSERT INTO crab_sync_sources (collection_id, table_schema, table_name, "
                    "key_columns, text_column) SELECT id, 'public', 't', '{id}', 'body' "
                    "FROM crab_collections"
                )
            )
        migrate.upgrade(empty_database)
        with engine.begin() as connection:
            assert connection.scalar(sa.text("SELECT row_filter FROM crab_sync_sources")) == []
            connection.execute(
                sa.text(
                    "INSERT INTO crab_sync_queue (source_id, op) "
                    "SELECT id, 'reconcile' FROM crab_sync_sources"
                )
            )
        migrate.downgrade(empty_database, "0005")
        with engine.connect() as connection:
            assert connection.scalar(sa.text("SELECT op FROM crab_sync_queue")) == "truncate"
    finally:
        engine.dispose()


def _indexes(connection: sa.Connection) -> set[str]:
    rows = connection.execute(
        sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'crab_nodes'")
    )
    return {row[0] for row in rows}


def test_0004_gives_each_collection_its_own_text_index(empty_database: str) -> None:
    """Collections made under 0003 (one GIN index for the whole table) get a partial one
    each, as new collections do; the downgrade puts the table-wide one back."""
    migrate.upgrade(empty_database, "0003")
    engine = sa.create_engine(to_url(empty_database), poolclass=sa.NullPool)
    try:
        with engine.begin() as connection:
            for name in ("a", "b"):
                connection.execute(
                    sa.text(
                        "INSERT INTO crab_collections (name, model, dimension, pooling) "
                        "VALUES (:n, 'm', 2, 'mean')"
                    ),
                    {"n": name},
                )
            ids = connection.execute(sa.text("SELECT id FROM crab_collections ORDER BY id"))
            ids = [row[0] for row in ids]
            assert "crab_nodes_text_search_idx" in _indexes(connection)
        migrate.upgrade(empty_database)
        with engine.connect() as connection:
            found = _indexes(connection)
        assert {f"crab_nodes_text_{i}" for i in ids} <= found
        assert "crab_nodes_text_search_idx" not in found
        store = PostgresVectorStore(empty_database, "b", EmbeddingIdentity("m", 2, "mean"))
        new = PostgresVectorStore(empty_database, "new", EmbeddingIdentity("m", 2, "mean"))
        new.create_collection()
        with engine.connect() as connection:
            assert f"crab_nodes_text_{new._load(connection).id}" in _indexes(connection)
            collection = store._load(connection)
            definition = connection.scalar(
                sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"),
                {"n": collection.text_index_name},
            )
        assert "USING gin (text_search)" in definition
        assert definition.endswith(f"WHERE (collection_id = {collection.id})")
        store.close()
        new.close()
        migrate.downgrade(empty_database, "0003")
        with engine.connect() as connection:
            found = _indexes(connection)
        assert "crab_nodes_text_search_idx" in found
        assert not any(name.startswith("crab_nodes_text_") and name[-1].isdigit() for name in found)
    finally:
        engine.dispose()


def test_no_drift_between_schema_and_migrations(engine: sa.Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={"include_object": migrate.include_object, "compare_type": True},
        )
        diff = compare_metadata(context, metadata)
    assert diff == []


def test_drift_check_notices_a_changed_table(engine: sa.Engine) -> None:
    changed = sa.MetaData()
    for table in metadata.tables.values():
        table.to_metadata(changed)
    sa.Table("crab_nodes", changed, sa.Column("extra", sa.Integer), extend_existing=True)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, changed)
    assert ("add_column", None, "crab_nodes") in [d[:3] for d in diff if isinstance(d, tuple)]


def test_own_version_table_leaves_host_history_alone(empty_database: str) -> None:
    engine = sa.create_engine(to_url(empty_database), poolclass=sa.NullPool)
    with engine.begin() as connection:
        connection.execute(
            sa.text("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        )
        connection.execute(sa.text("INSERT INTO alembic_version VALUES ('hostapp42')"))
    migrate.upgrade(empty_database)
    with engine.connect() as connection:
        host = connection.scalars(sa.text("SELECT version_num FROM alembic_version")).all()
        ours = connection.scalars(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    engine.dispose()
    assert host == ["hostapp42"]
    assert ours == [migrate.head()]


def test_check_refuses_an_old_schema(empty_database: str) -> None:
    migrate.upgrade(empty_database, "0001")
    engine = sa.create_engine(to_url(empty_database), poolclass=sa.NullPool)
    with engine.connect() as connection, pytest.raises(SchemaError, match="run `crab migrate`"):
        migrate.check(connection)
    engine.dispose()


def test_role_without_create_privilege_gets_a_clear_error(
    empty_database: str, pg_server: str
) -> None:
    role = f"crab_weak_{uuid.uuid4().hex[:8]}"
    database = to_url(empty_database).database
    admin = sa.create_engine(
        to_url(empty_database), poolclass=sa.NullPool, isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as connection:
        connection.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'"))
        connection.execute(sa.text(f"GRANT CONNECT ON DATABASE {database} TO {role}"))
        connection.execute(sa.text(f"GRANT USAGE, CREATE ON SCHEMA public TO {role}"))
    try:
        with pytest.raises(PgvectorMissingError, match="may not create the vector extension"):
            migrate.upgrade(to_url(empty_database).set(username=role, password="pw"))
        assert migrate.current(empty_database) is None
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f"DROP OWNED BY {role}"))
            connection.execute(sa.text(f"DROP ROLE {role}"))
        admin.dispose()


def test_unreachable_server_error_hides_the_password(tmp_path: Path) -> None:
    url = f"postgresql://crab:s3cret-pw@/crab?host={tmp_path}"
    with pytest.raises(DatabaseUnavailableError) as info:
        migrate.upgrade(url)
    assert "s3cret-pw" not in str(info.value)
    assert "***" in str(info.value)


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CRAB_DATABASE_URL")}


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(REPO), **env}  # the package may not be pip-installed yet
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_cli_upgrade_and_current(empty_database: str, tmp_path: Path) -> None:
    env = {**_environ(), "CRAB_DATABASE_URL": empty_database}
    done = _run(["-m", "llama_index_crab.store.migrate", "upgrade"], env, REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == migrate.head()
    done = _run(["-m", "llama_index_crab.store.migrate", "downgrade", "base"], env, REPO)
    assert (done.returncode, done.stdout.strip()) == (0, "base"), done.stderr


def test_cli_reports_errors_in_one_line(tmp_path: Path) -> None:
    url = f"postgresql://crab:s3cret-pw@/crab?host={tmp_path}"
    done = _run(
        ["-m", "llama_index_crab.store.migrate", "upgrade", "--url", url], _environ(), tmp_path
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot connect")
    assert "Traceback" not in done.stderr and "s3cret-pw" not in done.stderr


def test_migrations_run_from_an_installed_package_layout(
    empty_database: str, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    shutil.copytree(
        REPO / "llama_index_crab",
        site / "llama_index_crab",
        ignore=shutil.ignore_patterns("__pycache__", "migrations"),
    )
    shutil.copytree(
        REPO / "migrations",
        site / "llama_index_crab" / "migrations",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    env = {**_environ(), "PYTHONPATH": str(site)}
    code = (
        "import sys, llama_index_crab.store.migrate as m; print(m.migrations_dir()); "
        "m.upgrade(sys.argv[1]); print(m.current(sys.argv[1]))"
    )
    done = _run(["-c", code, empty_database], env, tmp_path)
    assert done.returncode == 0, done.stderr
    where, revision = done.stdout.split()
    assert Path(where) == site / "llama_index_crab" / "migrations"
    assert revision == migrate.head()


def test_node_tables_skip_toast_compression(engine: sa.Engine) -> None:
    query = (
        "SELECT relname, reloptions FROM pg_class WHERE relname IN ('crab_nodes', 'crab_staging')"
    )
    with engine.connect() as connection:
        options = dict(connection.execute(sa.text(query)).all())
    assert options == {
        "crab_nodes": ["toast_tuple_target=8160"],
        "crab_staging": ["toast_tuple_target=8160"],
    }


def test_pgvector_check_names_the_fix(empty_database: str, database_url: str) -> None:
    fresh = sa.create_engine(to_url(empty_database), poolclass=sa.NullPool)
    with fresh.connect() as c, pytest.raises(PgvectorMissingError, match="run `crab migrate`"):
        migrate.check_pgvector(c)
    fresh.dispose()
    migrated = sa.create_engine(to_url(database_url), poolclass=sa.NullPool)
    with migrated.connect() as c:
        assert migrate.check_pgvector(c).startswith("0.")
    migrated.dispose()
