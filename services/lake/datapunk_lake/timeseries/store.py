"""TSStore: the time-series store's rules, independent of gRPC and of the engine.

It keeps a short-lived cache of series schemas (QuestDB's catalog is the source of truth),
checks every name a request uses against the schema, validates row batches, pages query
results with stable tokens and runs bulk loads with ordered per-batch acknowledgements."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from datapunk_shared.auth.tenancy import TenantNamespace, current_namespace
from datapunk_shared.config import TimeSeriesStoreSettings
from datapunk_shared.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
)

from datapunk_lake.timeseries import paging, sql
from datapunk_lake.timeseries.domain import (
    IDENTIFIER,
    MAX_TABLE_NAME,
    AggregateFunction,
    AggregateQuery,
    Aggregation,
    Column,
    DownsamplingRule,
    FieldFilter,
    FieldType,
    Fill,
    FillMode,
    LatestQuery,
    RangeQuery,
    RowBatch,
    SeriesInfo,
    SeriesSchema,
    Statement,
    TagFilter,
    TimeSeriesEngine,
    Ttl,
)
from datapunk_lake.timeseries.validation import check_batch

__all__ = ["StreamAck", "TSStore"]

_NUMERIC = (FieldType.DOUBLE, FieldType.LONG)
_ORDERED = (FieldType.DOUBLE, FieldType.LONG, FieldType.TIMESTAMP)


@dataclass(frozen=True, slots=True)
class StreamAck:
    """One acknowledged batch of a bulk load."""

    batch_index: int
    row_count: int
    total_row_count: int


def _invalid(field: str, description: str, reason: str, **metadata: str) -> InvalidArgument:
    return InvalidArgument(
        f"{field}: {description}",
        violations=[FieldViolation(field, description, reason)],
        reason=reason,
        metadata=metadata,
    )


def _series_not_found(series_id: str) -> NotFound:
    return NotFound(
        f"series {series_id!r} does not exist",
        reason="SERIES_NOT_FOUND",
        metadata={"series": series_id},
    )


class TSStore:
    """Series, writes, queries and downsampling rules over a TimeSeriesEngine.

    Every method takes and returns the calling tenant's logical names (series ids, view
    ids); ``_resolve`` is the one place that maps them to QuestDB's physical table names
    (``datapunk_shared.auth.tenancy``: ``<id>`` for the default tenant, ``_<tenant>__<id>``
    for the others). A rule's view is the physical series name plus ``__<rule_id>``,
    which is also the physical name of its logical view id, so views stay with their
    series' tenant. Schemas, infos and rules given back carry logical names; engine
    errors are rewritten into them."""

    def __init__(
        self,
        engine: TimeSeriesEngine,
        settings: TimeSeriesStoreSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self._clock = clock
        self._cache: dict[str, tuple[float, SeriesInfo]] = {}
        """Logical infos by physical table name, until the time given with each."""

    # --- names -------------------------------------------------------------------------

    @staticmethod
    def _resolve(series_id: str, field: str = "series") -> tuple[TenantNamespace, str]:
        """The calling tenant's namespace and the physical table name of ``series_id``."""
        namespace = current_namespace()
        table = namespace.physical(
            series_id, pattern=IDENTIFIER, max_length=MAX_TABLE_NAME, field=field
        )
        return namespace, table

    # --- series ------------------------------------------------------------------------

    async def schema(self, series_id: str, *, fresh: bool = False) -> SeriesSchema:
        return (await self.info(series_id, fresh=fresh)).schema

    async def info(self, series_id: str, *, fresh: bool = False) -> SeriesInfo:
        namespace, table = self._resolve(series_id)
        return await self._info(namespace, table, series_id, fresh=fresh)

    async def _info(
        self, namespace: TenantNamespace, table: str, series_id: str, *, fresh: bool
    ) -> SeriesInfo:
        now = self._clock()
        cached = self._cache.get(table)
        if cached is not None and not fresh and cached[0] > now:
            return cached[1]
        with namespace.logical_errors():
            info = await self.engine.describe(table)
        if info is None:
            self._cache.pop(table, None)
            raise _series_not_found(series_id)
        info = _named(info, series_id)
        if self.settings.schema_cache_seconds > 0:
            self._cache[table] = (now + self.settings.schema_cache_seconds, info)
        return info

    def forget(self, series_id: str) -> None:
        self._cache.pop(self._resolve(series_id)[1], None)

    async def create_series(self, schema: SeriesSchema) -> SeriesInfo:
        _check_schema(schema)
        namespace, table = self._resolve(schema.series_id, "series_id")
        with namespace.logical_errors():
            if await self.engine.describe(table) is not None:
                raise AlreadyExists(
                    f"series {schema.series_id!r} exists already",
                    reason="SERIES_ALREADY_EXISTS",
                    metadata={"series": schema.series_id},
                )
            await self.engine.execute(sql.create_series(_stored(schema, table)))
        self._cache.pop(table, None)
        return await self._info(namespace, table, schema.series_id, fresh=True)

    async def get_series(self, series_id: str) -> SeriesInfo:
        info = await self.info(series_id, fresh=True)
        if info.schema.read_only:
            raise _series_not_found(series_id)
        return info

    async def list_series(self, page_size: int, page_token: str) -> tuple[list[SeriesInfo], str]:
        """One page of the calling tenant's series, in name order."""
        namespace = current_namespace()
        size = paging.page_size(page_size, 1000, default=100)
        position = paging.decode_token(page_token, "series", "")
        after = str(position["after"]) if position else ""
        low, high = namespace.bounds()
        with namespace.logical_errors():
            found = await self.engine.list_series(
                max(low, namespace.prefix + after), high, size + 1
            )
        mine = [
            _named(info, name)
            for info in found
            if (name := namespace.logical(info.schema.series_id)) is not None
        ]
        more = len(mine) > size
        mine = mine[:size]
        token = paging.encode_token("series", "", after=mine[-1].schema.series_id) if more else ""
        return mine, token

    async def update_series(
        self,
        series_id: str,
        *,
        ttl: Ttl | bool | None = False,
        dedup_keys: tuple[str, ...] | None = None,
    ) -> SeriesInfo:
        """Change the TTL (``ttl`` not False) and/or the dedup keys (``dedup_keys`` not None)."""
        schema = (await self.get_series(series_id)).schema
        namespace, table = self._resolve(series_id)
        wanted = schema
        with namespace.logical_errors():
            if ttl is not False:
                assert ttl is None or isinstance(ttl, Ttl)
                _check_ttl(ttl, "series.ttl")
                await self.engine.execute(sql.set_ttl(table, ttl))
                wanted = dataclasses.replace(wanted, ttl=ttl if ttl and ttl.value else None)
            if dedup_keys is not None:
                _check_dedup(schema, dedup_keys)
                await self.engine.execute(sql.add_dedup(_stored(schema, table), dedup_keys))
                wanted = dataclasses.replace(wanted, dedup_keys=dedup_keys)
        self._cache.pop(table, None)
        # QuestDB applies ALTERs of WAL tables asynchronously: wait (briefly) until its
        # catalog shows the change, so the response reports what is now in force.
        deadline = self._clock() + 10.0
        while True:
            info = await self._info(namespace, table, series_id, fresh=True)
            if _same_settings(info.schema, wanted) or self._clock() > deadline:
                return info
            await asyncio.sleep(0.05)

    async def delete_series(self, series_id: str) -> None:
        await self.get_series(series_id)
        namespace, table = self._resolve(series_id)
        with namespace.logical_errors():
            for rule in await self.engine.list_rules(table):
                await self.engine.execute(sql.drop_view(rule.view_id))
                self._cache.pop(rule.view_id, None)
            await self.engine.execute(sql.drop_series(table))
        self._cache.pop(table, None)

    # --- writes ------------------------------------------------------------------------

    async def write(self, series_id: str, batch: RowBatch, *, prefix: str = "rows") -> int:
        namespace, table = self._resolve(series_id)
        schema = (await self._info(namespace, table, series_id, fresh=False)).schema
        check_batch(schema, batch, max_rows=self.settings.max_rows_per_write, prefix=prefix)
        if batch.row_count == 0:
            return 0
        with namespace.logical_errors():
            await self.engine.write(_stored(schema, table), batch)
        return batch.row_count

    async def write_stream(
        self, batches: AsyncIterator[tuple[str, RowBatch]]
    ) -> AsyncIterator[StreamAck]:
        """Write each batch as it arrives and acknowledge them in order, each as soon as the
        engine accepted it (never waiting for the next batch: a client may send a batch only
        after the previous one was acknowledged). A new batch is read only while fewer than
        ``stream_max_in_flight`` are waiting for the engine. The first failure ends the
        stream, raised after the acknowledgements of the batches before it."""
        slots = asyncio.Semaphore(max(1, self.settings.stream_max_in_flight))
        writes: asyncio.Queue[asyncio.Task[int] | None] = asyncio.Queue()
        started: set[asyncio.Task[int]] = set()  # writes not acknowledged yet

        async def read() -> None:
            # The batches are read in a task of their own, so that an acknowledgement never
            # waits for the client's next batch.
            try:
                iterator = aiter(batches)
                while True:
                    await slots.acquire()
                    try:
                        series_id, batch = await anext(iterator)
                    except StopAsyncIteration:
                        return
                    task = asyncio.create_task(self.write(series_id, batch))
                    started.add(task)
                    writes.put_nowait(task)
            finally:
                writes.put_nowait(None)

        reader = asyncio.create_task(read())
        index = 0
        total = 0
        try:
            while (task := await writes.get()) is not None:
                rows = await task
                started.discard(task)
                slots.release()
                total += rows
                yield StreamAck(index, rows, total)
                index += 1
            await reader  # the request stream's own failure, if it had one
        finally:
            reader.cancel()
            unfinished = list(started)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(reader, *unfinished, return_exceptions=True)

    # --- queries -----------------------------------------------------------------------

    async def _fetch(self, namespace: TenantNamespace, statement: Statement) -> RowBatch:
        with namespace.logical_errors():
            return await self.engine.fetch(statement)

    async def read_range(self, query: RangeQuery, page_token: str) -> tuple[RowBatch, str]:
        namespace, table = self._resolve(query.series_id)
        schema = (await self._info(namespace, table, query.series_id, fresh=False)).schema
        _check_columns(schema, query.columns, "columns")
        _check_filters(schema, query.tag_filters, query.field_filters)
        size = paging.page_size(query.page_size, self.settings.max_page_size)
        position = _position(page_token, "range", query)
        cursor = int(position["ts"]) if position else None
        skip = int(position["skip"]) if position else 0
        statement = sql.range_page(_stored(schema, table), query, cursor, skip, size + 1)
        batch = await self._fetch(namespace, statement)
        if batch.row_count <= size:
            return batch, ""
        batch = _head(batch, size)
        stamps = batch.columns[0].values
        assert isinstance(stamps, np.ndarray)
        last = int(stamps[-1])
        at_last = int(np.count_nonzero(stamps == last))
        next_skip = skip + at_last if cursor == last else at_last
        return batch, paging.encode_token("range", _identity(query), ts=last, skip=next_skip)

    async def aggregate(self, query: AggregateQuery, page_token: str) -> tuple[RowBatch, str]:
        namespace, table = self._resolve(query.series_id)
        schema = (await self._info(namespace, table, query.series_id, fresh=False)).schema
        _check_aggregate(schema, query)
        size = paging.page_size(query.page_size, self.settings.max_page_size)
        position = _position(page_token, "aggregate", query)
        offset = int(position["offset"]) if position else 0
        statement = sql.aggregate(_stored(schema, table), query, offset, size + 1)
        batch = await self._fetch(namespace, statement)
        return self._offset_page(batch, size, "aggregate", query, offset)

    async def latest(self, query: LatestQuery, page_token: str) -> tuple[RowBatch, str]:
        namespace, table = self._resolve(query.series_id)
        schema = (await self._info(namespace, table, query.series_id, fresh=False)).schema
        _check_columns(schema, query.columns, "columns")
        _check_tags(schema, query.partition_by, "partition_by")
        _check_filters(schema, query.tag_filters, ())
        size = paging.page_size(query.page_size, self.settings.max_page_size)
        position = _position(page_token, "latest", query)
        offset = int(position["offset"]) if position else 0
        statement = sql.latest(_stored(schema, table), query, offset, size + 1)
        batch = await self._fetch(namespace, statement)
        return self._offset_page(batch, size, "latest", query, offset)

    @staticmethod
    def _offset_page(
        batch: RowBatch, size: int, kind: str, query: AggregateQuery | LatestQuery, offset: int
    ) -> tuple[RowBatch, str]:
        if batch.row_count <= size:
            return batch, ""
        return _head(batch, size), paging.encode_token(kind, _identity(query), offset=offset + size)

    # --- downsampling rules ------------------------------------------------------------

    async def create_rule(self, rule: DownsamplingRule) -> DownsamplingRule:
        schema = (await self.get_series(rule.series_id)).schema
        query = AggregateQuery(
            series_id=rule.series_id,
            start_us=None,
            end_us=None,
            interval_seconds=rule.interval_seconds,
            aggregations=rule.aggregations,
            group_by=rule.group_by,
            tag_filters=(),
            field_filters=(),
            fill=Fill(FillMode.NONE),
            page_size=0,
        )
        _check_aggregate(schema, query, prefix="rule.")
        _check_ttl(rule.ttl, "rule.ttl")
        if len(rule.view_id) > 63:
            raise _invalid(
                "rule_id",
                f"the view name {rule.view_id!r} would be longer than 63 characters",
                "NAME_TOO_LONG",
            )
        namespace, table = self._resolve(rule.series_id)
        _, view = self._resolve(rule.view_id, "rule_id")
        with namespace.logical_errors():
            if await self.engine.describe(view) is not None:
                raise AlreadyExists(
                    f"a series or view named {rule.view_id!r} exists already",
                    reason="DOWNSAMPLING_RULE_ALREADY_EXISTS",
                    metadata={"series": rule.series_id, "rule": rule.rule_id},
                )
            await self.engine.execute(
                sql.create_view(_stored(schema, table), view, query, rule.ttl)
            )
        return await self.get_rule(rule.series_id, rule.rule_id)

    async def _rules(self, series_id: str) -> list[DownsamplingRule]:
        """The rules of the calling tenant's series ``series_id`` (which must exist)."""
        await self.get_series(series_id)
        namespace, table = self._resolve(series_id)
        with namespace.logical_errors():
            rules = await self.engine.list_rules(table)
        return [dataclasses.replace(rule, series_id=series_id) for rule in rules]

    async def get_rule(self, series_id: str, rule_id: str) -> DownsamplingRule:
        for rule in await self._rules(series_id):
            if rule.rule_id == rule_id:
                return rule
        raise NotFound(
            f"series {series_id!r} has no downsampling rule {rule_id!r}",
            reason="DOWNSAMPLING_RULE_NOT_FOUND",
            metadata={"series": series_id, "rule": rule_id},
        )

    async def list_rules(
        self, series_id: str, page_size: int, page_token: str
    ) -> tuple[list[DownsamplingRule], str]:
        size = paging.page_size(page_size, 1000, default=100)
        position = paging.decode_token(page_token, "rules", series_id)
        after = str(position["after"]) if position else ""
        rules = [r for r in await self._rules(series_id) if r.rule_id > after]
        page = rules[:size]
        token = (
            paging.encode_token("rules", series_id, after=page[-1].rule_id)
            if len(rules) > size
            else ""
        )
        return page, token

    async def delete_rule(self, series_id: str, rule_id: str) -> None:
        rule = await self.get_rule(series_id, rule_id)
        namespace, view = self._resolve(rule.view_id, "name")
        with namespace.logical_errors():
            await self.engine.execute(sql.drop_view(view))
        self._cache.pop(view, None)


