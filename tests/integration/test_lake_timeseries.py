"""The Lake's TimeSeriesService against the real QuestDB: a real ``datapunk-lake`` process,
real gRPC calls, exact statuses and details, and checks made straight in QuestDB over PG
wire. QuestDB's addresses come from ``load_settings()`` (``engines.questdb``).

Rows become visible to queries once QuestDB applied its write-ahead log (usually within
milliseconds of the acknowledgement), so reads after writes poll until the rows show."""

from __future__ import annotations

import asyncio
import math
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from datapunk.lake.v1 import timeseries_pb2 as pb
from datapunk.lake.v1 import timeseries_pb2_grpc
from datapunk_shared.config import Settings, load_settings
from datapunk_shared.errors import (
    AlreadyExists,
    DatapunkError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from datapunk_shared.rpc.client import error_from_rpc_error
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2

from tests.auth_support import authed_channel, authed_sync_channel, tenant_caller
from tests.support import CONNECTION_LOST_CODES, RunningService, free_port, run_service, wait_until

Stub = Any  # the generated stubs are untyped
MAX_ROWS = 5000
T0 = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z in microseconds
SECOND = 1_000_000


@pytest.fixture(scope="module")
def ts_settings() -> Settings:
    return load_settings()


def _lake_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {
        "DATAPUNK_ENGINES__QUESTDB__HTTP_URL": settings.engines.questdb.http_url,
        "DATAPUNK_ENGINES__QUESTDB__PG_URL": settings.engines.questdb.pg_url,
        "DATAPUNK_ENGINES__POSTGRES__URL": settings.engines.postgres.url,
        "DATAPUNK_LAKE__TIMESERIES__MAX_ROWS_PER_WRITE": str(MAX_ROWS),
        "DATAPUNK_LAKE__TIMESERIES__MAX_PAGE_SIZE": "500",
    }
    env.update(extra)
    return env


def _channel(address: str) -> grpc.aio.Channel:
    """A channel to the Lake whose calls arrive as Nexus forwards those of a client of the
    tenant ``default`` (whose objects keep their plain engine names)."""
    return authed_channel(address, "lake", on_behalf=tenant_caller("default"))


def _sync_channel(address: str) -> grpc.Channel:
    """``_channel`` for synchronous code."""
    return authed_sync_channel(address, "lake", on_behalf=tenant_caller("default"))


@pytest.fixture(scope="module")
def lake(
    tmp_path_factory: pytest.TempPathFactory, ts_settings: Settings
) -> Iterator[RunningService]:
    with run_service("lake", tmp_path_factory.mktemp("lake"), _lake_env(ts_settings)) as service:
        yield service


@pytest.fixture
async def stub(lake: RunningService) -> AsyncIterator[Stub]:
    async with _channel(lake.address) as channel:
        yield timeseries_pb2_grpc.TimeSeriesServiceStub(channel)


@pytest.fixture
def qdb(ts_settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(ts_settings.engines.questdb.pg_url, autocommit=True) as conn:
        yield conn


def _name() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


async def _fails(call: Any) -> DatapunkError:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return error_from_rpc_error(exc)
    raise AssertionError("the call succeeded")


def _cpu_series(dedup: bool = True) -> pb.Series:
    return pb.Series(
        tags=["host", "region"],
        fields=[
            pb.FieldSchema(name="usage", type=pb.FIELD_TYPE_DOUBLE),
            pb.FieldSchema(name="count", type=pb.FIELD_TYPE_LONG),
            pb.FieldSchema(name="ok", type=pb.FIELD_TYPE_BOOLEAN),
            pb.FieldSchema(name="note", type=pb.FIELD_TYPE_VARCHAR),
            pb.FieldSchema(name="seen", type=pb.FIELD_TYPE_TIMESTAMP),
        ],
        partitioning=pb.PARTITIONING_DAY,
        ttl=pb.Ttl(value=3650, unit=pb.TTL_UNIT_DAYS),
        dedup_keys=["host"] if dedup else [],
    )


async def _create(stub: Stub, series: pb.Series | None = None) -> str:
    series_id = _name()
    await stub.CreateSeries(
        pb.CreateSeriesRequest(series_id=series_id, series=series or _cpu_series())
    )
    return series_id


def _rows(
    stamps: Sequence[int],
    hosts: Sequence[str],
    usage: Sequence[float],
    *,
    region: str = "eu",
    extra: Sequence[pb.ColumnData] = (),
) -> pb.RowBatch:
    dictionary = sorted(set(hosts))
    return pb.RowBatch(
        columns=[
            pb.ColumnData(name="ts", timestamps=pb.TimestampValues(values=stamps)),
            pb.ColumnData(
                name="host",
                dictionary=pb.DictionaryValues(
                    dictionary=dictionary, indexes=[dictionary.index(h) for h in hosts]
                ),
            ),
            pb.ColumnData(name="region", strings=pb.StringValues(values=[region] * len(stamps))),
            pb.ColumnData(name="usage", doubles=pb.DoubleValues(values=usage)),
            *extra,
        ]
    )


def _columns(batch: pb.RowBatch) -> dict[str, list[Any]]:
    """A response batch as {name: values}, nulls as None."""
    out: dict[str, list[Any]] = {}
    for column in batch.columns:
        kind = column.WhichOneof("values")
        values: list[Any] = list(getattr(column, kind).values) if kind else []
        for row in column.null_rows:
            values[row] = None
        out[column.name] = values
    return out


def _count(qdb: psycopg.Connection[Any], series_id: str) -> int:
    row = qdb.execute(f'SELECT count() FROM "{series_id}"').fetchone()
    assert row is not None
    return int(row[0])


def _wait_rows(qdb: psycopg.Connection[Any], series_id: str, expected: int) -> None:
    wait_until(lambda: _count(qdb, series_id) >= expected, timeout=30, interval=0.05)
    assert _count(qdb, series_id) == expected


# --- series --------------------------------------------------------------------------


async def test_series_lifecycle(stub: Stub) -> None:
    series_id = _name()
    created = (
        await stub.CreateSeries(pb.CreateSeriesRequest(series_id=series_id, series=_cpu_series()))
    ).series
    assert created.name == f"series/{series_id}"
    assert created.timestamp_column == "ts"
    assert list(created.tags) == ["host", "region"]
    assert [(f.name, f.type) for f in created.fields] == [
        ("usage", pb.FIELD_TYPE_DOUBLE),
        ("count", pb.FIELD_TYPE_LONG),
        ("ok", pb.FIELD_TYPE_BOOLEAN),
        ("note", pb.FIELD_TYPE_VARCHAR),
        ("seen", pb.FIELD_TYPE_TIMESTAMP),
    ]
    assert created.partitioning == pb.PARTITIONING_DAY
    assert (created.ttl.value, created.ttl.unit) == (3650, pb.TTL_UNIT_DAYS)
    assert list(created.dedup_keys) == ["host"]

    got = (await stub.GetSeries(pb.GetSeriesRequest(name=created.name))).series
    assert got == created

    error = await _fails(
        stub.CreateSeries(pb.CreateSeriesRequest(series_id=series_id, series=_cpu_series()))
    )
    assert isinstance(error, AlreadyExists)
    assert error.reason == "SERIES_ALREADY_EXISTS"

    updated = (
        await stub.UpdateSeries(
            pb.UpdateSeriesRequest(
                series=pb.Series(
                    name=created.name,
                    ttl=pb.Ttl(value=2, unit=pb.TTL_UNIT_YEARS),
                    dedup_keys=["host", "region"],
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["ttl", "dedup_keys"]),
            )
        )
    ).series
    assert (updated.ttl.value, updated.ttl.unit) == (2, pb.TTL_UNIT_YEARS)
    assert sorted(updated.dedup_keys) == ["host", "region"]

    error = await _fails(
        stub.UpdateSeries(
            pb.UpdateSeriesRequest(
                series=pb.Series(name=created.name),
                update_mask=field_mask_pb2.FieldMask(paths=["tags"]),
            )
        )
    )
    assert isinstance(error, InvalidArgument)
    assert error.violations[0].field == "update_mask.paths[0]"

    await stub.DeleteSeries(pb.DeleteSeriesRequest(name=created.name))
    error = await _fails(stub.GetSeries(pb.GetSeriesRequest(name=created.name)))
    assert isinstance(error, NotFound)
    assert error.reason == "SERIES_NOT_FOUND"
    assert error.metadata == {"series": series_id}
    error = await _fails(stub.DeleteSeries(pb.DeleteSeriesRequest(name=created.name)))
    assert isinstance(error, NotFound)


async def test_list_series_paginates(stub: Stub) -> None:
    ids = sorted([await _create(stub) for _ in range(3)])
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListSeries(pb.ListSeriesRequest(page_size=2, page_token=token))
        assert len(page.series) <= 2
        seen += [s.name.removeprefix("series/") for s in page.series]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(seen)
    assert set(ids) <= set(seen)


async def test_invalid_schema_is_refused(stub: Stub) -> None:
    bad = _cpu_series()
    bad.dedup_keys[:] = ["nope"]
    error = await _fails(stub.CreateSeries(pb.CreateSeriesRequest(series_id=_name(), series=bad)))
    assert isinstance(error, InvalidArgument)
    assert error.violations[0].field == "series.dedup_keys[0]"
    assert error.violations[0].reason == "UNKNOWN_COLUMN"

    bad = _cpu_series()
    bad.fields.add(name="host", type=pb.FIELD_TYPE_DOUBLE)
    error = await _fails(stub.CreateSeries(pb.CreateSeriesRequest(series_id=_name(), series=bad)))
    assert isinstance(error, InvalidArgument)
    assert error.violations[0].reason == "DUPLICATE_COLUMN"

    bad = _cpu_series()
    bad.partitioning = pb.PARTITIONING_DAY
    bad.ttl.CopyFrom(pb.Ttl(value=3, unit=pb.TTL_UNIT_HOURS))
    error = await _fails(stub.CreateSeries(pb.CreateSeriesRequest(series_id=_name(), series=bad)))
    assert isinstance(error, InvalidArgument)
    assert error.reason == "ENGINE_REJECTED"
    assert "TTL" in error.message

    error = await _fails(
        stub.CreateSeries(pb.CreateSeriesRequest(series_id="Bad-Name", series=_cpu_series()))
    )
    assert isinstance(error, InvalidArgument)
    assert error.reason == "CONTRACT_VIOLATION"
    assert error.violations[0].field == "series_id"


# --- writes and raw reads ------------------------------------------------------------


async def test_write_then_read_pages_in_time_order(
    stub: Stub, qdb: psycopg.Connection[Any]
) -> None:
    series_id = await _create(stub)
    hosts = ["a", "b", "c"]
    stamps = [T0 + (i // 3) * SECOND for i in range(30)]  # three rows per timestamp
    names = [hosts[i % 3] for i in range(30)]
    usage = [float(i) for i in range(30)]
    extra = [
        pb.ColumnData(name="count", longs=pb.LongValues(values=list(range(30))), null_rows=[1]),
        pb.ColumnData(name="ok", bools=pb.BoolValues(values=[i % 2 == 0 for i in range(30)])),
        pb.ColumnData(name="note", strings=pb.StringValues(values=[f"n'{i}" for i in range(30)])),
        pb.ColumnData(name="seen", timestamps=pb.TimestampValues(values=[T0] * 30), null_rows=[2]),
    ]
    written = await stub.WriteRows(
        pb.WriteRowsRequest(
            series=f"series/{series_id}", rows=_rows(stamps, names, usage, extra=extra)
        )
    )
    assert written.row_count == 30
    _wait_rows(qdb, series_id, 30)

    # Pages of 4 cut through timestamps shared by three rows; the tokens stay exact.
    got: dict[str, list[Any]] = {}
    token = ""
    pages = 0
    while True:
        page = await stub.ReadRows(
            pb.ReadRowsRequest(series=f"series/{series_id}", page_size=4, page_token=token)
        )
        pages += 1
        for name, values in _columns(page.rows).items():
            got.setdefault(name, []).extend(values)
        token = page.next_page_token
        if not token:
            break
    assert pages == 8
    assert got["ts"] == stamps
    assert sorted(zip(got["ts"], got["host"], strict=True)) == sorted(
        zip(stamps, names, strict=True)
    )
    assert sorted(got["usage"]) == usage
    by_usage = {u: i for i, u in enumerate(got["usage"])}
    assert got["count"][by_usage[1.0]] is None
    assert got["count"][by_usage[5.0]] == 5
    assert got["note"][by_usage[7.0]] == "n'7"
    assert got["seen"][by_usage[2.0]] is None
    assert got["seen"][by_usage[3.0]] == T0
    assert got["ok"][by_usage[4.0]] is True
    assert set(got["region"]) == {"eu"}

    # A time range, a subset of columns, a tag filter and a field filter.
    page = await stub.ReadRows(
        pb.ReadRowsRequest(
            series=f"series/{series_id}",
            start_time=timestamp_pb2.Timestamp(seconds=T0 // SECOND + 2),
            end_time=timestamp_pb2.Timestamp(seconds=T0 // SECOND + 6),
            columns=["host", "usage"],
            tag_filters=[pb.TagFilter(tag="host", values=["a", "b"])],
            field_filters=[
                pb.FieldFilter(
                    field="usage", comparison=pb.COMPARISON_GREATER_OR_EQUAL, double_value=9.0
                )
            ],
        )
    )
    rows = _columns(page.rows)
    assert list(rows) == ["ts", "host", "usage"]
    assert sorted(rows["usage"]) == [9.0, 10.0, 12.0, 13.0, 15.0, 16.0]
    assert page.next_page_token == ""

    # A token is bound to its request.
    first = await stub.ReadRows(pb.ReadRowsRequest(series=f"series/{series_id}", page_size=4))
    error = await _fails(
        stub.ReadRows(
            pb.ReadRowsRequest(
                series=f"series/{series_id}", columns=["usage"], page_token=first.next_page_token
            )
        )
    )
    assert isinstance(error, InvalidArgument)
    assert error.reason == "INVALID_PAGE_TOKEN"
    error = await _fails(
        stub.ReadRows(pb.ReadRowsRequest(series=f"series/{series_id}", page_size=501))
    )
    assert isinstance(error, InvalidArgument)
    assert error.reason == "PAGE_SIZE_TOO_LARGE"


async def test_a_retried_batch_does_not_duplicate_rows(
    stub: Stub, qdb: psycopg.Connection[Any]
) -> None:
    series_id = await _create(stub)
    request = pb.WriteRowsRequest(
        series=f"series/{series_id}",
        rows=_rows([T0, T0, T0 + SECOND], ["a", "b", "a"], [1.0, 2.0, 3.0]),
    )
    await stub.WriteRows(request)
    await stub.WriteRows(request)
    request.rows.columns[3].doubles.values[0] = 9.0  # same key: the row is replaced
    await stub.WriteRows(request)
    _wait_rows(qdb, series_id, 3)
    wait_until(
        lambda: (
            qdb.execute(
                f'SELECT usage FROM "{series_id}" WHERE host = %s AND ts = %s::timestamp', ("a", T0)
            ).fetchone()
            == (9.0,)
        ),
        timeout=30,
    )


async def test_stream_write_acknowledges_each_batch_in_order(
    stub: Stub, qdb: psycopg.Connection[Any]
) -> None:
    series_id = await _create(stub)

    async def requests() -> AsyncIterator[pb.StreamWriteRowsRequest]:
        for b in range(10):
            stamps = [T0 + (b * 100 + i) * SECOND for i in range(100)]
            yield pb.StreamWriteRowsRequest(
                series=f"series/{series_id}", rows=_rows(stamps, ["h"] * 100, [1.0] * 100)
            )

    acks = [ack async for ack in stub.StreamWriteRows(requests())]
    assert [a.batch_index for a in acks] == list(range(10))
    assert [a.row_count for a in acks] == [100] * 10
    assert acks[-1].total_row_count == 1000
    _wait_rows(qdb, series_id, 1000)


async def test_stream_write_acknowledges_each_batch_before_the_next_is_sent(
    stub: Stub, qdb: psycopg.Connection[Any]
) -> None:
    """A client that sends a batch only after the previous one was acknowledged (the
    contract: each batch is answered once QuestDB accepted it) gets every ack without
    sending anything more; the ack arrives after the rows are in QuestDB."""
    series_id = await _create(stub)
    acked = asyncio.Event()

    async def requests() -> AsyncIterator[pb.StreamWriteRowsRequest]:
        for b in range(3):
            stamps = [T0 + (b * 10 + i) * SECOND for i in range(10)]
            yield pb.StreamWriteRowsRequest(
                series=f"series/{series_id}", rows=_rows(stamps, ["h"] * 10, [1.0] * 10)
            )
            await acked.wait()
            acked.clear()

    call = stub.StreamWriteRows(requests(), timeout=60)
    for b in range(3):
        ack = await asyncio.wait_for(call.read(), timeout=10)
        assert (ack.batch_index, ack.row_count, ack.total_row_count) == (b, 10, 10 * (b + 1))
        _wait_rows(qdb, series_id, 10 * (b + 1))
        acked.set()
    assert await call.read() == grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


# --- aggregates, latest, downsampling --------------------------------------------------


async def _hourly_fixture(stub: Stub, qdb: psycopg.Connection[Any]) -> str:
    """Host a: 10 at 00:00, 30 at 00:30, nothing in hour 1, 50 at 02:00; host b: 100 at 00:00."""
    series_id = await _create(stub)
    hour = 3600 * SECOND
    base = (T0 // (24 * hour)) * 24 * hour  # midnight
    await stub.WriteRows(
        pb.WriteRowsRequest(
            series=f"series/{series_id}",
            rows=_rows(
                [base, base + hour // 2, base + 2 * hour, base],
                ["a", "a", "a", "b"],
                [10.0, 30.0, 50.0, 100.0],
            ),
        )
    )
    _wait_rows(qdb, series_id, 4)
    return series_id


def _midnight() -> int:
    day = 24 * 3600 * SECOND
    return (T0 // day) * day


async def test_aggregate_by_interval_with_fill_modes(
    stub: Stub, qdb: psycopg.Connection[Any]
) -> None:
    series_id = await _hourly_fixture(stub, qdb)
    hour = 3600 * SECOND
    base = _midnight()

    def request(fill: pb.Fill, **more: Any) -> pb.AggregateRowsRequest:
        return pb.AggregateRowsRequest(
            series=f"series/{series_id}",
            interval=duration_pb2.Duration(seconds=3600),
            aggregations=[
                pb.Aggregation(function=f, field="usage")
                for f in (
                    pb.AGGREGATE_FUNCTION_AVG,
                    pb.AGGREGATE_FUNCTION_MIN,
                    pb.AGGREGATE_FUNCTION_MAX,
                    pb.AGGREGATE_FUNCTION_SUM,
                    pb.AGGREGATE_FUNCTION_FIRST,
                    pb.AGGREGATE_FUNCTION_LAST,
                )
            ]
            + [pb.Aggregation(function=pb.AGGREGATE_FUNCTION_COUNT)],
            tag_filters=[pb.TagFilter(tag="host", values=["a"])],
            fill=fill,
            **more,
        )

    rows = _columns((await stub.AggregateRows(request(pb.Fill(mode=pb.FILL_MODE_NONE)))).rows)
    assert rows["ts"] == [base, base + 2 * hour]
    assert rows["avg_usage"] == [20.0, 50.0]
    assert rows["min_usage"] == [10.0, 50.0]
    assert rows["max_usage"] == [30.0, 50.0]
    assert rows["sum_usage"] == [40.0, 50.0]
    assert rows["first_usage"] == [10.0, 50.0]
    assert rows["last_usage"] == [30.0, 50.0]
    assert rows["count"] == [2, 1]

    def hour_one(fill: pb.Fill) -> Any:
        return request(fill)

    rows = _columns((await stub.AggregateRows(hour_one(pb.Fill(mode=pb.FILL_MODE_NULL)))).rows)
    assert rows["ts"] == [base, base + hour, base + 2 * hour]
    assert rows["avg_usage"] == [20.0, None, 50.0]
    rows = _columns((await stub.AggregateRows(hour_one(pb.Fill(mode=pb.FILL_MODE_PREVIOUS)))).rows)
    assert rows["avg_usage"] == [20.0, 20.0, 50.0]
    rows = _columns((await stub.AggregateRows(hour_one(pb.Fill(mode=pb.FILL_MODE_LINEAR)))).rows)
    assert rows["avg_usage"] == [20.0, 35.0, 50.0]
    rows = _columns(
        (await stub.AggregateRows(hour_one(pb.Fill(mode=pb.FILL_MODE_VALUE, value=-1.5)))).rows
    )
    assert rows["avg_usage"] == [20.0, -1.5, 50.0]

    grouped = await stub.AggregateRows(
        pb.AggregateRowsRequest(
            series=f"series/{series_id}",
            interval=duration_pb2.Duration(seconds=86400),
            aggregations=[
                pb.Aggregation(function=pb.AGGREGATE_FUNCTION_MAX, field="usage", alias="peak")
            ],
            group_by=["host"],
            page_size=1,
        )
    )
    assert _columns(grouped.rows) == {"ts": [base], "host": ["a"], "peak": [50.0]}
    second = await stub.AggregateRows(
        pb.AggregateRowsRequest(
            series=f"series/{series_id}",
            interval=duration_pb2.Duration(seconds=86400),
            aggregations=[
                pb.Aggregation(function=pb.AGGREGATE_FUNCTION_MAX, field="usage", alias="peak")
            ],
            group_by=["host"],
            page_size=1,
            page_token=grouped.next_page_token,
        )
    )
    assert _columns(second.rows) == {"ts": [base], "host": ["b"], "peak": [100.0]}
    assert second.next_page_token == ""

    error = await _fails(
        stub.AggregateRows(
            pb.AggregateRowsRequest(
                series=f"series/{series_id}",
                interval=duration_pb2.Duration(seconds=60),
                aggregations=[pb.Aggregation(function=pb.AGGREGATE_FUNCTION_AVG, field="note")],
            )
        )
    )
    assert isinstance(error, InvalidArgument)
    assert error.violations[0].field == "aggregations[0].field"
    assert error.reason == "TYPE_MISMATCH"
    error = await _fails(
        stub.AggregateRows(
            pb.AggregateRowsRequest(
                series=f"series/{series_id}",
                interval=duration_pb2.Duration(seconds=60),
                aggregations=[pb.Aggregation(function=pb.AGGREGATE_FUNCTION_AVG, field="usage")],
                group_by=["usage"],
            )
        )
    )
    assert isinstance(error, InvalidArgument)
    assert (error.reason, error.violations[0].field) == ("UNKNOWN_TAG", "group_by[0]")


async def test_latest_value_per_tag_set(stub: Stub, qdb: psycopg.Connection[Any]) -> None:
    series_id = await _hourly_fixture(stub, qdb)
    base = _midnight()
    rows = _columns(
        (
            await stub.ReadLatest(
                pb.ReadLatestRequest(
                    series=f"series/{series_id}", partition_by=["host"], columns=["host", "usage"]
                )
            )
        ).rows
    )
    assert rows == {
        "ts": [base, base + 2 * 3600 * SECOND],
        "host": ["b", "a"],
        "usage": [100.0, 50.0],
    }
    as_of = await stub.ReadLatest(
        pb.ReadLatestRequest(
            series=f"series/{series_id}",
            partition_by=["host"],
            end_time=timestamp_pb2.Timestamp(seconds=(base + 3600 * SECOND) // SECOND),
            tag_filters=[pb.TagFilter(tag="host", values=["a"])],
        )
    )
    assert _columns(as_of.rows)["usage"] == [30.0]


async def test_downsampling_rules(
    stub: Stub, lake: RunningService, qdb: psycopg.Connection[Any]
) -> None:
    series_id = await _hourly_fixture(stub, qdb)
    parent = f"series/{series_id}"
    rule = (
        await stub.CreateDownsamplingRule(
            pb.CreateDownsamplingRuleRequest(
                parent=parent,
                rule_id="hourly",
                rule=pb.DownsamplingRule(
                    interval=duration_pb2.Duration(seconds=3600),
                    aggregations=[
                        pb.Aggregation(function=pb.AGGREGATE_FUNCTION_AVG, field="usage"),
                        pb.Aggregation(function=pb.AGGREGATE_FUNCTION_COUNT),
                    ],
                    group_by=["host"],
                    ttl=pb.Ttl(value=30, unit=pb.TTL_UNIT_DAYS),
                ),
            )
        )
    ).rule
    assert rule.name == f"{parent}/downsamplingRules/hourly"
    assert rule.view_series == f"series/{series_id}__hourly"
    assert rule.interval.seconds == 3600
    assert [(a.function, a.field, a.alias) for a in rule.aggregations] == [
        (pb.AGGREGATE_FUNCTION_AVG, "usage", "avg_usage"),
        (pb.AGGREGATE_FUNCTION_COUNT, "", "count"),
    ]
    assert list(rule.group_by) == ["host"]
    assert (rule.ttl.value, rule.ttl.unit) == (30, pb.TTL_UNIT_DAYS)

    got = (await stub.GetDownsamplingRule(pb.GetDownsamplingRuleRequest(name=rule.name))).rule
    assert got.name == rule.name
    listed = await stub.ListDownsamplingRules(pb.ListDownsamplingRulesRequest(parent=parent))
    assert [r.name for r in listed.rules] == [rule.name]

    # QuestDB keeps the view up to date; read it like a series.
    def view_rows() -> dict[str, list[Any]]:
        try:
            response = timeseries_pb2_grpc.TimeSeriesServiceStub(channel).ReadRows(
                pb.ReadRowsRequest(series=rule.view_series), timeout=5
            )
        except grpc.RpcError:
            return {}
        return _columns(response.rows)

    with _sync_channel(lake.address) as channel:
        wait_until(lambda: len(view_rows().get("ts", [])) == 3, timeout=30, interval=0.2)
        rows = view_rows()
    assert sorted(zip(rows["host"], rows["avg_usage"], strict=True)) == [
        ("a", 20.0),
        ("a", 50.0),
        ("b", 100.0),
    ]
    error = await _fails(
        stub.WriteRows(pb.WriteRowsRequest(series=rule.view_series, rows=_rows([T0], ["a"], [1.0])))
    )
    assert isinstance(error, FailedPrecondition)
    assert error.reason == "SERIES_READ_ONLY"

    await stub.DeleteDownsamplingRule(pb.DeleteDownsamplingRuleRequest(name=rule.name))
    error = await _fails(stub.GetDownsamplingRule(pb.GetDownsamplingRuleRequest(name=rule.name)))
    assert isinstance(error, NotFound)
    assert error.reason == "DOWNSAMPLING_RULE_NOT_FOUND"


# --- bad input -------------------------------------------------------------------------


async def test_bad_writes_get_precise_errors_and_write_nothing(
    stub: Stub, qdb: psycopg.Connection[Any]
) -> None:
    series_id = await _create(stub)
    name = f"series/{series_id}"

    async def bad(rows: pb.RowBatch, series: str = name) -> DatapunkError:
        return await _fails(stub.WriteRows(pb.WriteRowsRequest(series=series, rows=rows)))

    error = await bad(_rows([T0], ["a"], [1.0]), series="series/nope")
    assert isinstance(error, NotFound)
    assert (error.reason, error.metadata) == ("SERIES_NOT_FOUND", {"series": "nope"})

    cases: list[tuple[pb.RowBatch, str, str]] = []
    rows = _rows(
        [T0], ["a"], [1.0], extra=[pb.ColumnData(name="zzz", doubles=pb.DoubleValues(values=[1.0]))]
    )
    cases.append((rows, "rows.columns[4].name", "UNKNOWN_COLUMN"))
    rows = _rows([T0], ["a"], [1.0])
    rows.columns[3].ClearField("doubles")
    rows.columns[3].strings.values.append("12.5")
    cases.append((rows, "rows.columns[3].strings", "TYPE_MISMATCH"))
    cases.append(
        (
            _rows([T0, T0], ["a", "b"], [1.0, math.nan]),
            "rows.columns[3].doubles.values[1]",
            "NON_FINITE_VALUE",
        )
    )
    cases.append(
        (_rows([T0], ["a"], [math.inf]), "rows.columns[3].doubles.values[0]", "NON_FINITE_VALUE")
    )
    cases.append(
        (
            _rows([-SECOND], ["a"], [1.0]),
            "rows.columns[0].timestamps.values[0]",
            "TIMESTAMP_OUT_OF_RANGE",
        )
    )
    far = 7_258_118_400 * SECOND  # 2200-01-01
    cases.append(
        (
            _rows([T0, far], ["a", "a"], [1.0, 1.0]),
            "rows.columns[0].timestamps.values[1]",
            "TIMESTAMP_OUT_OF_RANGE",
        )
    )
    rows = _rows([T0], ["a"], [1.0])
    del rows.columns[0]
    cases.append((rows, "rows.columns", "TIMESTAMP_MISSING"))
    rows = _rows([T0, T0], ["a", "b"], [1.0, 2.0])
    rows.columns[0].null_rows.append(1)
    cases.append((rows, "rows.columns[0].null_rows", "TIMESTAMP_MISSING"))
    rows = _rows([T0, T0], ["a", "b"], [1.0, 2.0])
    rows.columns[3].doubles.values.append(3.0)
    cases.append((rows, "rows.columns[3].doubles.values", "COLUMN_LENGTH_MISMATCH"))
    rows = _rows([T0], ["a"], [1.0])
    rows.columns[1].dictionary.indexes[0] = 7
    cases.append((rows, "rows.columns[1].dictionary.indexes[0]", "DICTIONARY_INDEX_OUT_OF_RANGE"))
    rows = _rows(
        [T0],
        ["a"],
        [1.0],
        extra=[pb.ColumnData(name="ok", bools=pb.BoolValues(values=[True]), null_rows=[0])],
    )
    cases.append((rows, "rows.columns[4].null_rows", "NOT_NULLABLE"))
    big = MAX_ROWS + 1
    cases.append(
        (_rows([T0 + i for i in range(big)], ["a"] * big, [1.0] * big), "rows", "TOO_MANY_ROWS")
    )

    for rows, field, reason in cases:
        error = await bad(rows)
        assert isinstance(error, InvalidArgument), (field, error)
        assert [(v.field, v.reason) for v in error.violations] == [(field, reason)], error.message
        assert error.reason == reason

    # A column the contract refuses (name pattern) never reaches the store.
    error = await bad(
        _rows(
            [T0],
            ["a"],
            [1.0],
            extra=[pb.ColumnData(name="X;", doubles=pb.DoubleValues(values=[1.0]))],
        )
    )
    assert isinstance(error, InvalidArgument)
    assert error.reason == "CONTRACT_VIOLATION"
    assert error.violations[0].field == "rows.columns[4].name"

    # Nothing of any refused batch was written, and the schema is unchanged.
    await stub.WriteRows(pb.WriteRowsRequest(series=name, rows=_rows([T0], ["ok"], [1.0])))
    _wait_rows(qdb, series_id, 1)
    columns = [r[0] for r in qdb.execute(f"SELECT \"column\" FROM table_columns('{series_id}')")]
    assert "zzz" not in columns


async def test_bad_queries_name_the_field(stub: Stub) -> None:
    series_id = await _create(stub)
    name = f"series/{series_id}"
    error = await _fails(stub.ReadRows(pb.ReadRowsRequest(series="series/nope")))
    assert isinstance(error, NotFound)
    assert error.reason == "SERIES_NOT_FOUND"
    checks = [
        (pb.ReadRowsRequest(series=name, columns=["nope"]), "columns[0]", "UNKNOWN_COLUMN"),
        (
            pb.ReadRowsRequest(series=name, tag_filters=[pb.TagFilter(tag="usage", values=["1"])]),
            "tag_filters[0].tag",
            "UNKNOWN_TAG",
        ),
        (
            pb.ReadRowsRequest(
                series=name,
                field_filters=[
                    pb.FieldFilter(field="nope", comparison=pb.COMPARISON_EQUAL, long_value=1)
                ],
            ),
            "field_filters[0].field",
            "UNKNOWN_FIELD",
        ),
        (
            pb.ReadRowsRequest(
                series=name,
                field_filters=[
                    pb.FieldFilter(field="usage", comparison=pb.COMPARISON_EQUAL, string_value="1")
                ],
            ),
            "field_filters[0]",
            "TYPE_MISMATCH",
        ),
    ]
    for request, field, reason in checks:
        error = await _fails(stub.ReadRows(request))
        assert isinstance(error, InvalidArgument)
        assert [(v.field, v.reason) for v in error.violations] == [(field, reason)]


async def test_sql_injection_through_any_field_is_impossible(
    stub: Stub, qdb: psycopg.Connection[Any]
) -> None:
    series_id = await _create(stub)
    name = f"series/{series_id}"
    attack = f"x' OR '1'='1'; DROP TABLE \"{series_id}\"; --"
    # Values are bound: they are stored and matched literally.
    await stub.WriteRows(
        pb.WriteRowsRequest(
            series=name,
            rows=_rows(
                [T0],
                [attack],
                [1.0],
                extra=[pb.ColumnData(name="note", strings=pb.StringValues(values=[attack]))],
            ),
        )
    )
    _wait_rows(qdb, series_id, 1)
    page = await stub.ReadRows(
        pb.ReadRowsRequest(series=name, tag_filters=[pb.TagFilter(tag="host", values=[attack])])
    )
    assert _columns(page.rows)["note"] == [attack]
    for value in ("x' OR '1'='1", "' OR 1=1 --", "a'); DROP TABLE x; --"):
        page = await stub.ReadRows(
            pb.ReadRowsRequest(
                series=name,
                tag_filters=[pb.TagFilter(tag="host", values=[value])],
                field_filters=[
                    pb.FieldFilter(
                        field="note", comparison=pb.COMPARISON_NOT_EQUAL, string_value=value
                    )
                ],
            )
        )
        assert _columns(page.rows)["ts"] == []
    # Names are identifiers by contract: anything else is refused before the store.
    hostile_names = [
        pb.ReadRowsRequest(series=f'series/{series_id}"; DROP TABLE x; --'),
        pb.ReadRowsRequest(series=name, columns=['usage" FROM x; --']),
        pb.ReadRowsRequest(
            series=name, tag_filters=[pb.TagFilter(tag="host = host OR 1", values=["a"])]
        ),
        pb.ReadRowsRequest(
            series=name,
            field_filters=[
                pb.FieldFilter(field="usage)--", comparison=pb.COMPARISON_EQUAL, double_value=1)
            ],
        ),
    ]
    for request in hostile_names:
        error = await _fails(stub.ReadRows(request))
        assert isinstance(error, InvalidArgument)
        assert error.reason == "CONTRACT_VIOLATION"
    error = await _fails(
        stub.AggregateRows(
            pb.AggregateRowsRequest(
                series=name,
                interval=duration_pb2.Duration(seconds=60),
                aggregations=[
                    pb.Aggregation(
                        function=pb.AGGREGATE_FUNCTION_AVG, field="usage", alias='x" FROM y --'
                    )
                ],
            )
        )
    )
    assert isinstance(error, InvalidArgument)
    assert error.violations[0].field == "aggregations[0].alias"
    # The table is intact.
    assert _count(qdb, series_id) == 1


# --- engine down, crash ---------------------------------------------------------------


async def test_questdb_down_is_unavailable_and_nothing_is_acknowledged(
    tmp_path: Path, ts_settings: Settings, stub: Stub, qdb: psycopg.Connection[Any]
) -> None:
    series_id = await _create(stub)
    dead = free_port()
    env = _lake_env(
        ts_settings,
        DATAPUNK_ENGINES__QUESTDB__HTTP_URL=f"http://127.0.0.1:{dead}",
        DATAPUNK_LAKE__TIMESERIES__WRITE_RETRY_TIMEOUT="0.2",
    )
    with run_service("lake", tmp_path, env) as broken:
        async with _channel(broken.address) as channel:
            broken_stub = timeseries_pb2_grpc.TimeSeriesServiceStub(channel)
            error = await _fails(
                broken_stub.WriteRows(
                    pb.WriteRowsRequest(
                        series=f"series/{series_id}", rows=_rows([T0], ["a"], [1.0])
                    )
                )
            )
    assert isinstance(error, Unavailable)
    assert error.reason == "ENGINE_UNAVAILABLE"
    assert error.retry_after is not None
    assert error.retry_after > 0
    assert error.metadata == {"engine": "questdb"}

    env = _lake_env(
        ts_settings,
        DATAPUNK_ENGINES__QUESTDB__PG_URL=f"postgresql://admin:quest@127.0.0.1:{dead}/qdb",
    )
    with run_service("lake", tmp_path, env) as broken:
        async with _channel(broken.address) as channel:
            broken_stub = timeseries_pb2_grpc.TimeSeriesServiceStub(channel)
            error = await _fails(
                broken_stub.WriteRows(
                    pb.WriteRowsRequest(
                        series=f"series/{series_id}", rows=_rows([T0], ["a"], [1.0])
                    )
                )
            )
    assert isinstance(error, Unavailable)
    assert error.reason == "ENGINE_UNAVAILABLE"
    assert error.retry_after is not None
    assert error.retry_after > 0
    assert error.metadata == {"engine": "questdb"}
    time.sleep(0.5)
    assert _count(qdb, series_id) == 0


def test_kill_9_during_a_bulk_load_loses_no_acknowledged_row_and_duplicates_none(
    tmp_path: Path, ts_settings: Settings, qdb: psycopg.Connection[Any]
) -> None:
    series_id = _name()
    batches = 60
    per_batch = 2000
    env = _lake_env(ts_settings)

    def batch(b: int) -> pb.StreamWriteRowsRequest:
        stamps = [T0 + (b * per_batch + i) * SECOND for i in range(per_batch)]
        return pb.StreamWriteRowsRequest(
            series=f"series/{series_id}",
            rows=_rows(stamps, [f"h{i % 7}" for i in range(per_batch)], [float(b)] * per_batch),
        )

    acked: list[int] = []
    with run_service("lake", tmp_path, env) as lake_service:
        with _sync_channel(lake_service.address) as channel:
            sync_stub = timeseries_pb2_grpc.TimeSeriesServiceStub(channel)
            sync_stub.CreateSeries(
                pb.CreateSeriesRequest(series_id=series_id, series=_cpu_series())
            )
            killed = threading.Event()

            def kill_after_some_acks() -> None:
                wait_until(lambda: len(acked) >= 5, timeout=60, interval=0.01)
                lake_service.process.send_signal(signal.SIGKILL)
                killed.set()

            killer = threading.Thread(target=kill_after_some_acks)
            killer.start()

            def consume() -> None:
                for ack in sync_stub.StreamWriteRows(
                    iter(batch(b) for b in range(batches)), timeout=120
                ):
                    acked.append(ack.batch_index)

            with pytest.raises(grpc.RpcError) as caught:
                consume()
            killer.join()
            assert killed.is_set()
            assert caught.value.code() in CONNECTION_LOST_CODES
        lake_service.process.wait(10)
    assert 5 <= len(acked) < batches
    assert acked == list(range(len(acked)))

    # Every acknowledged row is in QuestDB (possibly more: unacknowledged batches may have landed).
    acknowledged_rows = len(acked) * per_batch
    wait_until(lambda: _count(qdb, series_id) >= acknowledged_rows, timeout=30)
    last_acked_ts = T0 + (acknowledged_rows - 1) * SECOND
    row = qdb.execute(
        f'SELECT count() FROM "{series_id}" WHERE ts <= %s::timestamp', (last_acked_ts,)
    ).fetchone()
    assert row == (acknowledged_rows,)

    # The client resends everything that was not acknowledged (and, to be sure, the last
    # acknowledged batch too) through a restarted Lake: no row is written twice.
    with (
        run_service("lake", tmp_path, env) as lake_service,
        _sync_channel(lake_service.address) as channel,
    ):
        sync_stub = timeseries_pb2_grpc.TimeSeriesServiceStub(channel)
        resent = list(
            sync_stub.StreamWriteRows(
                iter(batch(b) for b in range(len(acked) - 1, batches)), timeout=120
            )
        )
        assert len(resent) == batches - len(acked) + 1
    total = batches * per_batch
    wait_until(lambda: _count(qdb, series_id) >= total, timeout=60)
    time.sleep(0.5)
    assert _count(qdb, series_id) == total
    duplicates = qdb.execute(
        f'SELECT * FROM (SELECT ts, host, count() c FROM "{series_id}") WHERE c > 1'
    ).fetchall()
    assert duplicates == []
