"""PostgreSQL errors of the OAuth stores, mapped once to the error vocabulary."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from datapunk_shared.db import postgres_errors
from psycopg_pool import AsyncConnectionPool

__all__ = ["connection"]

POOL_TIMEOUT = 5.0
"""How long a call waits for a PostgreSQL connection before it fails with UNAVAILABLE."""


@contextlib.asynccontextmanager
async def connection(pool: AsyncConnectionPool) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A pooled connection; PostgreSQL being down or the schema not being ready yet are
    UNAVAILABLE (retry), never a crash."""
    with postgres_errors("the OAuth store"):
        async with pool.connection(timeout=POOL_TIMEOUT) as conn:
            yield conn
