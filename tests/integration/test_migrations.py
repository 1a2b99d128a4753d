"""Schema migrations on the real PostgreSQL: applied once, safe when processes race,
and a changed migration is refused."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from datapunk_shared.config import Settings
from datapunk_shared.db import Migration, apply_migrations, load_migrations
from datapunk_shared.errors import FailedPrecondition


def _migrations(schema: str) -> list[Migration]:
    return [
        Migration(1, "schema", f"CREATE SCHEMA {schema};"),
        Migration(
            2,
            "table",
            f"CREATE TABLE {schema}.t (id int PRIMARY KEY); INSERT INTO {schema}.t VALUES (1);",
        ),
    ]


async def _apply(url: str, service: str, migrations: list[Migration]) -> list[int]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return await apply_migrations(conn, service, migrations)


async def test_racing_processes_apply_each_migration_once(settings: Settings) -> None:
    service = f"test_{uuid.uuid4().hex[:12]}"
    url = settings.engines.postgres.url
    migrations = _migrations(service)
    # Non-idempotent SQL (CREATE SCHEMA without IF NOT EXISTS): a double apply would fail.
    results = await asyncio.gather(*(_apply(url, service, migrations) for _ in range(4)))
    assert sorted(results, key=len) == [[], [], [], [1, 2]]
    assert await _apply(url, service, migrations) == []
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(
            "SELECT version FROM datapunk_schema_migrations WHERE service = %s ORDER BY 1",
            (service,),
        )
        assert [row[0] for row in await cursor.fetchall()] == [1, 2]
        await conn.execute(f"DROP SCHEMA {service} CASCADE")
        await conn.execute("DELETE FROM datapunk_schema_migrations WHERE service = %s", (service,))
        await conn.commit()


async def test_changed_migration_is_refused(settings: Settings) -> None:
    service = f"test_{uuid.uuid4().hex[:12]}"
    url = settings.engines.postgres.url
    await _apply(url, service, _migrations(service)[:1])
    edited = [Migration(1, "schema", f"CREATE SCHEMA {service}_other;")]
    with pytest.raises(FailedPrecondition) as caught:
        await _apply(url, service, edited)
    assert caught.value.reason == "MIGRATION_CHANGED"
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await conn.execute(f"DROP SCHEMA {service} CASCADE")
        await conn.execute("DELETE FROM datapunk_schema_migrations WHERE service = %s", (service,))
        await conn.commit()


def test_service_migrations_are_well_formed() -> None:
    for package in ("datapunk_lake.migrations", "datapunk_nexus.migrations"):
        migrations = load_migrations(package)
        assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
