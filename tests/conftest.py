from __future__ import annotations

from _pg import collection_name, database_url, empty_database, engine, pg_server

__all__ = ["collection_name", "database_url", "empty_database", "engine", "pg_server"]
