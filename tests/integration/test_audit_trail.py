"""The audit trail against the real PostgreSQL: records written through AuditLog are
searchable by every filter and page, exported in order, and verified; tampering with the
tables directly (edits, deletions, insertions, reordering, a cut-off end, forged heads and
checkpoints) is found at the first broken record; two writers keep one chain; retention
leaves a checkpoint the chain verifies from; and writing fails closed, quickly, when
PostgreSQL is unreachable, silent, locked or refuses."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from datapunk_nexus.identity.audit import (
    AuditEvent,
    AuditLog,
    AuditQuery,
    AuditStore,
    ChainHasher,
    ChainWriter,
    Order,
    Outcome,
    Problem,
    RecordedEvent,
    open_audit_pool,
)
from datapunk_nexus.identity.audit.events import GENESIS_HASH
from datapunk_shared.config import Settings
from datapunk_shared.db import apply_migrations, load_migrations
from datapunk_shared.errors import FailedPrecondition, InvalidArgument, Unavailable
from datapunk_shared.paging import decode_page_token, encode_page_token
from psycopg import conninfo
from psycopg_pool import AsyncConnectionPool

from tests.support import free_port

KEY = b"integration-audit-chain-key-32b!"
T0 = datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)


@pytest.fixture(scope="module")
async def url(settings: Settings) -> str:
    """The stack's database, with the Nexus schema and the trail's tables (0001, 0006)."""
    database = settings.engines.postgres.url
    async with await psycopg.AsyncConnection.connect(database) as conn:
        migrations = load_migrations("datapunk_nexus.migrations")
        await apply_migrations(conn, "nexus", [m for m in migrations if m.version in (1, 6)])
    return database


@pytest.fixture(scope="module")
async def pool(url: str) -> AsyncIterator[AsyncConnectionPool]:
    pool = open_audit_pool(url)
    await pool.open(wait=True, timeout=10)
    yield pool
    await pool.close()


@pytest.fixture
def tenant() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def audit(pool: AsyncConnectionPool) -> AsyncIterator[AuditLog]:
    audit = AuditLog(ChainWriter(pool, ChainHasher(KEY)), write_timeout=10)
    yield audit
    await audit.close()


@pytest.fixture
def store(pool: AsyncConnectionPool) -> AuditStore:
    return AuditStore(pool, ChainHasher(KEY), export_page_size=4)


def _event(tenant: str, i: int) -> AuditEvent:
    """Event ``i`` of a small, varied trail: four principals, three actions, resources
    under two prefixes, every fifth one denied, one second apart."""
    return AuditEvent(
        action=("authenticate", "data.read", "admin.role.put")[i % 3],
        outcome=Outcome.DENY if i % 5 == 0 else Outcome.ALLOW,
        tenant=tenant,
        principal=f"client:p{i % 4}",
        principal_kind="client",
        credential_id=f"jti-{i}",
        method="/datapunk.lake.v1.VectorService/GetPoints",
        resource=(f"lake/collections/c{i % 3}" if i % 2 else f"lake/layers/l{i}"),
        reason="PERMISSION_DENIED" if i % 5 == 0 else "",
        client_address="192.0.2.7",
        request_id=f"req-{i}",
        time=T0 + timedelta(seconds=i),
    )


async def _write(audit: AuditLog, tenant: str, count: int) -> list[AuditEvent]:
    events = [_event(tenant, i) for i in range(1, count + 1)]
    for event in events:  # one at a time: sequence numbers follow i
        await audit.record(event)
    return events


async def _sql(url: str, statement: str, *params: Any) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(statement.encode(), params)


async def _rows(url: str, tenant: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(
            "SELECT seq, prev_hash, hash FROM nexus.audit_events WHERE tenant = %s ORDER BY seq",
            (tenant,),
        )
        return list(await cursor.fetchall())


async def _all(store: AuditStore, query: AuditQuery, order: Order, size: int) -> list[int]:
    """Every page of a search, concatenated, as sequence numbers."""
    sequences: list[int] = []
    token = ""
    while True:
        page = await store.search(query, order, size, token)
        assert len(page.records) <= size
        sequences += [r.sequence for r in page.records]
        if not page.next_page_token:
            return sequences
        token = page.next_page_token


async def test_search_by_each_filter_and_page_by_page(
    audit: AuditLog, store: AuditStore, tenant: str
) -> None:
    events = await _write(audit, tenant, 30)
    by_seq = dict(enumerate(events, start=1))

    def expected(match: Callable[[AuditEvent], bool]) -> list[int]:
        return [seq for seq, event in sorted(by_seq.items(), reverse=True) if match(event)]

    cases: list[tuple[AuditQuery, Callable[[AuditEvent], bool]]] = [
        (AuditQuery(tenant), lambda e: True),
        (AuditQuery(tenant, principal="client:p2"), lambda e: e.principal == "client:p2"),
        (AuditQuery(tenant, action="admin.role.put"), lambda e: e.action == "admin.role.put"),
        (
            AuditQuery(tenant, resource_prefix="lake/collections/"),
            lambda e: e.resource.startswith("lake/collections/"),
        ),
        (
            AuditQuery(tenant, resource_prefix="lake/layers/l1"),
            lambda e: e.resource.startswith("lake/layers/l1"),
        ),
        (AuditQuery(tenant, outcome=Outcome.DENY), lambda e: e.outcome is Outcome.DENY),
        (
            AuditQuery(
                tenant, start_time=T0 + timedelta(seconds=10), end_time=T0 + timedelta(seconds=20)
            ),
            lambda e: (
                e.time is not None
                and T0 + timedelta(seconds=10) <= e.time < T0 + timedelta(seconds=20)
            ),
        ),
        (
            AuditQuery(tenant, principal="client:p1", outcome=Outcome.ALLOW, action="data.read"),
            lambda e: (
                e.principal == "client:p1"
                and e.outcome is Outcome.ALLOW
                and e.action == "data.read"
            ),
        ),
        (AuditQuery(tenant, resource_prefix="lake/collections/%"), lambda e: False),
    ]
    for query, match in cases:
        want = expected(match)
        assert await _all(store, query, Order.NEWEST_FIRST, 4) == want, query
        assert await _all(store, query, Order.OLDEST_FIRST, 7) == want[::-1], query

    page = await store.search(AuditQuery(tenant), Order.NEWEST_FIRST, 1, "")
    (record,) = page.records
    assert record.event == events[-1]
    assert record.sequence == 30
    assert record.hash == ChainHasher(KEY).record_hash(record)

    # A token belongs to its query; one from another filter or order, or made up, is refused.
    with pytest.raises(InvalidArgument) as caught:
        await store.search(
            AuditQuery(tenant, action="x"), Order.NEWEST_FIRST, 1, page.next_page_token
        )
    assert caught.value.reason == "INVALID_PAGE_TOKEN"
    with pytest.raises(InvalidArgument) as caught:
        await store.search(AuditQuery(tenant), Order.OLDEST_FIRST, 1, page.next_page_token)
    assert caught.value.reason == "INVALID_PAGE_TOKEN"
    fingerprint = decode_page_token(page.next_page_token).partition(":")[0]
    for bad in ("!!!", "bm90IGEgdG9rZW4", encode_page_token(f"{fingerprint}:-5")):
        with pytest.raises(InvalidArgument) as caught:
            await store.search(AuditQuery(tenant), Order.NEWEST_FIRST, 1, bad)
        assert caught.value.reason == "INVALID_PAGE_TOKEN"


async def test_search_sees_only_the_tenant_asked_for(
    audit: AuditLog, store: AuditStore, tenant: str
) -> None:
    other = tenant + "-other"
    await _write(audit, tenant, 3)
    await _write(audit, other, 5)
    mine = await store.search(AuditQuery(tenant), Order.NEWEST_FIRST, 100, "")
    theirs = await store.search(AuditQuery(other), Order.NEWEST_FIRST, 2, "")
    assert {r.event.tenant for r in mine.records} == {tenant}
    assert [r.sequence for r in mine.records] == [3, 2, 1]
    # Each tenant has its own chain, numbered from 1.
    assert [r.sequence for r in theirs.records] == [5, 4]
    with pytest.raises(InvalidArgument):
        await store.search(AuditQuery(tenant), Order.NEWEST_FIRST, 2, theirs.next_page_token)


async def test_export_streams_every_matching_record_in_order(
    audit: AuditLog, store: AuditStore, tenant: str
) -> None:
    await _write(audit, tenant, 11)
    newest = [r.sequence async for r in store.export(AuditQuery(tenant), Order.NEWEST_FIRST)]
    assert newest == list(range(11, 0, -1))  # three pages of 4 from PostgreSQL
    oldest = [
        r.sequence
        async for r in store.export(AuditQuery(tenant, outcome=Outcome.DENY), Order.OLDEST_FIRST)
    ]
    assert oldest == [5, 10]
    assert [r async for r in store.export(AuditQuery(tenant + "-none"), Order.OLDEST_FIRST)] == []


async def test_verify_an_intact_trail_whole_and_by_range(
    audit: AuditLog, store: AuditStore, tenant: str
) -> None:
    await _write(audit, tenant, 12)
    verdict = await store.verify(tenant)
    assert (verdict.ok, verdict.checked, verdict.first_sequence, verdict.last_sequence) == (
        True,
        12,
        1,
        12,
    )
    part = await store.verify(tenant, 4, 9)
    assert (part.ok, part.checked, part.first_sequence, part.last_sequence) == (True, 6, 4, 9)
    assert (await store.verify(tenant, 12, 40)).ok
    empty = await store.verify(tenant + "-never-written")
    assert (empty.ok, empty.checked) == (True, 0)
    # A wrong key finds the very first record does not match.
    wrong = await AuditStore(store.pool, ChainHasher(b"another-key-of-32-bytes-length!!")).verify(
        tenant
    )
    assert (wrong.broken_sequence, wrong.problem) == (1, Problem.EDITED)


async def _forged_row(url: str, tenant: str, sequence: int, prev_hash: bytes) -> None:
    """What a forger with write access to the table, but without the chain key, can put
    in: a plausible record linked to its predecessor, with a SHA-256 hash of its own."""
    event = dataclasses.replace(_event(tenant, 99), principal="client:forger")
    record = RecordedEvent(event, sequence, prev_hash, b"")
    record = dataclasses.replace(record, hash=ChainHasher(None).record_hash(record))
    await _sql(
        url,
        "INSERT INTO nexus.audit_events VALUES "
        "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        event.tenant,
        sequence,
        event.time,
        event.principal,
        event.principal_kind,
        event.credential_id,
        event.action,
        event.method,
        event.resource,
        str(event.outcome),
        event.reason,
        event.client_address,
        event.request_id,
        prev_hash,
        record.hash,
    )


_FAR = 1_000_000  # renumbering goes through numbers no record has: the key is unique


async def _shift(url: str, tenant: str, first: int, by: int) -> None:
    """Renumber the records from ``first`` on by ``by``."""
    await _sql(
        url,
        "UPDATE nexus.audit_events SET seq = seq + %s WHERE tenant = %s AND seq >= %s",
        _FAR,
        tenant,
        first,
    )
    await _sql(
        url,
        "UPDATE nexus.audit_events SET seq = seq - %s + %s WHERE tenant = %s AND seq > %s",
        _FAR,
        by,
        tenant,
        _FAR,
    )


async def _edit_field(url: str, tenant: str) -> None:
    await _sql(
        url,
        "UPDATE nexus.audit_events SET outcome = 'allow', reason = '' "
        "WHERE tenant = %s AND seq = 5",
        tenant,
    )


async def _edit_link(url: str, tenant: str) -> None:
    await _sql(
        url,
        "UPDATE nexus.audit_events SET prev_hash = %s WHERE tenant = %s AND seq = 5",
        b"\x01" * 32,
        tenant,
    )


async def _delete(url: str, tenant: str) -> None:
    await _sql(url, "DELETE FROM nexus.audit_events WHERE tenant = %s AND seq = 5", tenant)


async def _insert_in_the_middle(url: str, tenant: str) -> None:
    rows = await _rows(url, tenant)
    await _shift(url, tenant, 5, 1)
    await _forged_row(url, tenant, 5, bytes(rows[3][2]))


async def _reorder(url: str, tenant: str) -> None:
    """Swap records 5 and 6."""
    await _sql(
        url,
        "UPDATE nexus.audit_events SET seq = %s + 11 - seq WHERE tenant = %s AND seq IN (5, 6)",
        _FAR,
        tenant,
    )
    await _sql(
        url,
        "UPDATE nexus.audit_events SET seq = seq - %s WHERE tenant = %s AND seq > %s",
        _FAR,
        tenant,
        _FAR,
    )


async def _cut_the_end(url: str, tenant: str) -> None:
    await _sql(url, "DELETE FROM nexus.audit_events WHERE tenant = %s AND seq > 10", tenant)


async def _cut_the_end_and_move_the_head(url: str, tenant: str) -> None:
    rows = await _rows(url, tenant)
    await _cut_the_end(url, tenant)
    await _sql(
        url,
        "UPDATE nexus.audit_chain_heads SET seq = 10, hash = %s, seal = %s WHERE tenant = %s",
        bytes(rows[9][2]),
        ChainHasher(None).head_seal(tenant, 10, bytes(rows[9][2])),
        tenant,
    )


async def _append_a_forgery(url: str, tenant: str) -> None:
    rows = await _rows(url, tenant)
    await _forged_row(url, tenant, 13, bytes(rows[-1][2]))


async def _delete_the_head(url: str, tenant: str) -> None:
    await _sql(url, "DELETE FROM nexus.audit_chain_heads WHERE tenant = %s", tenant)


@pytest.mark.parametrize(
    ("tamper", "broken", "problem"),
    [
        (_edit_field, 5, Problem.EDITED),
        (_edit_link, 5, Problem.EDITED),
        (_delete, 5, Problem.MISSING),
        (_insert_in_the_middle, 5, Problem.INSERTED),
        (_reorder, 5, Problem.OUT_OF_ORDER),
        (_cut_the_end, 11, Problem.MISSING),
        (_cut_the_end_and_move_the_head, 10, Problem.EDITED),
        (_append_a_forgery, 13, Problem.INSERTED),
        (_delete_the_head, 12, Problem.EDITED),
    ],
    ids=lambda value: getattr(value, "__name__", str(value)).strip("_"),
)
async def test_tampering_is_found_at_the_first_broken_record(
    url: str,
    audit: AuditLog,
    store: AuditStore,
    tenant: str,
    tamper: Callable[[str, str], Any],
    broken: int,
    problem: Problem,
) -> None:
    await _write(audit, tenant, 12)
    assert (await store.verify(tenant)).ok
    await tamper(url, tenant)
    verdict = await store.verify(tenant)
    assert (verdict.ok, verdict.broken_sequence, verdict.problem) == (False, broken, problem), (
        verdict.description
    )
    assert verdict.description
    if broken > 2:
        # The records before the break still verify on their own.
        assert (await store.verify(tenant, 1, broken - 2)).ok


async def test_two_writers_keep_one_chain_per_tenant(
    url: str, store: AuditStore, tenant: str
) -> None:
    """Two AuditLog instances with their own pools, like two Nexus processes, and many
    callers each, write to three tenants' chains at once."""
    tenants = [f"{tenant}-{n}" for n in range(3)]
    pools = [open_audit_pool(url), open_audit_pool(url)]
    writers = [ChainWriter(p, ChainHasher(KEY)) for p in pools]
    logs = [AuditLog(w, write_timeout=30) for w in writers]
    for p in pools:
        await p.open(wait=True, timeout=10)
    try:

        async def caller(log: AuditLog, who: int) -> None:
            for i in range(40):
                event = _event(tenants[(who + i) % 3], i)
                await log.record(dataclasses.replace(event, request_id=f"{who}-{i}"))

        await asyncio.gather(*(caller(logs[who % 2], who) for who in range(12)))
    finally:
        for log in logs:
            await log.close()
        for p in pools:
            await p.close()
    assert all(w.locked_batches > 1 for w in writers)  # they did get in each other's way
    written: set[str] = set()
    for name in tenants:
        verdict = await store.verify(name)
        assert verdict.ok, verdict.description
        rows = [r async for r in store.export(AuditQuery(name), Order.OLDEST_FIRST)]
        assert [r.sequence for r in rows] == list(range(1, len(rows) + 1))
        written |= {r.event.request_id for r in rows}
    assert written == {f"{who}-{i}" for who in range(12) for i in range(40)}