def _identity(query: RangeQuery | AggregateQuery | LatestQuery) -> str:
    """The fingerprint page tokens carry: the query without its page size. Computed only
    when a token is read or made (hashing the query's repr is not free)."""
    return paging.fingerprint(dataclasses.replace(query, page_size=0))


def _position(
    page_token: str, kind: str, query: RangeQuery | AggregateQuery | LatestQuery
) -> dict[str, Any] | None:
    """Where ``page_token`` resumes ``query`` (None without a token)."""
    return paging.decode_token(page_token, kind, _identity(query)) if page_token else None


def _named(info: SeriesInfo, series_id: str) -> SeriesInfo:
    """``info`` (as the engine describes a physical table) under its logical name."""
    if info.schema.series_id == series_id:
        return info
    return dataclasses.replace(info, schema=dataclasses.replace(info.schema, series_id=series_id))


def _stored(schema: SeriesSchema, table: str) -> SeriesSchema:
    """``schema`` under its physical table name, for the SQL and the writes."""
    if schema.series_id == table:
        return schema
    return dataclasses.replace(schema, series_id=table)


def _same_settings(have: SeriesSchema, want: SeriesSchema) -> bool:
    return have.ttl == want.ttl and set(have.dedup_keys) == set(want.dedup_keys)


def _head(batch: RowBatch, size: int) -> RowBatch:
    columns = []
    for column in batch.columns:
        nulls = column.null_rows[column.null_rows < size]
        columns.append(
            Column(column.name, column.kind, column.values[:size], column.dictionary, nulls)
        )
    return RowBatch(tuple(columns))


