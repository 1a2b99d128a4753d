"""The gRPC face of the time-series store: protobuf in, domain objects to TSStore, protobuf
out. Nothing else happens here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from datapunk.lake.v1 import timeseries_pb2 as pb
from datapunk.lake.v1 import timeseries_pb2_grpc
from datapunk_shared.errors import FieldViolation, InvalidArgument
from google.protobuf import duration_pb2, timestamp_pb2

from datapunk_lake.timeseries.domain import (
    AggregateFunction,
    AggregateQuery,
    Aggregation,
    Column,
    ColumnKind,
    Comparison,
    DownsamplingRule,
    FieldFilter,
    FieldSpec,
    FieldType,
    Fill,
    FillMode,
    LatestQuery,
    Partitioning,
    RangeQuery,
    RowBatch,
    SeriesInfo,
    SeriesSchema,
    TagFilter,
    Ttl,
    TtlUnit,
)
from datapunk_lake.timeseries.store import TSStore

__all__ = ["SERVICE_NAME", "TimeSeriesServicer"]

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["TimeSeriesService"].full_name

# The generated gRPC module is untyped; use it through Any.
_grpc: Any = timeseries_pb2_grpc

_FIELD_TYPES = {
    pb.FIELD_TYPE_DOUBLE: FieldType.DOUBLE,
    pb.FIELD_TYPE_LONG: FieldType.LONG,
    pb.FIELD_TYPE_BOOLEAN: FieldType.BOOLEAN,
    pb.FIELD_TYPE_VARCHAR: FieldType.VARCHAR,
    pb.FIELD_TYPE_TIMESTAMP: FieldType.TIMESTAMP,
}
_FIELD_TYPES_OUT = {v: k for k, v in _FIELD_TYPES.items()}
_PARTITIONS = {
    pb.PARTITIONING_UNSPECIFIED: Partitioning.DAY,
    pb.PARTITIONING_HOUR: Partitioning.HOUR,
    pb.PARTITIONING_DAY: Partitioning.DAY,
    pb.PARTITIONING_WEEK: Partitioning.WEEK,
    pb.PARTITIONING_MONTH: Partitioning.MONTH,
    pb.PARTITIONING_YEAR: Partitioning.YEAR,
}
_PARTITIONS_OUT = {v: k for k, v in _PARTITIONS.items() if k != pb.PARTITIONING_UNSPECIFIED}
_TTL_UNITS = {
    pb.TTL_UNIT_HOURS: TtlUnit.HOURS,
    pb.TTL_UNIT_DAYS: TtlUnit.DAYS,
    pb.TTL_UNIT_WEEKS: TtlUnit.WEEKS,
    pb.TTL_UNIT_MONTHS: TtlUnit.MONTHS,
    pb.TTL_UNIT_YEARS: TtlUnit.YEARS,
}
_TTL_UNITS_OUT = {v: k for k, v in _TTL_UNITS.items()}
_COMPARISONS = {
    pb.COMPARISON_EQUAL: Comparison.EQUAL,
    pb.COMPARISON_NOT_EQUAL: Comparison.NOT_EQUAL,
    pb.COMPARISON_LESS: Comparison.LESS,
    pb.COMPARISON_LESS_OR_EQUAL: Comparison.LESS_OR_EQUAL,
    pb.COMPARISON_GREATER: Comparison.GREATER,
    pb.COMPARISON_GREATER_OR_EQUAL: Comparison.GREATER_OR_EQUAL,
}
_FUNCTIONS = {
    pb.AGGREGATE_FUNCTION_AVG: AggregateFunction.AVG,
    pb.AGGREGATE_FUNCTION_MIN: AggregateFunction.MIN,
    pb.AGGREGATE_FUNCTION_MAX: AggregateFunction.MAX,
    pb.AGGREGATE_FUNCTION_SUM: AggregateFunction.SUM,
    pb.AGGREGATE_FUNCTION_COUNT: AggregateFunction.COUNT,
    pb.AGGREGATE_FUNCTION_FIRST: AggregateFunction.FIRST,
    pb.AGGREGATE_FUNCTION_LAST: AggregateFunction.LAST,
}
_FUNCTIONS_OUT = {v: k for k, v in _FUNCTIONS.items()}
_FILLS = {
    pb.FILL_MODE_UNSPECIFIED: FillMode.NONE,
    pb.FILL_MODE_NONE: FillMode.NONE,
    pb.FILL_MODE_NULL: FillMode.NULL,
    pb.FILL_MODE_PREVIOUS: FillMode.PREVIOUS,
    pb.FILL_MODE_LINEAR: FillMode.LINEAR,
    pb.FILL_MODE_VALUE: FillMode.VALUE,
}


def _series_id(name: str) -> str:
    return name.removeprefix("series/")


def _rule_ids(name: str) -> tuple[str, str]:
    parts = name.split("/")
    return parts[1], parts[3]


def _micros(stamp: timestamp_pb2.Timestamp) -> int:
    return int(stamp.seconds) * 1_000_000 + int(stamp.nanos) // 1000


def _timestamp(micros: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.seconds, rest = divmod(micros, 1_000_000)
    stamp.nanos = rest * 1000
    return stamp


def _optional_micros(message: Any, field: str) -> int | None:
    return _micros(getattr(message, field)) if message.HasField(field) else None


def _interval_seconds(duration: duration_pb2.Duration, path: str) -> int:
    if duration.nanos:
        raise InvalidArgument(
            f"{path} must be whole seconds",
            violations=[FieldViolation(path, "must be whole seconds", "INVALID_INTERVAL")],
            reason="INVALID_INTERVAL",
        )
    if duration.seconds < 1:
        raise InvalidArgument(
            f"{path} is required",
            violations=[FieldViolation(path, "at least one second", "INVALID_INTERVAL")],
            reason="INVALID_INTERVAL",
        )
    return int(duration.seconds)


def _ttl_in(message: pb.Series | pb.DownsamplingRule, path: str) -> Ttl | None:
    if not message.HasField("ttl") or message.ttl.value == 0:
        return None
    if message.ttl.unit == pb.TTL_UNIT_UNSPECIFIED:
        raise InvalidArgument(
            f"{path}.unit is required with a value",
            violations=[FieldViolation(f"{path}.unit", "required with a value", "INVALID_TTL")],
            reason="INVALID_TTL",
        )
    return Ttl(message.ttl.value, _TTL_UNITS[message.ttl.unit])


def _ttl_out(ttl: Ttl | None) -> pb.Ttl | None:
    return None if ttl is None else pb.Ttl(value=ttl.value, unit=_TTL_UNITS_OUT[ttl.unit])


def schema_in(series_id: str, series: pb.Series) -> SeriesSchema:
    return SeriesSchema(
        series_id=series_id,
        timestamp_column=series.timestamp_column or "ts",
        tags=tuple(series.tags),
        fields=tuple(FieldSpec(f.name, _FIELD_TYPES[f.type]) for f in series.fields),
        partitioning=_PARTITIONS[series.partitioning],
        ttl=_ttl_in(series, "series.ttl"),
        dedup_keys=tuple(series.dedup_keys),
    )


def series_out(info: SeriesInfo) -> pb.Series:
    schema = info.schema
    message = pb.Series(
        name=f"series/{schema.series_id}",
        timestamp_column=schema.timestamp_column,
        tags=schema.tags,
        fields=[pb.FieldSchema(name=f.name, type=_FIELD_TYPES_OUT[f.type]) for f in schema.fields],
        partitioning=_PARTITIONS_OUT[schema.partitioning],
        ttl=_ttl_out(schema.ttl),
        dedup_keys=schema.dedup_keys,
        row_count=info.row_count,
    )
    if info.min_time_us is not None:
        message.min_time.CopyFrom(_timestamp(info.min_time_us))
    if info.max_time_us is not None:
        message.max_time.CopyFrom(_timestamp(info.max_time_us))
    return message


def batch_in(rows: pb.RowBatch) -> RowBatch:
    columns = []
    for column in rows.columns:
        kind = column.WhichOneof("values")
        nulls = np.array(column.null_rows, dtype=np.uint32)
        if kind == "doubles":
            columns.append(
                Column(
                    column.name,
                    ColumnKind.DOUBLE,
                    np.array(column.doubles.values, dtype=np.float64),
                    null_rows=nulls,
                )
            )
        elif kind == "longs":
            columns.append(
                Column(
                    column.name,
                    ColumnKind.LONG,
                    np.array(column.longs.values, dtype=np.int64),
                    null_rows=nulls,
                )
            )
        elif kind == "bools":
            columns.append(
                Column(
                    column.name,
                    ColumnKind.BOOL,
                    np.array(column.bools.values, dtype=bool),
                    null_rows=nulls,
                )
            )
        elif kind == "timestamps":
            columns.append(
                Column(
                    column.name,
                    ColumnKind.TIMESTAMP,
                    np.array(column.timestamps.values, dtype=np.int64),
                    null_rows=nulls,
                )
            )
        elif kind == "dictionary":
            columns.append(
                Column(
                    column.name,
                    ColumnKind.DICTIONARY,
                    np.array(column.dictionary.indexes, dtype=np.uint32),
                    tuple(column.dictionary.dictionary),
                    nulls,
                )
            )
        else:
            columns.append(
                Column(column.name, ColumnKind.STRING, list(column.strings.values), null_rows=nulls)
            )
    return RowBatch(tuple(columns))


def batch_out(batch: RowBatch, message: pb.RowBatch | None = None) -> pb.RowBatch:
    """``batch`` as protobuf, written into ``message`` (a response's own field, so the
    rows are not copied once more) or into a new RowBatch."""
    if message is None:
        message = pb.RowBatch()
    for column in batch.columns:
        out = message.columns.add(name=column.name)
        values = column.values
        if column.kind is ColumnKind.STRING:
            out.strings.values.extend(values)
        else:
            assert isinstance(values, np.ndarray)
            listed = values.tolist()
            if column.kind is ColumnKind.DOUBLE:
                if len(column.null_rows):
                    listed = np.nan_to_num(values, nan=0.0).tolist()
                out.doubles.values.extend(listed)
            elif column.kind is ColumnKind.LONG:
                out.longs.values.extend(listed)
            elif column.kind is ColumnKind.BOOL:
                out.bools.values.extend(listed)
            elif column.kind is ColumnKind.TIMESTAMP:
                out.timestamps.values.extend(listed)
            else:
                out.dictionary.dictionary.extend(column.dictionary)
                out.dictionary.indexes.extend(listed)
        if len(column.null_rows):
            out.null_rows.extend(column.null_rows.tolist())
    return message


def _tag_filters(filters: Any) -> tuple[TagFilter, ...]:
    return tuple(TagFilter(f.tag, tuple(f.values)) for f in filters)


def _field_filters(filters: Any) -> tuple[FieldFilter, ...]:
    found = []
    for f in filters:
        kind = f.WhichOneof("value")
        comparison = _COMPARISONS[f.comparison]
        if kind == "timestamp_value":
            found.append(FieldFilter(f.field, comparison, _micros(f.timestamp_value), True))
        else:
            found.append(FieldFilter(f.field, comparison, getattr(f, kind)))
    return tuple(found)


def _aggregations(items: Any) -> tuple[Aggregation, ...]:
    return tuple(
        Aggregation(
            _FUNCTIONS[a.function],
            a.field,
            a.alias or Aggregation.default_alias(_FUNCTIONS[a.function], a.field),
        )
        for a in items
    )


def _aggregations_out(items: tuple[Aggregation, ...]) -> list[pb.Aggregation]:
    return [
        pb.Aggregation(function=_FUNCTIONS_OUT[a.function], field=a.field, alias=a.alias)
        for a in items
    ]


def rule_out(rule: DownsamplingRule) -> pb.DownsamplingRule:
    return pb.DownsamplingRule(
        name=f"series/{rule.series_id}/downsamplingRules/{rule.rule_id}",
        interval=duration_pb2.Duration(seconds=rule.interval_seconds),
        aggregations=_aggregations_out(rule.aggregations),
        group_by=rule.group_by,
        ttl=_ttl_out(rule.ttl),
        view_series=f"series/{rule.view_id}",
        status=rule.status,
    )


class TimeSeriesServicer(_grpc.TimeSeriesServiceServicer):  # type: ignore[misc]
    """datapunk.lake.v1.TimeSeriesService over a TSStore."""

    def __init__(self, store: TSStore) -> None:
        self.store = store

    async def CreateSeries(
        self, request: pb.CreateSeriesRequest, context: Any
    ) -> pb.CreateSeriesResponse:
        info = await self.store.create_series(schema_in(request.series_id, request.series))
        return pb.CreateSeriesResponse(series=series_out(info))

    async def GetSeries(self, request: pb.GetSeriesRequest, context: Any) -> pb.GetSeriesResponse:
        info = await self.store.get_series(_series_id(request.name))
        return pb.GetSeriesResponse(series=series_out(info))

    async def ListSeries(
        self, request: pb.ListSeriesRequest, context: Any
    ) -> pb.ListSeriesResponse:
        found, token = await self.store.list_series(request.page_size, request.page_token)
        return pb.ListSeriesResponse(series=[series_out(i) for i in found], next_page_token=token)

    async def UpdateSeries(
        self, request: pb.UpdateSeriesRequest, context: Any
    ) -> pb.UpdateSeriesResponse:
        paths = list(request.update_mask.paths)
        for index, path in enumerate(paths):
            if path not in ("ttl", "dedup_keys"):
                raise InvalidArgument(
                    f"update_mask path {path!r} cannot be changed",
                    violations=[
                        FieldViolation(
                            f"update_mask.paths[{index}]",
                            "only 'ttl' and 'dedup_keys' may be updated",
                            "FIELD_IMMUTABLE",
                        )
                    ],
                    reason="FIELD_IMMUTABLE",
                )
        info = await self.store.update_series(
            _series_id(request.series.name),
            ttl=_ttl_in(request.series, "series.ttl") if "ttl" in paths else False,
            dedup_keys=tuple(request.series.dedup_keys) if "dedup_keys" in paths else None,
        )
        return pb.UpdateSeriesResponse(series=series_out(info))

    async def DeleteSeries(
        self, request: pb.DeleteSeriesRequest, context: Any
    ) -> pb.DeleteSeriesResponse:
        await self.store.delete_series(_series_id(request.name))
        return pb.DeleteSeriesResponse()

    async def WriteRows(self, request: pb.WriteRowsRequest, context: Any) -> pb.WriteRowsResponse:
        rows = await self.store.write(_series_id(request.series), batch_in(request.rows))
        return pb.WriteRowsResponse(row_count=rows)

    async def StreamWriteRows(
        self, requests: AsyncIterator[pb.StreamWriteRowsRequest], context: Any
    ) -> AsyncIterator[pb.StreamWriteRowsResponse]:
        async def batches() -> AsyncIterator[tuple[str, RowBatch]]:
            async for request in requests:
                yield _series_id(request.series), batch_in(request.rows)

        async for ack in self.store.write_stream(batches()):
            yield pb.StreamWriteRowsResponse(
                batch_index=ack.batch_index,
                row_count=ack.row_count,
                total_row_count=ack.total_row_count,
            )

    async def ReadRows(self, request: pb.ReadRowsRequest, context: Any) -> pb.ReadRowsResponse:
        query = RangeQuery(
            series_id=_series_id(request.series),
            start_us=_optional_micros(request, "start_time"),
            end_us=_optional_micros(request, "end_time"),
            columns=tuple(request.columns),
            tag_filters=_tag_filters(request.tag_filters),
            field_filters=_field_filters(request.field_filters),
            page_size=request.page_size,
        )
        batch, token = await self.store.read_range(query, request.page_token)
        response = pb.ReadRowsResponse(next_page_token=token)
        batch_out(batch, response.rows)
        return response

    async def AggregateRows(
        self, request: pb.AggregateRowsRequest, context: Any
    ) -> pb.AggregateRowsResponse:
        query = AggregateQuery(
            series_id=_series_id(request.series),
            start_us=_optional_micros(request, "start_time"),
            end_us=_optional_micros(request, "end_time"),
            interval_seconds=_interval_seconds(request.interval, "interval"),
            aggregations=_aggregations(request.aggregations),
            group_by=tuple(request.group_by),
            tag_filters=_tag_filters(request.tag_filters),
            field_filters=_field_filters(request.field_filters),
            fill=Fill(_FILLS[request.fill.mode], request.fill.value),
            page_size=request.page_size,
        )
        batch, token = await self.store.aggregate(query, request.page_token)
        response = pb.AggregateRowsResponse(next_page_token=token)
        batch_out(batch, response.rows)
        return response

    async def ReadLatest(
        self, request: pb.ReadLatestRequest, context: Any
    ) -> pb.ReadLatestResponse:
        query = LatestQuery(
            series_id=_series_id(request.series),
            partition_by=tuple(request.partition_by),
            end_us=_optional_micros(request, "end_time"),
            columns=tuple(request.columns),
            tag_filters=_tag_filters(request.tag_filters),
            page_size=request.page_size,
        )
        batch, token = await self.store.latest(query, request.page_token)
        response = pb.ReadLatestResponse(next_page_token=token)
        batch_out(batch, response.rows)
        return response

    async def CreateDownsamplingRule(
        self, request: pb.CreateDownsamplingRuleRequest, context: Any
    ) -> pb.CreateDownsamplingRuleResponse:
        message = request.rule
        rule = DownsamplingRule(
            series_id=_series_id(request.parent),
            rule_id=request.rule_id,
            interval_seconds=_interval_seconds(message.interval, "rule.interval"),
            aggregations=_aggregations(message.aggregations),
            group_by=tuple(message.group_by),
            ttl=_ttl_in(message, "rule.ttl"),
        )
        created = await self.store.create_rule(rule)
        return pb.CreateDownsamplingRuleResponse(rule=rule_out(created))

    async def GetDownsamplingRule(
        self, request: pb.GetDownsamplingRuleRequest, context: Any
    ) -> pb.GetDownsamplingRuleResponse:
        rule = await self.store.get_rule(*_rule_ids(request.name))
        return pb.GetDownsamplingRuleResponse(rule=rule_out(rule))

    async def ListDownsamplingRules(
        self, request: pb.ListDownsamplingRulesRequest, context: Any
    ) -> pb.ListDownsamplingRulesResponse:
        rules, token = await self.store.list_rules(
            _series_id(request.parent), request.page_size, request.page_token
        )
        return pb.ListDownsamplingRulesResponse(
            rules=[rule_out(r) for r in rules], next_page_token=token
        )

    async def DeleteDownsamplingRule(
        self, request: pb.DeleteDownsamplingRuleRequest, context: Any
    ) -> pb.DeleteDownsamplingRuleResponse:
        await self.store.delete_rule(*_rule_ids(request.name))
        return pb.DeleteDownsamplingRuleResponse()
