"""Alembic environment for llama_index_crab.

Normally driven by :mod:`llama_index_crab.store.migrate`, which passes an open connection in
``config.attributes["connection"]``. A plain ``alembic`` run with ``sqlalchemy.url``
set (and ``script_location`` pointing here) works too.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from llama_index_crab.store.db import to_url
from llama_index_crab.store.migrate import include_object
from llama_index_crab.store.schema import VERSION_TABLE, metadata

config = context.config
options = {
    "target_metadata": metadata,
    "version_table": VERSION_TABLE,
    "include_object": include_object,
    "compare_type": True,
    "transaction_per_migration": True,
}


def run(connection: sa.Connection) -> None:
    context.configure(connection=connection, **options)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True, **options)
    with context.begin_transaction():
        context.run_migrations()
elif (connection := config.attributes.get("connection")) is not None:
    run(connection)
else:
    engine = sa.create_engine(
        to_url(config.get_main_option("sqlalchemy.url") or ""), poolclass=sa.NullPool
    )
    with engine.connect() as connection:
        run(connection)
    engine.dispose()
