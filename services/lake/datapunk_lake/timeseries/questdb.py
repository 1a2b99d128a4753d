"""The QuestDB adapter: ILP over HTTP (the ``questdb`` client, columnar ``dataframe()``
batches) for writes, the PostgreSQL wire protocol (psycopg, bound parameters) for queries,
DDL and QuestDB's catalog (``tables()``, ``table_columns()``, ``materialized_views()``).

One ILP/HTTP request is one QuestDB transaction: a batch is flushed as one request, and
the write returns only after QuestDB answered it with success. Connection failures become
Unavailable (nothing acknowledged), QuestDB's refusals InvalidArgument with its message."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import numpy.typing as npt
import psycopg
from datapunk_shared.config import QuestDBSettings, TimeSeriesStoreSettings
from datapunk_shared.errors import (
    AlreadyExists,
    DatapunkError,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
    engine_unavailable,
)
from datapunk_shared.logging import get_logger
from psycopg.adapt import AdaptersMap
from psycopg.types.numeric import Int8BinaryLoader
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from questdb import QuestDBError, QuestDBErrorCode, Sender

from datapunk_lake.timeseries import sql
from datapunk_lake.timeseries.domain import (
    IDENTIFIER,
    MAX_TIMESTAMP_US,
    MIN_TIMESTAMP_US,
    AggregateFunction,
    Aggregation,
    Column,
    ColumnKind,
    DownsamplingRule,
    FieldSpec,
    FieldType,
    Partitioning,
    RowBatch,
    SeriesInfo,
    SeriesSchema,
    Statement,
    Ttl,
    TtlUnit,
    is_table_name,
)
from datapunk_lake.timeseries.frames import frame_of

__all__ = ["QuestDBEngine", "sender_conf"]

log = get_logger("datapunk.lake.timeseries")

_POOL_WAIT = 3.0
_SYSTEM_TABLES = frozenset({"telemetry", "telemetry_config"})

_TYPES = {
    "DOUBLE": FieldType.DOUBLE,
    "FLOAT": FieldType.DOUBLE,
    "LONG": FieldType.LONG,
    "INT": FieldType.LONG,
    "SHORT": FieldType.LONG,
    "BYTE": FieldType.LONG,
    "BOOLEAN": FieldType.BOOLEAN,
    "VARCHAR": FieldType.VARCHAR,
    "STRING": FieldType.VARCHAR,
    "TIMESTAMP": FieldType.TIMESTAMP,
}
_TTL_UNITS = {
    "HOUR": TtlUnit.HOURS,
    "DAY": TtlUnit.DAYS,
    "WEEK": TtlUnit.WEEKS,
    "MONTH": TtlUnit.MONTHS,
    "YEAR": TtlUnit.YEARS,
}
_FLOAT_OIDS = frozenset({700, 701, 1700})
_INT_OIDS = frozenset({20, 21, 23})
_TIMESTAMP_OIDS = frozenset({1114, 1184})
_BOOL_OID = 16
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z, PostgreSQL's epoch
_NO_ROWS: npt.NDArray[np.uint32] = np.empty(0, dtype=np.uint32)
_NO_ROWS.setflags(write=False)  # shared by every column without nulls

# Query results are fetched in binary format, with timestamps loaded by psycopg's C int8
# loader as integers (microseconds since 2000-01-01) instead of datetime objects, which
# numpy converts to datetime64 at several microseconds a value.
_RESULTS = AdaptersMap(psycopg.adapters)
for _oid in _TIMESTAMP_OIDS:
    _RESULTS.register_loader(_oid, Int8BinaryLoader)

_VIEW_SAMPLE = re.compile(r"SAMPLE BY (\d+)([smhd])")
_VIEW_SELECT = re.compile(r"^SELECT (.*?) FROM ", re.DOTALL)
_VIEW_AGG = re.compile(
    r'^(avg|min|max|sum|count|first|last)\((?:"([a-z0-9_]+)")?\) AS "([a-z0-9_]+)"$'
)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def sender_conf(settings: QuestDBSettings, store: TimeSeriesStoreSettings) -> str:
    """The questdb client configuration string for ILP over HTTP(S)."""
    url = urlsplit(settings.http_url)
    scheme = "https" if url.scheme == "https" else "http"
    host = url.hostname or "127.0.0.1"
    port = url.port or 9000
    parts = [
        f"{scheme}::addr={host}:{port}",
        "auto_flush=off",
        "protocol_version=2",
        f"retry_timeout={int(store.write_retry_timeout * 1000)}",
        f"request_timeout={int(store.request_timeout * 1000)}",
    ]
    if url.username:
        parts.append(f"username={unquote(url.username)}")
        parts.append(f"password={unquote(url.password or '')}")
    return ";".join(parts) + ";"


def _unavailable(what: str, exc: BaseException | str) -> Unavailable:
    return engine_unavailable("questdb", f"QuestDB is unavailable ({what}): {exc}")


def _engine_error(exc: psycopg.Error) -> DatapunkError:
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return _unavailable("PG wire", exc)
    message = str(exc).split("\n", 1)[0]
    if "table does not exist" in message:
        return NotFound(message, reason="SERIES_NOT_FOUND")
    if "already exists" in message:
        return AlreadyExists(message, reason="SERIES_ALREADY_EXISTS")
    return InvalidArgument(
        f"QuestDB refused the request: {message}",
        reason="ENGINE_REJECTED",
        violations=[FieldViolation("", message, "ENGINE_REJECTED")],
        metadata={"engine": "questdb"},
    )


def _stamp(value: int | None) -> int | None:
    """A catalog timestamp (microseconds), None for QuestDB's empty-table sentinels."""
    if value is None or not MIN_TIMESTAMP_US <= value < MAX_TIMESTAMP_US:
        return None
    return int(value)


