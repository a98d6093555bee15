"""Exceptions raised by llama_index_crab.

Every error the package raises on purpose derives from :class:`CrabError`::

    CrabError
    ├── ModelError                 model file missing, not a GGUF, or failed to load
    │   ├── EmbeddingModeError     a llama_cpp.Llama made without embedding=True
    │   └── PoolingError           wrong pooling for the job (rank vs embedding, NaN/zero vectors)
    ├── InputTooLongError          (also ValueError) text over the context, truncation off
    ├── ClusterError               the Ray cluster is unreachable or lost a worker for good
    └── StoreError                 database-side problems
        ├── DatabaseUnavailableError   server unreachable or refused the connection
        ├── PgvectorMissingError       the vector extension is missing or may not be created
        ├── SchemaError                the database is not migrated to the package's schema
        ├── CollectionNotFoundError    no collection with that name
        ├── CollectionMismatchError    model/dimension/pooling differs from the collection's
        └── VectorValueError           (also ValueError) NaN, Inf, wrong norm or wrong dimension

Plain bad arguments raise ``ValueError`` / ``TypeError``. Truncating an over-long text warns
with :class:`TruncationWarning` (a ``UserWarning``); a read replica that is down or lagging
is skipped with a :class:`ReplicaWarning`.
"""

from __future__ import annotations

# Errors whose message is meant for the user as it is (bad values, missing files).
_EXPECTED = (FileNotFoundError, ValueError, TypeError, PermissionError)


def describe(exc: BaseException) -> str:
    """``exc`` as one line for a person, secrets of database URLs masked: our errors and bad
    arguments say what to do; a database error gives the server's first line without SQL;
    anything else says it was unexpected."""
    from .store.db import mask_secrets

    if type(exc).__module__.startswith("sqlalchemy"):
        import sqlalchemy as sa

        if isinstance(exc, sa.exc.DBAPIError):  # its message goes on with SQL and parameters
            lines = str(exc.orig).strip().splitlines()
            first = lines[0] if lines else type(exc.orig).__name__
            return mask_secrets(f"the database refused: {first}")
    message = " ".join(str(exc).split())
    if len(message) > 500:
        message = message[:500] + "..."
    if not isinstance(exc, (CrabError, *_EXPECTED)):
        message = f"unexpected {type(exc).__name__}: {message}; run with --debug for the traceback"
    return mask_secrets(message)


class CrabError(Exception):
    """Base class of every error raised on purpose by llama_index_crab."""


class ModelError(CrabError):
    """The model file is missing, is not a GGUF, or llama.cpp failed to load it."""


class EmbeddingModeError(ModelError):
    """A llama.cpp context was created without embeddings enabled."""


class PoolingError(ModelError):
    """The model's pooling does not fit the job, or produced NaN / all-zero vectors."""


class InputTooLongError(CrabError, ValueError):
    """A text is longer than the model's context and truncation is turned off."""


class ClusterError(CrabError):
    """The Ray cluster cannot be reached, or lost a worker more often than Ray retries."""


class StoreError(CrabError):
    """Base class of database-side errors."""


class DatabaseUnavailableError(StoreError):
    """The PostgreSQL server cannot be reached or refused the connection."""


class PgvectorMissingError(StoreError):
    """The pgvector extension is not installed or the role may not create it."""


class SchemaError(StoreError):
    """The database schema is missing or out of date: run the migrations."""


class CollectionNotFoundError(StoreError):
    """No collection with the given name exists."""


class CollectionMismatchError(StoreError):
    """The model, dimension or pooling differs from what the collection was created with."""


class VectorValueError(StoreError, ValueError):
    """A vector is NaN, infinite, not unit-norm, or has the wrong dimension."""


class TruncationWarning(UserWarning):
    """A text was longer than the model's context and was cut to fit."""


class ReplicaWarning(UserWarning):
    """A read replica is down, not a standby, or lagging; reads go elsewhere for a while."""
