"""Reading the audit trail in PostgreSQL (the tables of migration 0006): searching and
exporting with keyset pagination on the sequence number, verifying a chain in one
consistent snapshot, and removing old records behind a checkpoint (retention). Writing
is :mod:`.writer`'s."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, LiteralString

import psycopg
from datapunk_shared.errors import (
    DatapunkError,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
    engine_unavailable,
)
from datapunk_shared.paging import decode_page_token, encode_page_token, invalid_page_token
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from datapunk_nexus.identity.audit.chain import (
    ChainHasher,
    ChainVerdict,
    Checkpoint,
    Head,
    Problem,
    verify_chain,
)
from datapunk_nexus.identity.audit.events import (
    GENESIS_HASH,
    AuditEvent,
    AuditQuery,
    Order,
    Outcome,
    RecordedEvent,
)

__all__ = ["AuditStore", "SearchPage", "audit_unavailable", "open_audit_pool"]

AUDIT_UNAVAILABLE = "AUDIT_UNAVAILABLE"

_COLUMNS: LiteralString = (
    "tenant, seq, time, principal, principal_kind, credential_id, action, method, "
    "resource, outcome, reason, client_address, request_id, prev_hash, hash"
)


def open_audit_pool(
    url: str, *, max_size: int = 4, name: str = "nexus-audit"
) -> AsyncConnectionPool:
    """A pool for the trail (not opened yet: ``await pool.open(wait=False)``), in
    autocommit mode as ``ChainWriter`` and ``AuditStore`` expect. A connection stuck
    inside a transaction (its process hung) is closed by PostgreSQL after 10 s, so it
    cannot hold a chain's head locked for longer."""
    return AsyncConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        open=False,
        name=name,
        kwargs={
            "autocommit": True,
            "application_name": "datapunk-nexus-audit",
            "options": "-c idle_in_transaction_session_timeout=10000",
        },
    )


def audit_unavailable(message: str, retry_after: float = 1.0) -> Unavailable:
    """UNAVAILABLE with reason AUDIT_UNAVAILABLE: the trail cannot be written or read now."""
    return engine_unavailable(
        "postgres", message, reason=AUDIT_UNAVAILABLE, retry_after=retry_after
    )


@contextlib.contextmanager
def _engine_errors(doing: str) -> Iterator[None]:
    """Every failure to reach or use PostgreSQL becomes AUDIT_UNAVAILABLE (named by its
    class only: driver messages may quote data)."""
    try:
        yield
    except DatapunkError:
        raise
    except (psycopg.Error, PoolTimeout, OSError, TimeoutError) as exc:
        raise audit_unavailable(
            f"the audit trail cannot {doing} now ({type(exc).__name__}); retry later"
        ) from exc


def _row_to_record(row: Sequence[Any]) -> RecordedEvent:
    event = AuditEvent(
        tenant=row[0],
        time=row[2],
        principal=row[3],
        principal_kind=row[4],
        credential_id=row[5],
        action=row[6],
        method=row[7],
        resource=row[8],
        outcome=Outcome(row[9]),
        reason=row[10],
        client_address=row[11],
        request_id=row[12],
    )
    return RecordedEvent(event, int(row[1]), bytes(row[13]), bytes(row[14]))


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _where(query: AuditQuery) -> tuple[list[sql.Composable], dict[str, Any]]:
    conditions: list[sql.Composable] = [sql.SQL("tenant = %(tenant)s")]
    params: dict[str, Any] = {"tenant": query.tenant}
    if query.principal:
        conditions.append(sql.SQL("principal = %(principal)s"))
        params["principal"] = query.principal
    if query.action:
        conditions.append(sql.SQL("action = %(action)s"))
        params["action"] = query.action
    if query.resource_prefix:
        conditions.append(sql.SQL("resource LIKE %(resource)s"))
        params["resource"] = _like_prefix(query.resource_prefix)
    if query.outcome is not None:
        conditions.append(sql.SQL("outcome = %(outcome)s"))
        params["outcome"] = str(query.outcome)
    if query.start_time is not None:
        conditions.append(sql.SQL("time >= %(start_time)s"))
        params["start_time"] = query.start_time
    if query.end_time is not None:
        conditions.append(sql.SQL("time < %(end_time)s"))
        params["end_time"] = query.end_time
    return conditions, params


