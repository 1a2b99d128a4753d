"""The audit trail's write path (``AuditLog.record``: group commit into a hash chain)
against single-row INSERTs on the same PostgreSQL, same run.

* **ours**: ``AuditLog.record`` with 1, 16 and 64 callers in a closed loop, each waiting
  for its own record's commit. Records go to one tenant's chain (the worst case: every
  batch moves the same chain head), HMAC-SHA-256 keyed, through the trail's own pool of 4
  autocommit connections: one transaction per batch, a batch being whatever arrived
  while the previous one committed. With one writer every batch takes the fast path (one
  statement: move the head from where this writer left it, insert the records).
* **raw**: the natural way to write an audit row without a batcher or a chain: one
  autocommitted ``INSERT`` per record into a table of the same shape (same columns, same
  primary key and the same five search indexes, ``seq`` from a sequence), through a pool
  of 16 connections, with the same callers.
* **two writers**: two ``AuditLog`` instances with their own pools (two Nexus processes'
  worth) and 32 callers each append to the same chain at once, so most batches find the
  head moved by the other and take the locked path (lock the head, then write); the
  chain is verified afterwards.
* **verify**: ``AuditStore.verify`` over everything written, records per second.

Each level runs ``SECONDS`` (less with ``--quick``) per side; the two sides alternate
which goes first. Both run in this one process and event loop, so the Python cost of the
callers is in both numbers.

Bars: ours/raw records per second with 64 callers >= 1.0; ours/raw p50 with 1 caller
<= 2.5 (a lone record costs more than a bare INSERT: the head row it moves, the hashing,
the hop through the writer task; a ratio, because the absolute gap grows with the load
of the shared machine); the chain written by two writers verifies.

Uses ``engines.postgres.url`` from the configuration; works in a scratch database it
creates on that server (the Nexus migrations 0001 and 0006 applied) and drops."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/audit.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from datapunk_nexus.identity.audit import (
    AuditEvent,
    AuditLog,
    AuditStore,
    ChainHasher,
    ChainWriter,
    Outcome,
    open_audit_pool,
)
from datapunk_shared.config import load_settings
from datapunk_shared.db import apply_migrations, load_migrations
from psycopg import conninfo
from psycopg_pool import AsyncConnectionPool

from bench.common import Bar, Result, main_with_quick, summarize_latencies

__all__ = ["DESCRIPTION", "NAME", "run"]

NAME = "audit"
DESCRIPTION = "AuditLog.record (group commit, hash chain) vs one INSERT per record"

LEVELS = (1, 16, 64)
SECONDS = 4.0
QUICK_SECONDS = 1.5
THROUGHPUT_RATIO_BAR = 1.0
P50_RATIO_BAR = 2.5
TENANT = "bench"
KEY = b"bench-audit-chain-key-32-bytes!!"

_RAW_TABLE = """
CREATE TABLE nexus.bench_raw_events (LIKE nexus.audit_events INCLUDING ALL);
CREATE SEQUENCE nexus.bench_raw_seq;
ALTER TABLE nexus.bench_raw_events ALTER COLUMN seq SET DEFAULT nextval('nexus.bench_raw_seq');
"""
_RAW_INSERT = """
INSERT INTO nexus.bench_raw_events (tenant, time, principal, principal_kind, credential_id,
    action, method, resource, outcome, reason, client_address, request_id, prev_hash, hash)
VALUES (%s, now(), %s, %s, %s, %s, %s, %s, %s, '', %s, %s, '', '')
"""


def _event(i: int) -> AuditEvent:
    return AuditEvent(
        action="data.read",
        outcome=Outcome.ALLOW,
        tenant=TENANT,
        principal=f"client:bench-{i % 7}",
        principal_kind="client",
        credential_id=f"jti-{i:08x}",
        method="/datapunk.lake.v1.VectorService/GetPoints",
        resource=f"lake/collections/c{i % 13}",
        client_address="127.0.0.1",
        request_id=f"req-{i:08x}",
    )


async def _closed_loop(
    callers: int, seconds: float, call: Callable[[int], Awaitable[None]]
) -> tuple[float, list[float]]:
    """``callers`` tasks calling ``call`` back to back for ``seconds``; returns calls per
    second and every call's latency."""
    latencies: list[float] = []
    counter = iter(range(10**12))
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            await call(next(counter))
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return len(latencies) / (time.perf_counter() - started), latencies


@asynccontextmanager
async def _scratch_database(url: str) -> AsyncIterator[str]:
    name = f"datapunk_bench_audit_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        await admin.execute(f'CREATE DATABASE "{name}"')
    scratch = conninfo.make_conninfo(url, dbname=name)
    try:
        async with await psycopg.AsyncConnection.connect(scratch) as conn:
            wanted = [
                m for m in load_migrations("datapunk_nexus.migrations") if m.version in (1, 6)
            ]
            await apply_migrations(conn, "nexus", wanted)
            await conn.execute(_RAW_TABLE.encode())
            await conn.commit()
        yield scratch
    finally:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _raw_pool(url: str) -> AsyncConnectionPool:
    return AsyncConnectionPool(
        url, min_size=16, max_size=16, open=False, kwargs={"autocommit": True}
    )


def _audit_log(url: str) -> tuple[AsyncConnectionPool, ChainWriter, AuditLog]:
    pool = open_audit_pool(url, max_size=4)
    writer = ChainWriter(pool, ChainHasher(KEY))
    return pool, writer, AuditLog(writer, write_timeout=30.0)