class QuestDBEngine:
    """The TimeSeriesEngine on QuestDB."""

    def __init__(self, settings: QuestDBSettings, store: TimeSeriesStoreSettings) -> None:
        self._conf = sender_conf(settings, store)
        self._timeout = store.request_timeout
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            settings.pg_url,
            min_size=1,
            max_size=store.pool_max,
            open=False,
            name="lake-timeseries",
            kwargs={"autocommit": True, "connect_timeout": 3, "context": _RESULTS},
            reconnect_timeout=3600,
        )
        self._senders: list[Sender] = []
        self._sender_slots = asyncio.Semaphore(store.ilp_senders)

    async def open(self) -> None:
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._pool.close()
        for sender in self._senders:
            sender.close()
        self._senders.clear()

    # --- PG wire -----------------------------------------------------------------------

    async def _rows(
        self, statement: Statement, *, binary: bool = False, fetch: bool = True
    ) -> tuple[list[tuple[Any, ...]], list[tuple[str, int]]]:
        """Run ``statement`` on a pooled connection: its rows and the name and type oid of
        each column (none with ``fetch`` False). Written out rather than as a context
        manager: this is on the path of every query.

        The connection is taken with ``getconn``/``putconn`` rather than the pool's
        ``connection()``, which also enters the connection itself and so commits on the way
        out: with autocommit there is nothing to commit, but the no-op still takes the
        connection's lock and runs psycopg's wait loop once per query. ``putconn`` checks
        the connection's state as ``connection()`` does (a connection left in a transaction
        or broken is rolled back or replaced)."""
        try:
            conn = await self._pool.getconn(timeout=_POOL_WAIT)
        except PoolTimeout as exc:
            raise _unavailable("no PG-wire connection", exc) from None
        try:
            async with conn.cursor() as cursor:
                await cursor.execute(statement.text, statement.params or None, binary=binary)
                if not fetch:
                    return [], []
                rows = await cursor.fetchall()
                return rows, _columns_of(cursor.pgresult)
        except psycopg.Error as exc:
            raise _engine_error(exc) from None
        finally:
            await self._pool.putconn(conn)

    async def execute(self, statement: Statement) -> None:
        await self._rows(statement, fetch=False)

    async def fetch(self, statement: Statement) -> RowBatch:
        rows, columns = await self._rows(statement, binary=True)
        return _batch_of(rows, columns)

    async def describe(self, series_id: str) -> SeriesInfo | None:
        if not is_table_name(series_id):
            return None
        rows, _ = await self._rows(
            Statement(
                "SELECT table_name, designatedTimestamp, partitionBy, ttlValue, ttlUnit, "
                "table_type, table_row_count, table_min_timestamp::long, table_max_timestamp::long "
                "FROM tables() WHERE table_name = %s",
                (series_id,),
            )
        )
        if not rows:
            return None
        return await self._info(rows[0])

    async def _info(self, row: tuple[Any, ...]) -> SeriesInfo | None:
        name, designated, partition, ttl_value, ttl_unit, kind, count, low, high = row
        if not designated or partition not in Partitioning.__members__:
            return None
        columns, _ = await self._rows(
            Statement(
                'SELECT "column", "type", "upsertKey" FROM table_columns('
                + sql.literal_name(name)
                + ")"
            )
        )
        tags: list[str] = []
        fields: list[FieldSpec] = []
        keys: list[str] = []
        for column, type_name, upsert in columns:
            if column == designated or not IDENTIFIER.fullmatch(column):
                continue
            if type_name == "SYMBOL":
                tags.append(column)
            elif type_name in _TYPES:
                fields.append(FieldSpec(column, _TYPES[type_name]))
            else:
                continue
            if upsert:
                keys.append(column)
        ttl = (
            Ttl(int(ttl_value), _TTL_UNITS[ttl_unit])
            if ttl_value and ttl_unit in _TTL_UNITS
            else None
        )
        schema = SeriesSchema(
            series_id=name,
            timestamp_column=designated,
            tags=tuple(tags),
            fields=tuple(fields),
            partitioning=Partitioning[partition],
            ttl=ttl,
            dedup_keys=tuple(keys),
            read_only=kind != "T",
        )
        return SeriesInfo(schema, int(count or 0), _stamp(low), _stamp(high))

    async def list_series(self, after: str, before: str, limit: int) -> list[SeriesInfo]:
        rows, _ = await self._rows(
            Statement(
                "SELECT table_name, designatedTimestamp, partitionBy, ttlValue, ttlUnit, "
                "table_type, table_row_count, table_min_timestamp::long, table_max_timestamp::long "
                "FROM tables() WHERE table_type = 'T' AND table_name > %s AND table_name < %s "
                "ORDER BY table_name",
                (after, before),
            )
        )
        found: list[SeriesInfo] = []
        for row in rows:
            if not is_table_name(row[0]) or row[0] in _SYSTEM_TABLES:
                continue
            info = await self._info(row)
            if info is not None:
                found.append(info)
                if len(found) >= limit:
                    break
        return found

    async def list_rules(self, series_id: str) -> list[DownsamplingRule]:
        rows, _ = await self._rows(
            Statement(
                "SELECT v.view_name, v.view_sql, v.view_status, v.invalidation_reason, "
                "t.ttlValue, t.ttlUnit FROM materialized_views() v "
                "JOIN tables() t ON t.table_name = v.view_name "
                "WHERE v.base_table_name = %s ORDER BY v.view_name",
                (series_id,),
            )
        )
        rules: list[DownsamplingRule] = []
        prefix = f"{series_id}__"
        for view, text, status, reason, ttl_value, ttl_unit in rows:
            if not view.startswith(prefix):
                continue
            rule = _rule_of(series_id, view[len(prefix) :], text)
            if rule is None:
                continue
            ttl = (
                Ttl(int(ttl_value), _TTL_UNITS[ttl_unit])
                if ttl_value and ttl_unit in _TTL_UNITS
                else None
            )
            shown = f"{status}: {reason}" if reason else str(status or "")
            rules.append(
                DownsamplingRule(
                    rule.series_id,
                    rule.rule_id,
                    rule.interval_seconds,
                    rule.aggregations,
                    rule.group_by,
                    ttl,
                    shown,
                )
            )
        return rules

    # --- ILP/HTTP ----------------------------------------------------------------------

    async def write(self, schema: SeriesSchema, batch: RowBatch) -> None:
        async with self._sender_slots:
            sender = self._senders.pop() if self._senders else None
            try:
                if sender is None:
                    sender = await asyncio.to_thread(self._new_sender)
                await asyncio.to_thread(_flush, sender, schema, batch)
            except QuestDBError as exc:
                if sender is not None:
                    sender.close()
                    sender = None
                raise _ilp_error(exc, schema.series_id) from None
            finally:
                if sender is not None:
                    self._senders.append(sender)

    def _new_sender(self) -> Sender:
        sender = Sender.from_conf(self._conf)
        sender.establish()  # type: ignore[no-untyped-call]
        return sender


