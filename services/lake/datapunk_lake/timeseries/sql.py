"""QuestDB SQL for the time-series store, built from checked names and bound values.

Every column name goes through :func:`ident`, which refuses anything but the contract's
lower-case identifier pattern and double-quotes it, and every table or view name through
:func:`table`, which also accepts the tenant prefix of a physical name; every value a
client sends (tag values, filter values, time bounds, limits) becomes a ``%s`` parameter
that psycopg binds.
The only things written into the text are the Lake's own syntax and numbers the Lake
produced from typed fields (the SAMPLE BY interval in whole seconds, a FILL constant
formatted from a finite float, TTL counts), never client text."""

from __future__ import annotations

import math

from datapunk_lake.timeseries.domain import (
    IDENTIFIER,
    AggregateFunction,
    AggregateQuery,
    Aggregation,
    FieldFilter,
    FieldType,
    Fill,
    FillMode,
    LatestQuery,
    Partitioning,
    RangeQuery,
    SeriesSchema,
    Statement,
    TagFilter,
    Ttl,
    is_table_name,
)

__all__ = [
    "add_dedup",
    "aggregate",
    "create_series",
    "create_view",
    "drop_series",
    "drop_view",
    "ident",
    "interval_text",
    "latest",
    "literal_name",
    "range_page",
    "set_ttl",
    "table",
]


def ident(name: str) -> str:
    """``name`` double-quoted, after checking it is a plain lower-case identifier."""
    if not IDENTIFIER.fullmatch(name):
        raise ValueError(f"not an identifier: {name!r}")
    return f'"{name}"'


def table(name: str) -> str:
    """A table or view name double-quoted, after checking it is a physical name the Lake
    makes (a series id, or one behind a tenant's prefix: ``domain.is_table_name``)."""
    if not is_table_name(name):
        raise ValueError(f"not an identifier of a table: {name!r}")
    return f'"{name}"'


def literal_name(name: str) -> str:
    """A table name as a single-quoted SQL string, for the catalog functions that take
    only a constant (``table_columns('x')``); the same check as ``table`` applies."""
    if not is_table_name(name):
        raise ValueError(f"not an identifier of a table: {name!r}")
    return f"'{name}'"


def interval_text(seconds: int) -> str:
    """An interval in QuestDB's SAMPLE BY syntax, in the largest unit that divides it."""
    if seconds <= 0:
        raise ValueError("interval must be positive")
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _ttl(ttl: Ttl | None) -> str:
    if ttl is None or ttl.value == 0:
        return ""
    return f" TTL {int(ttl.value)} {ttl.unit.value}"


def create_series(schema: SeriesSchema) -> Statement:
    columns = [f"{ident(schema.timestamp_column)} TIMESTAMP"]
    columns += [f"{ident(tag)} SYMBOL" for tag in schema.tags]
    columns += [f"{ident(f.name)} {FieldType(f.type).value}" for f in schema.fields]
    text = (
        f"CREATE TABLE {table(schema.series_id)} ({', '.join(columns)}) "
        f"TIMESTAMP({ident(schema.timestamp_column)}) "
        f"PARTITION BY {Partitioning(schema.partitioning).value}{_ttl(schema.ttl)} WAL"
    )
    if schema.dedup_keys:
        keys = [schema.timestamp_column, *schema.dedup_keys]
        text += f" DEDUP UPSERT KEYS({', '.join(ident(k) for k in keys)})"
    return Statement(text)


def drop_series(series_id: str) -> Statement:
    return Statement(f"DROP TABLE {table(series_id)}")


def set_ttl(series_id: str, ttl: Ttl | None) -> Statement:
    if ttl is None or ttl.value == 0:
        return Statement(f"ALTER TABLE {table(series_id)} SET TTL 0 HOURS")
    return Statement(f"ALTER TABLE {table(series_id)} SET TTL {int(ttl.value)} {ttl.unit.value}")


def add_dedup(schema: SeriesSchema, keys: tuple[str, ...]) -> Statement:
    name = table(schema.series_id)
    if not keys:
        return Statement(f"ALTER TABLE {name} DEDUP DISABLE")
    names = ", ".join(ident(k) for k in (schema.timestamp_column, *keys))
    return Statement(f"ALTER TABLE {name} DEDUP ENABLE UPSERT KEYS({names})")


def _where(
    schema: SeriesSchema,
    start_us: int | None,
    end_us: int | None,
    tag_filters: tuple[TagFilter, ...],
    field_filters: tuple[FieldFilter, ...],
) -> tuple[list[str], list[object]]:
    ts = ident(schema.timestamp_column)
    clauses: list[str] = []
    params: list[object] = []
    if start_us is not None:
        clauses.append(f"{ts} >= %s::timestamp")
        params.append(int(start_us))
    if end_us is not None:
        clauses.append(f"{ts} < %s::timestamp")
        params.append(int(end_us))
    for tag_filter in tag_filters:
        marks = ", ".join("%s" for _ in tag_filter.values)
        clauses.append(f"{ident(tag_filter.tag)} IN ({marks})")
        params.extend(str(v) for v in tag_filter.values)
    for field_filter in field_filters:
        column = ident(field_filter.field)
        operator = field_filter.comparison.value
        if field_filter.is_timestamp:
            clauses.append(f"{column} {operator} %s::timestamp")
            params.append(int(field_filter.value))
        else:
            clauses.append(f"{column} {operator} %s")
            params.append(field_filter.value)
    return clauses, params


def _where_text(clauses: list[str]) -> str:
    return f" WHERE {' AND '.join(clauses)}" if clauses else ""


