"""Pure logic of the time-series store: SQL building (identifiers checked and quoted,
values bound), row-batch validation against a schema, and page tokens."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from datapunk_lake.timeseries import paging, sql
from datapunk_lake.timeseries.domain import (
    AggregateFunction,
    AggregateQuery,
    Aggregation,
    Column,
    ColumnKind,
    Comparison,
    FieldFilter,
    FieldSpec,
    FieldType,
    Fill,
    FillMode,
    RangeQuery,
    RowBatch,
    SeriesSchema,
    TagFilter,
    Ttl,
    TtlUnit,
)
from datapunk_lake.timeseries.questdb import _batch_of
from datapunk_lake.timeseries.validation import check_batch
from datapunk_shared.errors import FailedPrecondition, InvalidArgument

SCHEMA = SeriesSchema(
    series_id="cpu",
    timestamp_column="ts",
    tags=("host",),
    fields=(FieldSpec("usage", FieldType.DOUBLE), FieldSpec("ok", FieldType.BOOLEAN)),
    ttl=Ttl(7, TtlUnit.DAYS),
    dedup_keys=("host",),
)


def test_create_series_sql() -> None:
    statement = sql.create_series(SCHEMA)
    assert statement.text == (
        'CREATE TABLE "cpu" ("ts" TIMESTAMP, "host" SYMBOL, "usage" DOUBLE, "ok" BOOLEAN) '
        'TIMESTAMP("ts") PARTITION BY DAY TTL 7 DAYS WAL DEDUP UPSERT KEYS("ts", "host")'
    )
    assert statement.params == ()


@pytest.mark.parametrize("name", ['x"; DROP TABLE y; --', "Upper", "1abc", "", "a.b", "a b"])
def test_identifiers_refuse_anything_but_the_pattern(name: str) -> None:
    with pytest.raises(ValueError, match="not an identifier"):
        sql.ident(name)
    with pytest.raises(ValueError, match="not an identifier"):
        sql.literal_name(name)


def test_values_are_bound_never_written_into_the_text() -> None:
    attack = "x' OR '1'='1"
    query = RangeQuery(
        "cpu",
        10,
        20,
        ("usage",),
        (TagFilter("host", (attack, "b")),),
        (FieldFilter("usage", Comparison.GREATER, 90.5),),
        100,
    )
    statement = sql.range_page(SCHEMA, query, None, 0, 101)
    assert attack not in statement.text
    assert "90.5" not in statement.text
    assert statement.text == (
        'SELECT "ts", "usage" FROM "cpu" WHERE "ts" >= %s::timestamp AND "ts" < %s::timestamp '
        'AND "host" IN (%s, %s) AND "usage" > %s ORDER BY "ts" LIMIT %s, %s'
    )
    assert statement.params == (10, 20, attack, "b", 90.5, 0, 101)


def test_aggregate_sql_with_fill() -> None:
    query = AggregateQuery(
        "cpu",
        None,
        None,
        3600,
        (
            Aggregation(AggregateFunction.AVG, "usage", "avg_usage"),
            Aggregation(AggregateFunction.COUNT, "", "count"),
        ),
        ("host",),
        (),
        (),
        Fill(FillMode.VALUE, 2.5),
        10,
    )
    statement = sql.aggregate(SCHEMA, query, 20, 11)
    assert statement.text == (
        'SELECT * FROM (SELECT "ts", "host", avg("usage") AS "avg_usage", count() AS "count" '
        'FROM "cpu" SAMPLE BY 1h FILL(2.5, 2.5) ALIGN TO CALENDAR) ORDER BY "ts", "host" '
        "LIMIT %s, %s"
    )
    assert statement.params == (20, 31)
    # QuestDB cannot parse a list of negative FILL constants: NULL, then a bound coalesce.
    negative = sql.aggregate(
        SCHEMA, dataclasses.replace(query, fill=Fill(FillMode.VALUE, -1.0)), 0, 5
    )
    assert "FILL(NULL, NULL)" in negative.text
    assert 'coalesce("avg_usage", %s)' in negative.text
    assert negative.params == (-1.0, -1.0, 0, 5)


@pytest.mark.parametrize(
    ("seconds", "text"), [(1, "1s"), (90, "90s"), (120, "2m"), (7200, "2h"), (172800, "2d")]
)
def test_interval_text(seconds: int, text: str) -> None:
    assert sql.interval_text(seconds) == text


def _batch(*columns: Column) -> RowBatch:
    return RowBatch(columns)


TS = Column("ts", ColumnKind.TIMESTAMP, np.array([1, 2], dtype=np.int64))
HOST = Column("host", ColumnKind.DICTIONARY, np.array([0, 1], dtype=np.uint32), ("a", "b"))


def _reasons(batch: RowBatch, max_rows: int = 10) -> list[tuple[str, str]]:
    with pytest.raises(InvalidArgument) as caught:
        check_batch(SCHEMA, batch, max_rows=max_rows, prefix="rows")
    return [(v.field, v.reason) for v in caught.value.violations]


def test_a_good_batch_passes() -> None:
    usage = Column(
        "usage",
        ColumnKind.DOUBLE,
        np.array([1.0, np.nan]),
        null_rows=np.array([1], dtype=np.uint32),
    )
    check_batch(SCHEMA, _batch(TS, HOST, usage), max_rows=10, prefix="rows")


def test_every_bad_column_is_named() -> None:
    assert _reasons(
        _batch(
            TS,
            Column("usage", ColumnKind.STRING, ["1", "2"]),
            Column("nope", ColumnKind.DOUBLE, np.array([1.0, 2.0])),
            Column(
                "ok",
                ColumnKind.BOOL,
                np.array([True, False]),
                null_rows=np.array([0], dtype=np.uint32),
            ),
            Column("host", ColumnKind.DICTIONARY, np.array([0, 5], dtype=np.uint32), ("a",)),
        )
    ) == [
        ("rows.columns[1].strings", "TYPE_MISMATCH"),
        ("rows.columns[2].name", "UNKNOWN_COLUMN"),
        ("rows.columns[3].null_rows", "NOT_NULLABLE"),
        ("rows.columns[4].dictionary.indexes[1]", "DICTIONARY_INDEX_OUT_OF_RANGE"),
    ]


def test_nan_timestamps_and_sizes() -> None:
    assert _reasons(_batch(TS, Column("usage", ColumnKind.DOUBLE, np.array([1.0, np.inf])))) == [
        ("rows.columns[1].doubles.values[1]", "NON_FINITE_VALUE")
    ]
    early = Column("ts", ColumnKind.TIMESTAMP, np.array([5, -1], dtype=np.int64))
    assert _reasons(_batch(early)) == [
        ("rows.columns[0].timestamps.values[1]", "TIMESTAMP_OUT_OF_RANGE")
    ]
    assert _reasons(_batch(HOST)) == [("rows.columns", "TIMESTAMP_MISSING")]
    assert _reasons(_batch(TS, HOST), max_rows=1) == [("rows", "TOO_MANY_ROWS")]
    short = Column("usage", ColumnKind.DOUBLE, np.array([1.0]))
    assert _reasons(_batch(TS, short)) == [
        ("rows.columns[1].doubles.values", "COLUMN_LENGTH_MISMATCH")
    ]


def test_views_are_read_only() -> None:
    view = SeriesSchema("v", "ts", (), (), read_only=True)
    with pytest.raises(FailedPrecondition):
        check_batch(view, _batch(TS), max_rows=10, prefix="rows")


def test_page_tokens_are_bound_to_their_query() -> None:
    token = paging.encode_token("range", "abc", ts=5, skip=2)
    assert paging.decode_token(token, "range", "abc") == {"ts": 5, "skip": 2}
    assert paging.decode_token("", "range", "abc") is None
    for bad in (token[:-2], "!!!", paging.encode_token("range", "other", ts=1)):
        with pytest.raises(InvalidArgument) as caught:
            paging.decode_token(bad, "range", "abc")
        assert caught.value.reason == "INVALID_PAGE_TOKEN"
    with pytest.raises(InvalidArgument):
        paging.page_size(2000, 1000)
    assert paging.page_size(0, 500) == 500


def test_binary_results_become_columns_with_their_nulls() -> None:
    """Rows as psycopg loads QuestDB's binary results (timestamps as microseconds since
    2000-01-01, nulls as None) become typed columns with their null rows."""
    pg_epoch = 946_684_800_000_000
    rows = [
        (1_704_067_200_000_000 - pg_epoch, "a", 1.5, 7, True, None),
        (1_704_067_201_000_000 - pg_epoch, None, None, None, False, 5 - pg_epoch),
    ]
    columns = [("ts", 1114), ("host", 1043), ("usage", 701), ("n", 20), ("ok", 16), ("seen", 1114)]
    batch = _batch_of(rows, columns)
    by_name = {c.name: c for c in batch.columns}
    assert [c.kind for c in batch.columns] == [
        ColumnKind.TIMESTAMP, ColumnKind.STRING, ColumnKind.DOUBLE,
        ColumnKind.LONG, ColumnKind.BOOL, ColumnKind.TIMESTAMP,
    ]  # fmt: skip
    assert list(by_name["ts"].values) == [1_704_067_200_000_000, 1_704_067_201_000_000]
    assert list(by_name["ts"].null_rows) == []
    assert by_name["host"].values == ["a", ""]
    assert list(by_name["host"].null_rows) == [1]
    assert list(by_name["usage"].null_rows) == [1]
    assert by_name["usage"].values[0] == 1.5
    assert list(by_name["n"].values) == [7, 0]
    assert list(by_name["n"].null_rows) == [1]
    assert list(by_name["ok"].values) == [True, False]
    assert list(by_name["seen"].values) == [0, 5]
    assert list(by_name["seen"].null_rows) == [0]


def test_an_empty_result_keeps_its_columns() -> None:
    batch = _batch_of([], [("ts", 1114), ("usage", 701)])
    assert [(c.name, c.kind, len(c)) for c in batch.columns] == [
        ("ts", ColumnKind.TIMESTAMP, 0),
        ("usage", ColumnKind.DOUBLE, 0),
    ]