def _flush(sender: Sender, schema: SeriesSchema, batch: RowBatch) -> None:
    frame = frame_of(schema, batch)
    buffer = sender.new_buffer()
    buffer.dataframe(frame, table_name=schema.series_id, at=schema.timestamp_column)
    sender.flush(buffer)


def _ilp_error(exc: QuestDBError, series_id: str) -> DatapunkError:
    code = exc.code
    if code in (QuestDBErrorCode.ServerFlushError, QuestDBErrorCode.ServerRejection) and (
        '"code":"invalid"' in str(exc) or "cast error" in str(exc)
    ):
        message = str(exc)
        return InvalidArgument(
            f"QuestDB refused the batch for series {series_id!r}: {message}",
            reason="ENGINE_REJECTED",
            violations=[FieldViolation("rows", message, "ENGINE_REJECTED")],
            metadata={"series": series_id, "engine": "questdb"},
        )
    log.warning("ilp flush failed", series=series_id, code=str(code), error=str(exc))
    return _unavailable("ILP/HTTP", exc)


def _columns_of(result: psycopg.pq.abc.PGresult | None) -> list[tuple[str, int]]:
    """The name and type oid of each column of ``result`` (read straight from libpq's
    result: cheaper than ``cursor.description``'s objects)."""
    if result is None:
        return []
    return [((result.fname(i) or b"").decode(), result.ftype(i)) for i in range(result.nfields)]