def range_page(
    schema: SeriesSchema, query: RangeQuery, cursor_us: int | None, skip: int, limit: int
) -> Statement:
    """One page of raw rows: rows from ``cursor_us`` on (or the query's start), skipping
    the first ``skip`` (rows at the cursor's timestamp already returned), at most
    ``limit`` of them."""
    start = query.start_us if cursor_us is None else cursor_us
    clauses, params = _where(schema, start, query.end_us, query.tag_filters, query.field_filters)
    columns = query.columns or tuple(c for c in schema.column_names if c != schema.timestamp_column)
    ts = ident(schema.timestamp_column)
    select = ", ".join([ts, *(ident(c) for c in columns if c != schema.timestamp_column)])
    text = (
        f"SELECT {select} FROM {table(schema.series_id)}{_where_text(clauses)} "
        f"ORDER BY {ts} LIMIT %s, %s"
    )
    return Statement(text, (*params, int(skip), int(skip + limit)))


def _aggregate_expression(aggregation: Aggregation) -> str:
    function = aggregation.function
    if function is AggregateFunction.COUNT and not aggregation.field:
        call = "count()"
    else:
        call = f"{function.value}({ident(aggregation.field)})"
    return f"{call} AS {ident(aggregation.alias)}"


def _coalesced_fill(fill: Fill, count: int) -> bool:
    """QuestDB 9.3 cannot parse a list of negative FILL constants ("invalid fill value:
    -"); then empty intervals are filled with NULL and the outer query coalesces them to
    the (bound) value."""
    return fill.mode is FillMode.VALUE and fill.value < 0 and count > 1


def _fill(fill: Fill, count: int) -> str:
    """FILL with one entry per aggregate, as QuestDB wants."""
    if fill.mode is FillMode.NONE:
        return ""
    if fill.mode is FillMode.VALUE and not _coalesced_fill(fill, count):
        if not math.isfinite(fill.value):
            raise ValueError("fill value must be finite")
        entry = repr(float(fill.value))
    elif fill.mode is FillMode.VALUE:
        entry = "NULL"
    else:
        entry = fill.mode.value
    return f" FILL({', '.join([entry] * count)})"


def sample_by(schema: SeriesSchema, query: AggregateQuery) -> Statement:
    """The SAMPLE BY query itself, without paging."""
    clauses, params = _where(
        schema, query.start_us, query.end_us, query.tag_filters, query.field_filters
    )
    ts = ident(schema.timestamp_column)
    select = ", ".join(
        [ts, *(ident(t) for t in query.group_by), *map(_aggregate_expression, query.aggregations)]
    )
    fill = _fill(query.fill, len(query.aggregations))
    text = (
        f"SELECT {select} FROM {table(schema.series_id)}{_where_text(clauses)} "
        f"SAMPLE BY {interval_text(query.interval_seconds)}{fill} ALIGN TO CALENDAR"
    )
    return Statement(text, tuple(params))


def aggregate(schema: SeriesSchema, query: AggregateQuery, offset: int, limit: int) -> Statement:
    """A page of aggregated rows, in a total order (interval, then group tags)."""
    inner = sample_by(schema, query)
    keys = [ident(schema.timestamp_column), *(ident(t) for t in query.group_by)]
    order = ", ".join(keys)
    select = "*"
    params: list[object] = []
    if _coalesced_fill(query.fill, len(query.aggregations)):
        outputs = [
            f"coalesce({ident(a.alias)}, %s) AS {ident(a.alias)}" for a in query.aggregations
        ]
        params = [float(query.fill.value)] * len(outputs)
        select = ", ".join([*keys, *outputs])
    text = f"SELECT {select} FROM ({inner.text}) ORDER BY {order} LIMIT %s, %s"
    return Statement(text, (*params, *inner.params, int(offset), int(offset + limit)))


def latest(schema: SeriesSchema, query: LatestQuery, offset: int, limit: int) -> Statement:
    """A page of the latest rows per tag set, ordered by timestamp then the tags."""
    clauses, params = _where(schema, None, query.end_us, query.tag_filters, ())
    ts = ident(schema.timestamp_column)
    columns = query.columns or tuple(c for c in schema.column_names if c != schema.timestamp_column)
    wanted = [c for c in columns if c != schema.timestamp_column]
    select = ", ".join([ts, *(ident(c) for c in wanted)])
    partition = ", ".join(ident(t) for t in query.partition_by)
    order = ", ".join([ts, *(ident(t) for t in query.partition_by if t in wanted)])
    text = (
        f"SELECT * FROM (SELECT {select} FROM {table(schema.series_id)}{_where_text(clauses)} "
        f"LATEST ON {ts} PARTITION BY {partition}) ORDER BY {order} LIMIT %s, %s"
    )
    return Statement(text, (*params, int(offset), int(offset + limit)))


def create_view(
    schema: SeriesSchema, rule_view: str, query: AggregateQuery, ttl: Ttl | None
) -> Statement:
    """A materialized view that keeps ``query`` (no filters, no fill) applied."""
    inner = sample_by(schema, query)
    assert not inner.params, "a view's query has no parameters"
    hourly = ttl is not None and ttl.value and ttl.unit.value == "HOURS"
    partition = "HOUR" if hourly else "DAY"
    return Statement(
        f"CREATE MATERIALIZED VIEW {table(rule_view)} AS ({inner.text}) "
        f"PARTITION BY {partition}{_ttl(ttl)}"
    )


def drop_view(view_id: str) -> Statement:
    return Statement(f"DROP MATERIALIZED VIEW {table(view_id)}")
