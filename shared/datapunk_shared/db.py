"""PostgreSQL access: a psycopg 3 connection pool and versioned, forward-only schema
migrations applied at start.

Migrations are SQL files named ``NNNN_description.sql`` in a service's package. They
run in order, each once, inside one transaction that first takes a PostgreSQL advisory
lock, so two processes starting at once cannot apply the same migration twice. An
applied migration whose file has since changed is refused (checksum mismatch): fix
forward with a new migration instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from datapunk_shared.config import PostgresSettings
from datapunk_shared.errors import FailedPrecondition, engine_unavailable

__all__ = [
    "Migration",
    "apply_migrations",
    "create_pool",
    "load_migrations",
    "postgres_errors",
]

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# A fixed advisory-lock key for "schema migrations", shared by every service.
_LOCK_KEY = 0x64617461_70756E6B & 0x7FFFFFFFFFFFFFFF


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(package: str) -> list[Migration]:
    """Read ``NNNN_name.sql`` files from ``package`` (e.g. ``datapunk_lake.migrations``)."""
    found = []
    for entry in resources.files(package).iterdir():
        match = _NAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise FailedPrecondition(f"duplicate migration versions in {package}")
    return found


def create_pool(settings: PostgresSettings, *, name: str) -> AsyncConnectionPool:
    """A pool that is not opened yet; call ``await pool.open(wait=False)``. Opening does
    not need PostgreSQL to be up: connections are made as it becomes reachable."""
    return AsyncConnectionPool(
        settings.url,
        min_size=settings.pool_min,
        max_size=settings.pool_max,
        open=False,
        name=name,
        kwargs={"application_name": f"datapunk-{name}"},
    )


async def apply_migrations(
    conn: psycopg.AsyncConnection[Any], service: str, migrations: list[Migration]
) -> list[int]:
    """Apply the migrations of ``service`` not applied yet; returns their versions."""
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS datapunk_schema_migrations (
                service    text        NOT NULL,
                version    integer     NOT NULL,
                name       text        NOT NULL,
                checksum   text        NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (service, version)
            )
            """
        )
        cursor = await conn.execute(
            "SELECT version, checksum FROM datapunk_schema_migrations WHERE service = %s",
            (service,),
        )
        done = {int(row[0]): str(row[1]) for row in await cursor.fetchall()}
        for migration in migrations:
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise FailedPrecondition(
                        f"migration {service} {migration.version:04d}_{migration.name} was "
                        "changed after it was applied; add a new migration instead",
                        reason="MIGRATION_CHANGED",
                        metadata={"service": service, "version": str(migration.version)},
                    )
                continue
            await conn.execute(migration.sql.encode())
            await conn.execute(
                "INSERT INTO datapunk_schema_migrations (service, version, name, checksum)"
                " VALUES (%s, %s, %s, %s)",
                (service, migration.version, migration.name, migration.checksum),
            )
            applied_now.append(migration.version)
    return applied_now


@contextlib.contextmanager
def postgres_errors(what: str) -> Iterator[None]:
    """Map PostgreSQL trouble around a store's work to the error vocabulary, both as
    UNAVAILABLE (retryable): ``what``'s tables missing (``SCHEMA_NOT_READY``: the
    migrations have not run yet) and PostgreSQL unreachable or its pool exhausted
    (``ENGINE_UNAVAILABLE``). Anything else is the caller's to handle."""
    try:
        yield
    except pg_errors.UndefinedTable:
        raise engine_unavailable(
            "postgres",
            f"{what} is not ready yet (migrations pending); retry shortly",
            reason="SCHEMA_NOT_READY",
        ) from None
    except (psycopg.OperationalError, PoolTimeout, OSError) as exc:
        raise engine_unavailable(
            "postgres", f"PostgreSQL is unavailable ({type(exc).__name__}); retry later"
        ) from exc
