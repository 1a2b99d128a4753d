"""The Lake's TimeSeriesService against raw QuestDB, on data shaped like TSBS "cpu-only".

Data: one row per host every 10 s, ten tags (hostname, region, datacenter, rack, os, arch,
team, service, service_version, service_environment) and ten usage fields (usage_user ..
usage_guest_nice); 1,000,000 rows (100 hosts x 10,000 steps) or 100,000 with --quick.
Both sides write into their own fresh series with the same schema (DEDUP UPSERT KEYS on
ts, hostname), in the same run, rounds alternating which side goes first:

* ingest - **lake**: ``StreamWriteRows`` batches (dictionary-encoded tags, packed doubles,
  built before the clock starts) through ``datapunk-lake`` over loopback gRPC, until the
  last batch is acknowledged; **raw**: the questdb client's ``Sender.dataframe()`` with
  the same batches as DataFrames (categorical tags), each flushed (ILP/HTTP) in turn.
* queries - TSBS single-groupby-1-1-1 (max usage_user per minute, one host, one hour),
  double-groupby-1 (avg usage_user per hour and host, 12 hours), lastpoint (latest row per
  host) and high-cpu-1 (rows of one host with usage_user > 90 in 12 hours). **lake**: the
  RPC; **raw**: the very SQL the Lake runs (built by its own ``sql`` module, same bound
  parameters) over one psycopg connection, all rows fetched and decoded with psycopg's
  default (text) result format; **raw binary** (reported, no bar): the same with binary
  results, the format the Lake asks for. The three sides run with the same random
  parameters, each going first in turn.
* reference (reported, no bar) - the Lake's cheapest call (StatusService/GetStatus from
  its cached health results, no engine) and ``SELECT 1`` on the raw connection: the floor
  under each side's queries, which shows what the gRPC hop costs on the machine right now.

Every Lake call carries what Nexus sends for a client of the tenant ``default`` (its
service token and the client's identity), so the series keep their plain table names for
the raw side.

Bars (issue 3): ingest rows/s lake >= 0.7 x raw; per query kind, lake p50 <= 1.2 x raw p50
+ 1 ms. QuestDB addresses come from the configuration (``engines.questdb``)."""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import psycopg
from datapunk.lake.v1 import status_pb2, status_pb2_grpc, timeseries_pb2_grpc
from datapunk.lake.v1 import timeseries_pb2 as pb
from datapunk_lake.timeseries import sql
from datapunk_lake.timeseries.domain import (
    AggregateFunction,
    AggregateQuery,
    Aggregation,
    Comparison,
    FieldFilter,
    FieldSpec,
    FieldType,
    Fill,
    LatestQuery,
    RangeQuery,
    SeriesSchema,
    Statement,
    TagFilter,
)
from datapunk_lake.timeseries.questdb import sender_conf
from datapunk_shared.config import load_settings
from google.protobuf import duration_pb2, timestamp_pb2
from questdb import Sender

from bench.common import (
    Authed,
    Bar,
    Result,
    main_with_quick,
    running_lake,
    service_metadata,
    summarize_latencies,
    wait_until,
)

__all__ = ["DESCRIPTION", "NAME", "run"]

NAME = "timeseries"
DESCRIPTION = "TSBS cpu-only ingest and queries: Lake TimeSeriesService vs raw QuestDB"

HOSTS = 100
STEP_US = 10_000_000
T0 = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z
BATCH = 50_000
INGEST_BAR = 0.7
LATENCY_FACTOR = 1.2
LATENCY_SLACK_US = 1000.0
TAGS = (
    "hostname",
    "region",
    "datacenter",
    "rack",
    "os",
    "arch",
    "team",
    "service",
    "service_version",
    "service_environment",
)
FIELDS = tuple(
    f"usage_{name}"
    for name in (
        "user",
        "system",
        "idle",
        "nice",
        "iowait",
        "irq",
        "softirq",
        "steal",
        "guest",
        "guest_nice",
    )
)

Stub = Any  # the generated stubs are untyped


def _tag_values(tag: str, host: int) -> str:
    if tag == "hostname":
        return f"host_{host}"
    choices = {
        "region": ["us-east-1", "us-west-1", "eu-central-1", "ap-southeast-2", "sa-east-1"],
        "os": ["Ubuntu16.10", "Ubuntu16.04LTS", "Ubuntu15.10"],
        "arch": ["x64", "x86"],
        "team": ["SF", "NYC", "LON", "CHI"],
        "service_environment": ["production", "staging", "test"],
    }.get(tag)
    if choices is not None:
        return choices[host % len(choices)]
    return f"{tag}_{host % 17}"