async def test_a_stale_remembered_head_is_never_written_onto(
    pool: AsyncConnectionPool, store: AuditStore, tenant: str
) -> None:
    """A writer's fast path writes only where the head still is, by number and hash; a
    head it remembers wrongly (as after a write it could not confirm) sends the batch down
    the locked path instead of forking the chain."""
    writer = ChainWriter(pool, ChainHasher(KEY))
    await writer.append([dataclasses.replace(_event(tenant, 1), time=T0)])
    other = ChainWriter(pool, ChainHasher(KEY))
    await other.append([dataclasses.replace(_event(tenant, 2), time=T0)])
    # Same number as the real head, another hash.
    writer._known[tenant] = (2, b"\x05" * 32)
    locked_before = writer.locked_batches
    (record,) = await writer.append([dataclasses.replace(_event(tenant, 3), time=T0)])
    assert record.sequence == 3
    assert writer.locked_batches == locked_before + 1
    assert (await store.verify(tenant)).ok


async def test_retention_removes_old_records_behind_a_checkpoint(
    url: str, audit: AuditLog, store: AuditStore, tenant: str
) -> None:
    await _write(audit, tenant, 12)
    checkpoint = await store.prune(tenant, 6)
    assert checkpoint.sequence == 6
    assert await store.prune(tenant, 3) == checkpoint  # already behind the checkpoint
    remaining = [r.sequence async for r in store.export(AuditQuery(tenant), Order.OLDEST_FIRST)]
    assert remaining == list(range(7, 13))
    verdict = await store.verify(tenant)
    assert (verdict.ok, verdict.checkpoint_sequence, verdict.first_sequence, verdict.checked) == (
        True,
        6,
        7,
        6,
    )
    # The chain goes on from the checkpoint.
    await audit.record(_event(tenant, 13))
    assert (await store.verify(tenant)).ok
    with pytest.raises(FailedPrecondition) as caught:
        await store.prune(tenant, 99)
    assert caught.value.reason == "AUDIT_RECORD_NOT_FOUND"

    # A checkpoint moved to hide more deleted records does not match its seal.
    rows = await _rows(url, tenant)
    await _sql(url, "DELETE FROM nexus.audit_events WHERE tenant = %s AND seq = 7", tenant)
    await _sql(
        url,
        "UPDATE nexus.audit_checkpoints SET seq = 7, hash = %s WHERE tenant = %s",
        bytes(rows[0][2]),
        tenant,
    )
    verdict = await store.verify(tenant)
    assert (verdict.broken_sequence, verdict.problem) == (7, Problem.EDITED)
    # Without its checkpoint, the trail starts with a gap.
    await _sql(url, "DELETE FROM nexus.audit_checkpoints WHERE tenant = %s", tenant)
    verdict = await store.verify(tenant)
    assert (verdict.broken_sequence, verdict.problem) == (1, Problem.MISSING)