# --- name and shape checks --------------------------------------------------------------


def _check_ttl(ttl: Ttl | None, path: str) -> None:
    if ttl is not None and ttl.value < 0:
        raise _invalid(f"{path}.value", "must not be negative", "INVALID_TTL")


def _check_schema(schema: SeriesSchema) -> None:
    names = [schema.timestamp_column, *schema.tags, *(f.name for f in schema.fields)]
    paths = ["series.timestamp_column"]
    paths += [f"series.tags[{i}]" for i in range(len(schema.tags))]
    paths += [f"series.fields[{i}].name" for i in range(len(schema.fields))]
    seen: set[str] = set()
    violations = []
    if not schema.fields:
        violations.append(
            FieldViolation("series.fields", "a series needs at least one field", "FIELDS_REQUIRED")
        )
    for name, path in zip(names, paths, strict=True):
        if not IDENTIFIER.fullmatch(name):
            violations.append(
                FieldViolation(path, f"{name!r} is not an identifier", "INVALID_NAME")
            )
        elif name in seen:
            violations.append(
                FieldViolation(path, f"column {name!r} is declared twice", "DUPLICATE_COLUMN")
            )
        seen.add(name)
    for index, key in enumerate(schema.dedup_keys):
        if key not in seen or key == schema.timestamp_column:
            violations.append(
                FieldViolation(
                    f"series.dedup_keys[{index}]",
                    f"{key!r} is not a tag or field of the series",
                    "UNKNOWN_COLUMN",
                )
            )
    if violations:
        raise InvalidArgument(
            "the series schema is invalid: "
            + "; ".join(f"{v.field}: {v.description}" for v in violations),
            violations=violations,
            reason=violations[0].reason,
        )
    _check_ttl(schema.ttl, "series.ttl")


