"""PostgreSQL errors of the OAuth stores, mapped once to the error vocabulary."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from datapunk_shared.errors import engine_unavailable
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout

__all__ = ["connection"]

POOL_TIMEOUT = 5.0
"""How long a call waits for a PostgreSQL connection before it fails with UNAVAILABLE."""


@contextlib.asynccontextmanager
async def connection(pool: AsyncConnectionPool) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A pooled connection; PostgreSQL being down or the schema not being ready yet are
    UNAVAILABLE (retry), never a crash."""
    try:
        async with pool.connection(timeout=POOL_TIMEOUT) as conn:
            yield conn
    except pg_errors.UndefinedTable:
        raise engine_unavailable(
            "postgres",
            "the OAuth tables are not ready yet (migrations pending)",
            reason="SCHEMA_NOT_READY",
        ) from None
    except (psycopg.OperationalError, PoolTimeout, OSError) as exc:
        raise engine_unavailable(
            "postgres", f"PostgreSQL is unavailable: {type(exc).__name__}"
        ) from exc