async def test_a_broken_chain_is_never_pruned(
    url: str, audit: AuditLog, store: AuditStore, tenant: str
) -> None:
    await _write(audit, tenant, 8)
    await _edit_field(url, tenant)
    with pytest.raises(FailedPrecondition) as caught:
        await store.prune(tenant, 6)
    assert caught.value.reason == "AUDIT_CHAIN_BROKEN"
    assert caught.value.metadata == {"broken_sequence": "5"}
    assert len(await _rows(url, tenant)) == 8


async def test_text_postgresql_cannot_store_is_cleaned_and_still_verifies(
    audit: AuditLog, store: AuditStore, tenant: str
) -> None:
    await audit.record(
        AuditEvent(
            action="data.read",
            outcome=Outcome.ERROR,
            tenant=tenant,
            principal="client:\x00nul",
            resource="lake/" + "ü" * 3000,
            method="/\ud800/x",
        )
    )
    (record,) = (await store.search(AuditQuery(tenant), Order.NEWEST_FIRST, 5, "")).records
    assert record.event.principal == "client:\ufffdnul"
    assert len(record.event.resource) == 1024
    assert (await store.verify(tenant)).ok


async def test_the_table_has_no_column_for_a_secret(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'nexus' AND table_name = 'audit_events'"
        )
        columns = {row[0] for row in await cursor.fetchall()}
    assert columns == {
        "tenant",
        "seq",
        "time",
        "principal",
        "principal_kind",
        "credential_id",
        "action",
        "method",
        "resource",
        "outcome",
        "reason",
        "client_address",
        "request_id",
        "prev_hash",
        "hash",
    }