def _check_dedup(schema: SeriesSchema, keys: tuple[str, ...]) -> None:
    for index, key in enumerate(keys):
        if schema.column_type(key) in (None, "DESIGNATED"):
            raise _invalid(
                f"series.dedup_keys[{index}]",
                f"{key!r} is not a tag or field of series {schema.series_id!r}",
                "UNKNOWN_COLUMN",
            )


def _check_columns(schema: SeriesSchema, columns: tuple[str, ...], path: str) -> None:
    for index, name in enumerate(columns):
        if schema.column_type(name) is None:
            raise _invalid(
                f"{path}[{index}]",
                f"series {schema.series_id!r} has no column {name!r}",
                "UNKNOWN_COLUMN",
                series=schema.series_id,
            )


def _check_tags(schema: SeriesSchema, tags: tuple[str, ...], path: str) -> None:
    for index, name in enumerate(tags):
        if name not in schema.tags:
            raise _invalid(
                f"{path}[{index}]",
                f"series {schema.series_id!r} has no tag {name!r}",
                "UNKNOWN_TAG",
                series=schema.series_id,
            )


def _check_filters(
    schema: SeriesSchema,
    tag_filters: tuple[TagFilter, ...],
    field_filters: tuple[FieldFilter, ...],
    prefix: str = "",
) -> None:
    for index, tag_filter in enumerate(tag_filters):
        if tag_filter.tag not in schema.tags:
            raise _invalid(
                f"{prefix}tag_filters[{index}].tag",
                f"series {schema.series_id!r} has no tag {tag_filter.tag!r}",
                "UNKNOWN_TAG",
                series=schema.series_id,
            )
    for index, field_filter in enumerate(field_filters):
        path = f"{prefix}field_filters[{index}]"
        declared = schema.column_type(field_filter.field)
        if not isinstance(declared, FieldType):
            raise _invalid(
                f"{path}.field",
                f"series {schema.series_id!r} has no field {field_filter.field!r}",
                "UNKNOWN_FIELD",
                series=schema.series_id,
            )
        if not _value_fits(declared, field_filter):
            raise _invalid(
                path,
                f"field {field_filter.field!r} is {declared.value}; the value does not match it",
                "TYPE_MISMATCH",
                series=schema.series_id,
            )
        ordering = field_filter.comparison.value not in ("=", "!=")
        if ordering and declared is FieldType.BOOLEAN:
            raise _invalid(
                f"{path}.comparison",
                "a BOOLEAN field can only be compared for (in)equality",
                "TYPE_MISMATCH",
            )