class Data:
    """The dataset, by column: timestamps, per-tag dictionary + codes, usage fields."""

    def __init__(self, rows: int, seed: int = 11) -> None:
        rng = np.random.default_rng(seed)
        index = np.arange(rows)
        self.rows = rows
        self.hosts = index % HOSTS
        self.ts = (T0 + (index // HOSTS) * STEP_US).astype(np.int64)
        self.dictionaries: dict[str, list[str]] = {}
        self.codes: dict[str, np.ndarray] = {}
        for tag in TAGS:
            values = [_tag_values(tag, h) for h in range(HOSTS)]
            dictionary = sorted(set(values))
            lookup = np.array([dictionary.index(v) for v in values], dtype=np.uint32)
            self.dictionaries[tag] = dictionary
            self.codes[tag] = lookup[self.hosts]
        self.fields = {f: rng.random(rows) * 100.0 for f in FIELDS}
        self.end_us = int(self.ts[-1]) + STEP_US

    def request(self, series: str, lo: int, hi: int) -> pb.StreamWriteRowsRequest:
        columns = [pb.ColumnData(name="ts", timestamps=pb.TimestampValues(values=self.ts[lo:hi]))]
        for tag in TAGS:
            columns.append(
                pb.ColumnData(
                    name=tag,
                    dictionary=pb.DictionaryValues(
                        dictionary=self.dictionaries[tag], indexes=self.codes[tag][lo:hi]
                    ),
                )
            )
        for name in FIELDS:
            columns.append(
                pb.ColumnData(name=name, doubles=pb.DoubleValues(values=self.fields[name][lo:hi]))
            )
        return pb.StreamWriteRowsRequest(series=series, rows=pb.RowBatch(columns=columns))

    def frame(self, lo: int, hi: int) -> pd.DataFrame:
        data: dict[str, Any] = {}
        for tag in TAGS:
            data[tag] = pd.Categorical.from_codes(
                self.codes[tag][lo:hi].astype(np.int64), categories=self.dictionaries[tag]
            )
        for name in FIELDS:
            data[name] = self.fields[name][lo:hi]
        data["ts"] = self.ts[lo:hi].view("datetime64[us]")
        return pd.DataFrame(data)


def _series() -> pb.Series:
    return pb.Series(
        tags=list(TAGS),
        fields=[pb.FieldSchema(name=f, type=pb.FIELD_TYPE_DOUBLE) for f in FIELDS],
        partitioning=pb.PARTITIONING_DAY,
        dedup_keys=["hostname"],
    )


def _schema(series_id: str) -> SeriesSchema:
    return SeriesSchema(
        series_id=series_id,
        timestamp_column="ts",
        tags=TAGS,
        fields=tuple(FieldSpec(f, FieldType.DOUBLE) for f in FIELDS),
        dedup_keys=("hostname",),
    )


def _lake(
    workdir: Path, http_url: str, pg_url: str, postgres_url: str
) -> AbstractContextManager[str]:
    def probe(channel: grpc.Channel) -> None:
        stub = Authed(
            timeseries_pb2_grpc.TimeSeriesServiceStub(channel),  # type: ignore[no-untyped-call]
            service_metadata(),
        )
        stub.ListSeries(pb.ListSeriesRequest(page_size=1), timeout=2)

    return running_lake(
        workdir,
        {
            "DATAPUNK_ENGINES__QUESTDB__HTTP_URL": http_url,
            "DATAPUNK_ENGINES__QUESTDB__PG_URL": pg_url,
            "DATAPUNK_ENGINES__POSTGRES__URL": postgres_url,
        },
        probe=probe,
        what="the Lake's time-series store",
    )


async def _ingest_lake(stub: Stub, requests: list[pb.StreamWriteRowsRequest]) -> float:
    async def stream() -> AsyncIterator[pb.StreamWriteRowsRequest]:
        for request in requests:
            yield request

    started = time.perf_counter()
    acks = 0
    async for _ack in stub.StreamWriteRows(stream(), timeout=600):
        acks += 1
    elapsed = time.perf_counter() - started
    assert acks == len(requests)
    return elapsed


def _ingest_raw(conf: str, series_id: str, frames: list[pd.DataFrame]) -> float:
    with Sender.from_conf(conf) as sender:
        started = time.perf_counter()
        for frame in frames:
            buffer = sender.new_buffer()
            buffer.dataframe(frame, table_name=series_id, at="ts")
            sender.flush(buffer)
        return time.perf_counter() - started


def _wait_applied(conn: psycopg.Connection[Any], series_id: str, rows: int) -> None:
    def done() -> bool:
        row = conn.execute(f'SELECT count() FROM "{series_id}"').fetchone()
        return row is not None and int(row[0]) >= rows

    wait_until(done, timeout=300, what=f"{series_id} applied")


def _ts(micros: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=micros // 1_000_000, nanos=(micros % 1_000_000) * 1000)


Call = Callable[[], Awaitable[int]]
QueryPair = tuple[Call, Call, Call]
"""The Lake's call, the raw statement with psycopg's default (text) results, the same
statement with binary results (reported, no bar)."""
SIDES = ("lake", "raw", "raw_binary")


REFERENCE = "reference"
"""Not a query: the Lake's cheapest unary call against the cheapest PG-wire statement."""


def _query_kinds(
    sync_stub: Stub,
    status_stub: Stub,
    conn: psycopg.Connection[Any],
    series_id: str,
    data: Data,
    rng: random.Random,
) -> dict[str, Callable[[], QueryPair]]:
    schema = _schema(series_id)
    series = f"series/{series_id}"
    hour = 3600 * 1_000_000

    async def raw(statement: Statement, binary: bool = False) -> int:
        return len(conn.execute(statement.text, statement.params, binary=binary).fetchall())

    def raws(statement: Statement) -> tuple[Call, Call]:
        return lambda: raw(statement), lambda: raw(statement, binary=True)

    def window(length: int) -> int:
        span = max(data.end_us - T0 - length, 1)
        return T0 + (rng.randrange(span) // 60_000_000) * 60_000_000

    def single_groupby() -> QueryPair:
        host = f"host_{rng.randrange(HOSTS)}"
        start = window(hour)
        query = AggregateQuery(
            series_id, start, start + hour, 60,
            (Aggregation(AggregateFunction.MAX, "usage_user", "max_usage_user"),),
            (), (TagFilter("hostname", (host,)),), (), Fill(), 1000,
        )  # fmt: skip
        request = pb.AggregateRowsRequest(
            series=series,
            start_time=_ts(start),
            end_time=_ts(start + hour),
            interval=duration_pb2.Duration(seconds=60),
            aggregations=[pb.Aggregation(function=pb.AGGREGATE_FUNCTION_MAX, field="usage_user")],
            tag_filters=[pb.TagFilter(tag="hostname", values=[host])],
            page_size=1000,
        )

        async def lake() -> int:
            return len(sync_stub.AggregateRows(request).rows.columns[0].timestamps.values)

        return lake, *raws(sql.aggregate(schema, query, 0, 1001))

    def double_groupby() -> QueryPair:
        start = window(12 * hour)
        query = AggregateQuery(
            series_id, start, start + 12 * hour, 3600,
            (Aggregation(AggregateFunction.AVG, "usage_user", "avg_usage_user"),),
            ("hostname",), (), (), Fill(), 10000,
        )  # fmt: skip
        request = pb.AggregateRowsRequest(
            series=series,
            start_time=_ts(start),
            end_time=_ts(start + 12 * hour),
            interval=duration_pb2.Duration(seconds=3600),
            aggregations=[pb.Aggregation(function=pb.AGGREGATE_FUNCTION_AVG, field="usage_user")],
            group_by=["hostname"],
            page_size=10000,
        )

        async def lake() -> int:
            return len(sync_stub.AggregateRows(request).rows.columns[0].timestamps.values)

        return lake, *raws(sql.aggregate(schema, query, 0, 10001))

    def lastpoint() -> QueryPair:
        query = LatestQuery(series_id, ("hostname",), None, (), (), 10000)
        request = pb.ReadLatestRequest(series=series, partition_by=["hostname"], page_size=10000)

        async def lake() -> int:
            return len(sync_stub.ReadLatest(request).rows.columns[0].timestamps.values)

        return lake, *raws(sql.latest(schema, query, 0, 10001))

    def high_cpu() -> QueryPair:
        host = f"host_{rng.randrange(HOSTS)}"
        start = window(12 * hour)
        query = RangeQuery(
            series_id, start, start + 12 * hour, (),
            (TagFilter("hostname", (host,)),),
            (FieldFilter("usage_user", Comparison.GREATER, 90.0),), 10000,
        )  # fmt: skip
        request = pb.ReadRowsRequest(
            series=series,
            start_time=_ts(start),
            end_time=_ts(start + 12 * hour),
            tag_filters=[pb.TagFilter(tag="hostname", values=[host])],
            field_filters=[
                pb.FieldFilter(
                    field="usage_user", comparison=pb.COMPARISON_GREATER, double_value=90.0
                )
            ],
            page_size=10000,
        )

        async def lake() -> int:
            return len(sync_stub.ReadRows(request).rows.columns[0].timestamps.values)

        return lake, *raws(sql.range_page(schema, query, None, 0, 10001))

    def reference() -> QueryPair:
        """The floor under every query: one gRPC call to the Lake answered without an
        engine (StatusService/GetStatus from its cached health results), one ``SELECT 1``
        over the raw PG-wire connection."""

        async def lake() -> int:
            status_stub.GetStatus(status_pb2.GetStatusRequest(refresh=False))
            return 1  # one answer, as SELECT 1 returns one row

        return lake, *raws(Statement("SELECT 1"))

    return {
        REFERENCE: reference,
        "single-groupby-1-1-1": single_groupby,
        "double-groupby-1": double_groupby,
        "lastpoint": lastpoint,
        "high-cpu-1": high_cpu,
    }


async def _run(quick: bool) -> Result:
    settings = load_settings()
    questdb = settings.engines.questdb
    rows = 100_000 if quick else 1_000_000
    rounds = 2
    queries_per_kind = 40 if quick else 100
    data = Data(rows)
    conf = sender_conf(questdb, settings.lake.timeseries)
    ingest: dict[str, list[float]] = {"lake": [], "raw": []}
    latencies: dict[str, dict[str, list[float]]] = {}
    created: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-ts-") as tmp,
        _lake(
            Path(tmp), questdb.http_url, questdb.pg_url, settings.engines.postgres.url
        ) as address,
        psycopg.connect(questdb.pg_url, autocommit=True) as check,
    ):
        async with grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ],
        ) as channel:
            stub = Authed(
                timeseries_pb2_grpc.TimeSeriesServiceStub(channel),  # type: ignore[no-untyped-call]
                service_metadata(),
            )
            try:
                for round_index in range(rounds):
                    order = ("lake", "raw") if round_index % 2 == 0 else ("raw", "lake")
                    for side in order:
                        series_id = f"bench_cpu_{side}_{uuid.uuid4().hex[:8]}"
                        await stub.CreateSeries(
                            pb.CreateSeriesRequest(series_id=series_id, series=_series())
                        )
                        created.append(series_id)
                        spans = [(lo, min(lo + BATCH, rows)) for lo in range(0, rows, BATCH)]
                        if side == "lake":
                            series = f"series/{series_id}"
                            requests = [data.request(series, lo, hi) for lo, hi in spans]
                            elapsed = await _ingest_lake(stub, requests)
                        else:
                            frames = [data.frame(lo, hi) for lo, hi in spans]
                            elapsed = await asyncio.to_thread(_ingest_raw, conf, series_id, frames)
                        ingest[side].append(rows / elapsed)
                        print(f"  ingest {side}: {rows / elapsed:,.0f} rows/s", flush=True)
                        _wait_applied(check, series_id, rows)

                # Queries on the last Lake-written series (both sides read the same table).
                target = next(s for s in reversed(created) if "_lake_" in s)
                rng = random.Random(5)
                # Both sides use blocking clients (grpc's C-core stub, psycopg's sync
                # connection), so neither pays for asyncio on the client side.
                with (
                    psycopg.connect(questdb.pg_url, autocommit=True) as conn,
                    grpc.insecure_channel(address) as sync_channel,
                ):
                    sync_stub = Authed(
                        timeseries_pb2_grpc.TimeSeriesServiceStub(sync_channel),  # type: ignore[no-untyped-call]
                        service_metadata(),
                    )
                    status_stub = Authed(
                        status_pb2_grpc.StatusServiceStub(sync_channel),  # type: ignore[no-untyped-call]
                        service_metadata(),
                    )
                    kinds = _query_kinds(sync_stub, status_stub, conn, target, data, rng)
                    for kind, make in kinds.items():
                        samples: dict[str, list[float]] = {side: [] for side in SIDES}
                        for _ in range(5):  # warm-up
                            for call in make():
                                await call()
                        for index in range(queries_per_kind):
                            # Each side goes first, second and third in turn.
                            shift = index % len(SIDES)
                            calls = list(zip(SIDES, make(), strict=True))
                            calls = calls[shift:] + calls[:shift]
                            counts = {}
                            for side, call in calls:
                                started = time.perf_counter()
                                counts[side] = await call()
                                samples[side].append(time.perf_counter() - started)
                            page = 1000 if kind == "single-groupby-1-1-1" else 10000
                            if (
                                not counts["lake"]
                                == min(counts["raw"], page)
                                == min(counts["raw_binary"], page)
                            ):
                                raise AssertionError(f"{kind}: rows returned {counts}")
                        latencies[kind] = samples
            finally:
                for series_id in created:
                    await stub.DeleteSeries(pb.DeleteSeriesRequest(name=f"series/{series_id}"))

    lake_ingest = statistics.median(ingest["lake"])
    raw_ingest = statistics.median(ingest["raw"])
    ratio = lake_ingest / raw_ingest
    table_rows: list[list[Any]] = [
        ["ingest (rows/s)", lake_ingest, raw_ingest, "-", ratio, "lake/raw >= 0.7"]
    ]
    bars = [Bar("ingest rows/s lake/raw", ratio, INGEST_BAR, ">=")]
    details: dict[str, Any] = {"rows": rows, "batch": BATCH, "hosts": HOSTS, "ingest": ingest}
    for kind, samples in latencies.items():
        lake_stats = summarize_latencies(samples["lake"])
        raw_stats = summarize_latencies(samples["raw"])
        binary_stats = summarize_latencies(samples["raw_binary"])
        details[kind] = {
            "lake": lake_stats,
            "raw": raw_stats,
            "raw_binary": binary_stats,
            "calls": len(samples["lake"]),
        }
        if kind == REFERENCE:
            table_rows.append(
                ["reference p50 (us)", lake_stats["p50_us"], raw_stats["p50_us"],
                 binary_stats["p50_us"], lake_stats["p50_us"] / raw_stats["p50_us"],
                 "none (GetStatus / SELECT 1)"]
            )  # fmt: skip
            continue
        limit = LATENCY_FACTOR * raw_stats["p50_us"] + LATENCY_SLACK_US
        table_rows.append(
            [f"{kind} p50 (us)", lake_stats["p50_us"], raw_stats["p50_us"],
             binary_stats["p50_us"], lake_stats["p50_us"] / raw_stats["p50_us"],
             f"lake <= {limit:,.0f}"]
        )  # fmt: skip
        bars.append(
            Bar(f"{kind} p50 lake (us) <= 1.2 x raw + 1 ms", lake_stats["p50_us"], limit, "<=")
        )
    return Result(
        name=NAME,
        description=DESCRIPTION,
        columns=["measure", "lake", "raw", "raw binary", "lake/raw", "bar"],
        rows=table_rows,
        bars=bars,
        details=details,
        notes=[
            f"{rows:,} rows, batches of {BATCH:,}, {rounds} rounds per side (median shown), "
            "each into a fresh series with DEDUP UPSERT KEYS(ts, hostname)",
            "raw queries run the SQL text and parameters the Lake builds (datapunk_lake."
            "timeseries.sql) over one psycopg connection; the Lake adds gRPC, protovalidate, "
            "name checks and the conversion of rows to columns",
            "the Lake asks QuestDB for binary results; raw uses psycopg's default (text) "
            "results, the bars' peer; raw binary is the same statement with binary results "
            "(reported, no bar)",
            "reference: the Lake's StatusService/GetStatus{refresh: false} (no engine) and "
            "SELECT 1 over the raw connection, the floor under every query of each side",
        ],
    )


def run(quick: bool = False) -> Result:
    """Run the benchmark (``quick``: 100k rows, 40 queries per kind)."""
    return asyncio.run(_run(quick))


def main(argv: list[str] | None = None) -> int:
    return main_with_quick(run, DESCRIPTION, "100k rows, 40 queries per kind", argv)


if __name__ == "__main__":
    sys.exit(main())