def _batch_of(rows: Sequence[tuple[Any, ...]], columns: Sequence[tuple[str, int]]) -> RowBatch:
    """Rows fetched in binary format (``_RESULTS``) as columns. Every column is converted
    by numpy or a C-level builtin; no Python code runs per value unless a column has nulls."""
    transposed: list[Sequence[Any]] = (
        list(zip(*rows, strict=True)) if rows else [() for _ in columns]
    )
    return RowBatch(
        tuple(
            _column_of(name, oid, values)
            for (name, oid), values in zip(columns, transposed, strict=True)
        )
    )


def _null_rows(values: Sequence[Any]) -> npt.NDArray[np.uint32]:
    if None not in values:
        return _NO_ROWS
    return np.array([i for i, v in enumerate(values) if v is None], dtype=np.uint32)


def _integers(values: Sequence[Any]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint32]]:
    """An int64 array of ``values`` with 0 in its null rows, and the null rows."""
    try:
        return np.array(values, dtype=np.int64), _NO_ROWS
    except TypeError:  # a None among them
        nulls = _null_rows(values)
        return np.array([0 if v is None else v for v in values], dtype=np.int64), nulls


def _column_of(name: str, oid: int, values: Sequence[Any]) -> Column:
    if oid in _FLOAT_OIDS:
        # QuestDB sends its null double (NaN) as NULL, which becomes NaN here.
        array = np.array(values, dtype=np.float64)
        missing = np.isnan(array)
        nulls = np.flatnonzero(missing).astype(np.uint32) if missing.any() else _NO_ROWS
        return Column(name, ColumnKind.DOUBLE, array, null_rows=nulls)
    if oid in _INT_OIDS:
        longs, nulls = _integers(values)
        return Column(name, ColumnKind.LONG, longs, null_rows=nulls)
    if oid == _BOOL_OID:
        return Column(name, ColumnKind.BOOL, np.array(values, dtype=bool))
    if oid in _TIMESTAMP_OIDS:
        # Binary timestamps are loaded as integers: microseconds since 2000-01-01.
        micros, nulls = _integers(values)
        micros += _PG_EPOCH_US
        if len(nulls):
            micros[nulls] = 0
        return Column(name, ColumnKind.TIMESTAMP, micros, null_rows=nulls)
    nulls = _null_rows(values)
    strings = [str(v) if v is not None else "" for v in values] if len(nulls) else list(values)
    return Column(name, ColumnKind.STRING, strings, null_rows=nulls)


def _rule_of(series_id: str, rule_id: str, text: str) -> DownsamplingRule | None:
    """A rule read back from the view's SQL, which the Lake wrote in one canonical form."""
    sample = _VIEW_SAMPLE.search(text)
    select = _VIEW_SELECT.search(text)
    if sample is None or select is None:
        return None
    interval = int(sample[1]) * _UNIT_SECONDS[sample[2]]
    parts = [p.strip() for p in select[1].split(", ")]
    group_by: list[str] = []
    aggregations: list[Aggregation] = []
    for part in parts[1:]:
        match = _VIEW_AGG.match(part)
        if match is not None:
            function = AggregateFunction(match[1])
            aggregations.append(Aggregation(function, match[2] or "", match[3]))
        elif part.startswith('"') and part.endswith('"'):
            group_by.append(part.strip('"'))
        else:
            return None
    return DownsamplingRule(series_id, rule_id, interval, tuple(aggregations), tuple(group_by))