def _value_fits(declared: FieldType, field_filter: FieldFilter) -> bool:
    value = field_filter.value
    if field_filter.is_timestamp:
        return declared is FieldType.TIMESTAMP
    if isinstance(value, bool):
        return declared is FieldType.BOOLEAN
    if isinstance(value, int):
        return declared in _NUMERIC
    if isinstance(value, float):
        return declared is FieldType.DOUBLE
    return declared is FieldType.VARCHAR


def _check_aggregate(schema: SeriesSchema, query: AggregateQuery, prefix: str = "") -> None:
    _check_tags(schema, query.group_by, f"{prefix}group_by")
    _check_filters(schema, query.tag_filters, query.field_filters, prefix)
    outputs = {schema.timestamp_column, *query.group_by}
    for index, aggregation in enumerate(query.aggregations):
        path = f"{prefix}aggregations[{index}]"
        function = aggregation.function
        declared = schema.column_type(aggregation.field) if aggregation.field else None
        if not aggregation.field:
            if function is not AggregateFunction.COUNT:
                raise _invalid(f"{path}.field", "only COUNT may omit the field", "FIELD_REQUIRED")
        elif declared is None or declared == "DESIGNATED":
            raise _invalid(
                f"{path}.field",
                f"series {schema.series_id!r} has no field {aggregation.field!r}",
                "UNKNOWN_FIELD",
                series=schema.series_id,
            )
        elif (
            function in (AggregateFunction.AVG, AggregateFunction.SUM) and declared not in _NUMERIC
        ):
            raise _invalid(
                f"{path}.field",
                f"{function.name} needs a DOUBLE or LONG field; {aggregation.field!r} is not",
                "TYPE_MISMATCH",
            )
        elif (
            function in (AggregateFunction.MIN, AggregateFunction.MAX) and declared not in _ORDERED
        ):
            raise _invalid(
                f"{path}.field",
                f"{function.name} needs a DOUBLE, LONG or TIMESTAMP field",
                "TYPE_MISMATCH",
            )
        if aggregation.alias in outputs:
            raise _invalid(
                f"{path}.alias",
                f"output column {aggregation.alias!r} appears twice",
                "DUPLICATE_COLUMN",
            )
        outputs.add(aggregation.alias)


def aggregation(function: AggregateFunction, field_name: str, alias: str = "") -> Aggregation:
    """An Aggregation with its default alias."""
    return Aggregation(
        function, field_name, alias or Aggregation.default_alias(function, field_name)
    )