# --- failing closed -------------------------------------------------------------------


async def _fails_closed_within(audit: AuditLog, tenant: str, seconds: float) -> Unavailable:
    started = time.perf_counter()
    with pytest.raises(Unavailable) as caught:
        await audit.record(_event(tenant, 1))
    assert time.perf_counter() - started < seconds
    assert caught.value.reason == "AUDIT_UNAVAILABLE"
    return caught.value


async def test_unreachable_postgresql_fails_closed_quickly(tenant: str) -> None:
    pool = open_audit_pool(f"postgresql://postgres@127.0.0.1:{free_port()}/none")
    await pool.open(wait=False)
    audit = AuditLog(ChainWriter(pool, ChainHasher(KEY), pool_timeout=0.5), write_timeout=0.5)
    try:
        await _fails_closed_within(audit, tenant, 1.5)
        # Until retry_interval has passed, records are refused at once.
        error = await _fails_closed_within(audit, tenant, 0.05)
        assert error.retry_after is not None
    finally:
        await audit.close()
        await pool.close()


async def test_a_postgresql_that_never_answers_fails_closed_quickly(tenant: str) -> None:
    """A server that accepts connections and then says nothing (a hung host)."""
    silent: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = open_audit_pool(f"postgresql://postgres@127.0.0.1:{port}/none")
    await pool.open(wait=False)
    audit = AuditLog(ChainWriter(pool, ChainHasher(KEY), pool_timeout=0.5), write_timeout=0.5)
    try:
        await _fails_closed_within(audit, tenant, 1.5)
    finally:
        await audit.close()
        await pool.close(timeout=1)
        for writer in silent:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_chain_head_held_locked_fails_closed_then_recovers(
    url: str, pool: AsyncConnectionPool, store: AuditStore, tenant: str
) -> None:
    """Another writer is stuck inside its transaction holding the chain's head."""
    audit = AuditLog(ChainWriter(pool, ChainHasher(KEY)), write_timeout=0.5, retry_interval=0)
    try:
        await audit.record(_event(tenant, 1))
        async with await psycopg.AsyncConnection.connect(url) as stuck:
            await stuck.execute(
                "SELECT seq FROM nexus.audit_chain_heads WHERE tenant = %s FOR UPDATE", (tenant,)
            )
            await _fails_closed_within(audit, tenant, 1.5)
            await stuck.rollback()
        await audit.record(_event(tenant, 2))
    finally:
        await audit.close()
    assert (await store.verify(tenant)).ok