def _batch_stats(
    audit_log: AuditLog, writer: ChainWriter, records: int, before: tuple[int, int]
) -> dict[str, float]:
    batches = audit_log.batches - before[0]
    locked = writer.locked_batches - before[1]
    return {
        "records_per_batch": records / max(batches, 1),
        "locked_share": locked / max(batches, 1),
    }


async def _run(quick: bool) -> Result:
    settings = load_settings()
    seconds = QUICK_SECONDS if quick else SECONDS
    rows: list[list[Any]] = []
    details: dict[str, Any] = {"seconds_per_level": seconds, "levels": {}}
    async with _scratch_database(settings.engines.postgres.url) as url:
        ours_pool, ours_writer, audit_log = _audit_log(url)
        raw_pool = _raw_pool(url)
        await ours_pool.open()
        await raw_pool.open()

        async def ours(i: int) -> None:
            await audit_log.record(_event(i))

        async def raw(i: int) -> None:
            event = _event(i)
            async with raw_pool.connection() as conn:
                await conn.execute(
                    _RAW_INSERT,
                    (
                        event.tenant,
                        event.principal,
                        event.principal_kind,
                        event.credential_id,
                        event.action,
                        event.method,
                        event.resource,
                        str(event.outcome),
                        event.client_address,
                        event.request_id,
                    ),
                )

        try:
            await _closed_loop(8, 0.5, ours)  # warm up both paths
            await _closed_loop(8, 0.5, raw)
            for index, callers in enumerate(LEVELS):
                sides = [("ours", ours), ("raw", raw)]
                if index % 2:
                    sides.reverse()
                measured: dict[str, dict[str, float]] = {}
                for side, call in sides:
                    before = (audit_log.batches, ours_writer.locked_batches)
                    rate, latencies = await _closed_loop(callers, seconds, call)
                    measured[side] = {
                        "records_per_s": rate,
                        "calls": len(latencies),
                        **summarize_latencies(latencies),
                    }
                    if side == "ours":
                        measured[side].update(
                            _batch_stats(audit_log, ours_writer, len(latencies), before)
                        )
                details["levels"][str(callers)] = measured
                for side in ("ours", "raw"):
                    rows.append(_row(side, callers, measured[side]))
            two = await _two_writers(url, seconds)
            details["two_writers"] = two
            rows.append(_row("two writers", 64, two))
            started = time.perf_counter()
            verdict = await AuditStore(ours_pool, ChainHasher(KEY)).verify(TENANT)
            details["verify"] = {
                "records": verdict.checked,
                "records_per_s": verdict.checked / (time.perf_counter() - started),
                "ok": verdict.ok,
                "description": verdict.description,
            }
        finally:
            await audit_log.close()
            await ours_pool.close()
            await raw_pool.close()

    levels = details["levels"]
    ratio = levels["64"]["ours"]["records_per_s"] / levels["64"]["raw"]["records_per_s"]
    p50_ratio = levels["1"]["ours"]["p50_us"] / levels["1"]["raw"]["p50_us"]
    chain_ok = 1.0 if details["verify"]["ok"] else 0.0
    return Result(
        name=NAME,
        description=DESCRIPTION,
        columns=["writer", "callers", "records/s", "p50 ms", "p99 ms", "records/txn", "locked"],
        rows=rows,
        bars=[
            Bar("ours/raw records/s, 64 callers", ratio, THROUGHPUT_RATIO_BAR, ">=", "x"),
            Bar("ours/raw p50, 1 caller", p50_ratio, P50_RATIO_BAR, "<=", "x"),
            Bar("chain of two writers verifies", chain_ok, 1.0, ">="),
        ],
        details=details,
        notes=[
            "locked: the share of transactions that took the locked path (the chain's head "
            "was moved by the other writer, or is not known yet)",
            f"verify walked {details['verify']['records']:,} records at "
            f"{details['verify']['records_per_s']:,.0f} records/s",
        ],
    )


def _row(side: str, callers: int, m: dict[str, float]) -> list[Any]:
    return [
        side,
        callers,
        m["records_per_s"],
        m["p50_us"] / 1000,
        m["p99_us"] / 1000,
        m.get("records_per_batch", 1.0),
        f"{m['locked_share']:.0%}" if "locked_share" in m else "-",
    ]


async def _two_writers(url: str, seconds: float) -> dict[str, float]:
    writers = [_audit_log(url), _audit_log(url)]
    for pool, _, _ in writers:
        await pool.open()
    try:

        async def call(i: int) -> None:
            await writers[i % 2][2].record(_event(i))

        befores = [(log.batches, writer.locked_batches) for _, writer, log in writers]
        rate, latencies = await _closed_loop(64, seconds, call)
        pairs = list(zip(writers, befores, strict=True))
        batches = sum(log.batches - before[0] for (_, _, log), before in pairs)
        locked = sum(writer.locked_batches - before[1] for (_, writer, _), before in pairs)
        return {
            "records_per_s": rate,
            **summarize_latencies(latencies),
            "records_per_batch": len(latencies) / max(batches, 1),
            "locked_share": locked / max(batches, 1),
        }
    finally:
        for pool, _, log in writers:
            await log.close()
            await pool.close()


def run(quick: bool = False) -> Result:
    """Run the benchmark (``quick``: shorter levels)."""
    return asyncio.run(_run(quick))


def main(argv: list[str] | None = None) -> int:
    return main_with_quick(run, DESCRIPTION, f"{QUICK_SECONDS:g} s per level", argv)


if __name__ == "__main__":
    sys.exit(main())