def _fingerprint(query: AuditQuery, order: Order) -> str:
    parts = [
        query.tenant,
        query.principal,
        query.action,
        query.resource_prefix,
        query.outcome and str(query.outcome),
        query.start_time and query.start_time.isoformat(),
        query.end_time and query.end_time.isoformat(),
        order.value,
    ]
    text = json.dumps(parts, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _encode_token(fingerprint: str, sequence: int) -> str:
    return encode_page_token(f"{fingerprint}:{sequence}")


def _decode_token(token: str, fingerprint: str) -> int | None:
    if not token:
        return None
    try:
        text = decode_page_token(token)
        found, _, position = text.partition(":")
        sequence = int(position)
    except ValueError:
        sequence, found = -1, ""
    if sequence < 0 or not found:
        raise invalid_page_token(
            "invalid page_token: not a token this service issued",
            "not a token this service issued",
        )
    if found != fingerprint:
        raise invalid_page_token(
            "invalid page_token: it belongs to another search; repeat the search's filter, "
            "order and trail",
            "the token belongs to another search",
        )
    return sequence


@dataclass(frozen=True, slots=True)
class SearchPage:
    records: list[RecordedEvent]
    next_page_token: str


class AuditStore:
    """Reads the trail through ``pool`` (autocommit connections: ``open_audit_pool``)."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        hasher: ChainHasher,
        *,
        pool_timeout: float = 2.0,
        max_page_size: int = 1000,
        export_page_size: int = 500,
    ) -> None:
        self.pool = pool
        self.hasher = hasher
        self._pool_timeout = pool_timeout
        self._max_page_size = max_page_size
        self._export_page_size = export_page_size

    # --- searching and exporting --------------------------------------------------------

    async def _page(
        self, query: AuditQuery, order: Order, limit: int, after: int | None
    ) -> list[RecordedEvent]:
        conditions, params = _where(query)
        newest = order is Order.NEWEST_FIRST
        if after is not None:
            conditions.append(sql.SQL("seq < %(after)s" if newest else "seq > %(after)s"))
            params["after"] = after
        params["limit"] = limit
        statement = sql.SQL(
            "SELECT {columns} FROM nexus.audit_events WHERE {where} ORDER BY seq {direction} "
            "LIMIT %(limit)s"
        ).format(
            columns=sql.SQL(_COLUMNS),
            where=sql.SQL(" AND ").join(conditions),
            direction=sql.SQL("DESC" if newest else "ASC"),
        )
        with _engine_errors("be searched"):
            async with self.pool.connection(timeout=self._pool_timeout) as conn:
                cursor = await conn.execute(statement, params)
                return [_row_to_record(row) for row in await cursor.fetchall()]

    async def search(
        self, query: AuditQuery, order: Order, page_size: int, page_token: str
    ) -> SearchPage:
        """One page of the records matching ``query``; ``page_size`` 0 means 100."""
        fingerprint = _fingerprint(query, order)
        after = _decode_token(page_token, fingerprint)
        limit = min(page_size or 100, self._max_page_size)
        records = await self._page(query, order, limit + 1, after)
        if len(records) <= limit:
            return SearchPage(records, "")
        records = records[:limit]
        return SearchPage(records, _encode_token(fingerprint, records[-1].sequence))

    async def export(self, query: AuditQuery, order: Order) -> AsyncIterator[RecordedEvent]:
        """Every record matching ``query``, a page at a time: the next page is read only
        once the consumer has taken the records of the previous one."""
        after: int | None = None
        while True:
            records = await self._page(query, order, self._export_page_size, after)
            for record in records:
                yield record
            if len(records) < self._export_page_size:
                return
            after = records[-1].sequence

    # --- verifying and retention --------------------------------------------------------

    async def verify(
        self, tenant: str, from_sequence: int = 0, to_sequence: int = 0
    ) -> ChainVerdict:
        """Walk ``tenant``'s chain from ``from_sequence`` (0: its start) to
        ``to_sequence`` (0: its end, the head included) in one consistent snapshot."""
        with _engine_errors("be read"):
            async with (
                self.pool.connection(timeout=self._pool_timeout) as conn,
                conn.transaction(),
            ):
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                return await self._verify(conn, tenant, from_sequence, to_sequence)

    async def _verify(
        self,
        conn: psycopg.AsyncConnection[Any],
        tenant: str,
        from_sequence: int,
        to_sequence: int,
    ) -> ChainVerdict:
        checkpoint = await self._latest_checkpoint(conn, tenant)
        head = await self._head(conn, tenant)
        start_of_chain = checkpoint.sequence + 1 if checkpoint is not None else 1
        first = max(from_sequence, start_of_chain)
        if first == start_of_chain:
            prev_hash = checkpoint.hash if checkpoint is not None else GENESIS_HASH
            from_checkpoint = checkpoint
        else:
            before = await self._record_hash(conn, tenant, first - 1)
            if before is None:
                return ChainVerdict(
                    checked=0,
                    first_sequence=0,
                    last_sequence=0,
                    checkpoint_sequence=0,
                    broken_sequence=first - 1,
                    problem=Problem.MISSING,
                    description=f"record {first - 1}, which record {first} links to, is missing",
                )
            prev_hash, from_checkpoint = before, None
        to_end = to_sequence == 0 or (head is not None and to_sequence >= head.sequence)
        return await verify_chain(
            self.hasher,
            self._chain(conn, tenant, first, None if to_end else to_sequence + 1),
            first_sequence=first,
            prev_hash=prev_hash,
            checkpoint=from_checkpoint,
            last_sequence=None if to_end else to_sequence,
            check_end=to_end,
            head=head,
        )

    async def _chain(
        self,
        conn: psycopg.AsyncConnection[Any],
        tenant: str,
        first: int,
        last: int | None,
    ) -> AsyncIterator[RecordedEvent]:
        """The records of a chain in order, through a server-side cursor."""
        params: dict[str, Any] = {"tenant": tenant, "first": first, "last": last}
        async with conn.cursor(name="audit_chain") as cursor:
            cursor.itersize = 2000
            await cursor.execute(
                f"SELECT {_COLUMNS} FROM nexus.audit_events WHERE tenant = %(tenant)s "
                "AND seq >= %(first)s AND (%(last)s::bigint IS NULL OR seq <= %(last)s) "
                "ORDER BY seq",
                params,
            )
            async for row in cursor:
                yield _row_to_record(row)

    async def _head(self, conn: psycopg.AsyncConnection[Any], tenant: str) -> Head | None:
        cursor = await conn.execute(
            "SELECT seq, hash, seal FROM nexus.audit_chain_heads WHERE tenant = %s", (tenant,)
        )
        row = await cursor.fetchone()
        return None if row is None else Head(tenant, int(row[0]), bytes(row[1]), bytes(row[2]))

    async def _latest_checkpoint(
        self, conn: psycopg.AsyncConnection[Any], tenant: str
    ) -> Checkpoint | None:
        cursor = await conn.execute(
            "SELECT seq, hash, created_at, seal FROM nexus.audit_checkpoints "
            "WHERE tenant = %s ORDER BY seq DESC LIMIT 1",
            (tenant,),
        )
        row = await cursor.fetchone()
        if row is None:
            return None
        return Checkpoint(tenant, int(row[0]), bytes(row[1]), row[2], bytes(row[3]))

    async def _record_hash(
        self, conn: psycopg.AsyncConnection[Any], tenant: str, sequence: int
    ) -> bytes | None:
        cursor = await conn.execute(
            "SELECT hash FROM nexus.audit_events WHERE tenant = %s AND seq = %s",
            (tenant, sequence),
        )
        row = await cursor.fetchone()
        return None if row is None else bytes(row[0])

    async def prune(self, tenant: str, through_sequence: int) -> Checkpoint:
        """Remove ``tenant``'s records up to ``through_sequence`` behind a checkpoint, in
        one transaction: the records removed are verified first (a broken chain is never
        vouched for: FailedPrecondition, reason AUDIT_CHAIN_BROKEN), then the checkpoint
        keeps the last removed record's hash for the next record to link to."""
        if through_sequence < 1:
            raise InvalidArgument("through_sequence must be at least 1")
        with _engine_errors("be pruned"):
            async with (
                self.pool.connection(timeout=self._pool_timeout) as conn,
                conn.transaction(),
            ):
                # One prune per chain at a time; writers are not held up.
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                    ("datapunk.audit.prune:" + tenant,),
                )
                return await self._prune(conn, tenant, through_sequence)

    async def _prune(
        self, conn: psycopg.AsyncConnection[Any], tenant: str, through: int
    ) -> Checkpoint:
        checkpoint = await self._latest_checkpoint(conn, tenant)
        if checkpoint is not None and through <= checkpoint.sequence:
            return checkpoint
        head = await self._head(conn, tenant)
        if head is None or through > head.sequence:
            raise FailedPrecondition(
                f"the trail has no record {through} yet",
                reason="AUDIT_RECORD_NOT_FOUND",
                metadata={"sequence": str(through)},
            )
        start = checkpoint.sequence + 1 if checkpoint is not None else 1
        verdict = await verify_chain(
            self.hasher,
            self._chain(conn, tenant, start, through + 1),
            first_sequence=start,
            prev_hash=checkpoint.hash if checkpoint is not None else GENESIS_HASH,
            checkpoint=checkpoint,
            last_sequence=through,
        )
        if not verdict.ok or verdict.last_sequence != through:
            raise FailedPrecondition(
                f"the records to remove do not form an intact chain: {verdict.description}",
                reason="AUDIT_CHAIN_BROKEN",
                metadata={"broken_sequence": str(verdict.broken_sequence)},
            )
        last_hash = await self._record_hash(conn, tenant, through)
        assert last_hash is not None  # just verified
        created_at = datetime.now(UTC)
        seal = self.hasher.checkpoint_seal(tenant, through, last_hash, created_at)
        await conn.execute(
            "INSERT INTO nexus.audit_checkpoints (tenant, seq, hash, created_at, seal) "
            "VALUES (%s, %s, %s, %s, %s)",
            (tenant, through, last_hash, created_at, seal),
        )
        await conn.execute(
            "DELETE FROM nexus.audit_events WHERE tenant = %s AND seq <= %s", (tenant, through)
        )
        return Checkpoint(tenant, through, last_hash, created_at, seal)