async def test_a_role_that_may_not_write_the_trail_fails_closed(url: str, tenant: str) -> None:
    role = f"audit_reader_{uuid.uuid4().hex[:8]}"
    await _sql(url, f"CREATE ROLE {role} LOGIN")
    try:
        await _sql(url, f"GRANT USAGE ON SCHEMA nexus TO {role}")
        await _sql(url, f"GRANT SELECT ON ALL TABLES IN SCHEMA nexus TO {role}")
        pool = open_audit_pool(conninfo.make_conninfo(url, user=role))
        await pool.open(wait=True, timeout=10)
        audit = AuditLog(ChainWriter(pool, ChainHasher(KEY)), write_timeout=2)
        try:
            await _fails_closed_within(audit, tenant, 1.5)
        finally:
            await audit.close()
            await pool.close()
    finally:
        await _sql(url, f"REVOKE ALL ON ALL TABLES IN SCHEMA nexus FROM {role}")
        await _sql(url, f"REVOKE ALL ON SCHEMA nexus FROM {role}")
        await _sql(url, f"DROP ROLE {role}")


async def test_reads_fail_with_audit_unavailable_when_postgresql_is_down(tenant: str) -> None:
    pool = open_audit_pool(f"postgresql://postgres@127.0.0.1:{free_port()}/none")
    await pool.open(wait=False)
    store = AuditStore(pool, ChainHasher(KEY), pool_timeout=0.3)
    try:
        for call in (
            store.search(AuditQuery(tenant), Order.NEWEST_FIRST, 10, ""),
            store.verify(tenant),
        ):
            with pytest.raises(Unavailable) as caught:
                await call
            assert caught.value.reason == "AUDIT_UNAVAILABLE"
    finally:
        await pool.close()


async def test_the_first_record_of_a_chain_links_to_the_genesis_hash(
    url: str, audit: AuditLog, tenant: str
) -> None:
    await _write(audit, tenant, 2)
    rows = await _rows(url, tenant)
    assert bytes(rows[0][1]) == GENESIS_HASH
    assert bytes(rows[1][1]) == bytes(rows[0][2])
