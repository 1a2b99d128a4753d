import datetime

from buf.validate import validate_pb2 as _validate_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FieldType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FIELD_TYPE_UNSPECIFIED: _ClassVar[FieldType]
    FIELD_TYPE_DOUBLE: _ClassVar[FieldType]
    FIELD_TYPE_LONG: _ClassVar[FieldType]
    FIELD_TYPE_BOOLEAN: _ClassVar[FieldType]
    FIELD_TYPE_VARCHAR: _ClassVar[FieldType]
    FIELD_TYPE_TIMESTAMP: _ClassVar[FieldType]

class Partitioning(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PARTITIONING_UNSPECIFIED: _ClassVar[Partitioning]
    PARTITIONING_HOUR: _ClassVar[Partitioning]
    PARTITIONING_DAY: _ClassVar[Partitioning]
    PARTITIONING_WEEK: _ClassVar[Partitioning]
    PARTITIONING_MONTH: _ClassVar[Partitioning]
    PARTITIONING_YEAR: _ClassVar[Partitioning]

class TtlUnit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TTL_UNIT_UNSPECIFIED: _ClassVar[TtlUnit]
    TTL_UNIT_HOURS: _ClassVar[TtlUnit]
    TTL_UNIT_DAYS: _ClassVar[TtlUnit]
    TTL_UNIT_WEEKS: _ClassVar[TtlUnit]
    TTL_UNIT_MONTHS: _ClassVar[TtlUnit]
    TTL_UNIT_YEARS: _ClassVar[TtlUnit]

class Comparison(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPARISON_UNSPECIFIED: _ClassVar[Comparison]
    COMPARISON_EQUAL: _ClassVar[Comparison]
    COMPARISON_NOT_EQUAL: _ClassVar[Comparison]
    COMPARISON_LESS: _ClassVar[Comparison]
    COMPARISON_LESS_OR_EQUAL: _ClassVar[Comparison]
    COMPARISON_GREATER: _ClassVar[Comparison]
    COMPARISON_GREATER_OR_EQUAL: _ClassVar[Comparison]

class AggregateFunction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATE_FUNCTION_UNSPECIFIED: _ClassVar[AggregateFunction]
    AGGREGATE_FUNCTION_AVG: _ClassVar[AggregateFunction]
    AGGREGATE_FUNCTION_MIN: _ClassVar[AggregateFunction]
    AGGREGATE_FUNCTION_MAX: _ClassVar[AggregateFunction]
    AGGREGATE_FUNCTION_SUM: _ClassVar[AggregateFunction]
    AGGREGATE_FUNCTION_COUNT: _ClassVar[AggregateFunction]
    AGGREGATE_FUNCTION_FIRST: _ClassVar[AggregateFunction]
    AGGREGATE_FUNCTION_LAST: _ClassVar[AggregateFunction]

class FillMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FILL_MODE_UNSPECIFIED: _ClassVar[FillMode]
    FILL_MODE_NONE: _ClassVar[FillMode]
    FILL_MODE_NULL: _ClassVar[FillMode]
    FILL_MODE_PREVIOUS: _ClassVar[FillMode]
    FILL_MODE_LINEAR: _ClassVar[FillMode]
    FILL_MODE_VALUE: _ClassVar[FillMode]
FIELD_TYPE_UNSPECIFIED: FieldType
FIELD_TYPE_DOUBLE: FieldType
FIELD_TYPE_LONG: FieldType
FIELD_TYPE_BOOLEAN: FieldType
FIELD_TYPE_VARCHAR: FieldType
FIELD_TYPE_TIMESTAMP: FieldType
PARTITIONING_UNSPECIFIED: Partitioning
PARTITIONING_HOUR: Partitioning
PARTITIONING_DAY: Partitioning
PARTITIONING_WEEK: Partitioning
PARTITIONING_MONTH: Partitioning
PARTITIONING_YEAR: Partitioning
TTL_UNIT_UNSPECIFIED: TtlUnit
TTL_UNIT_HOURS: TtlUnit
TTL_UNIT_DAYS: TtlUnit
TTL_UNIT_WEEKS: TtlUnit
TTL_UNIT_MONTHS: TtlUnit
TTL_UNIT_YEARS: TtlUnit
COMPARISON_UNSPECIFIED: Comparison
COMPARISON_EQUAL: Comparison
COMPARISON_NOT_EQUAL: Comparison
COMPARISON_LESS: Comparison
COMPARISON_LESS_OR_EQUAL: Comparison
COMPARISON_GREATER: Comparison
COMPARISON_GREATER_OR_EQUAL: Comparison
AGGREGATE_FUNCTION_UNSPECIFIED: AggregateFunction
AGGREGATE_FUNCTION_AVG: AggregateFunction
AGGREGATE_FUNCTION_MIN: AggregateFunction
AGGREGATE_FUNCTION_MAX: AggregateFunction
AGGREGATE_FUNCTION_SUM: AggregateFunction
AGGREGATE_FUNCTION_COUNT: AggregateFunction
AGGREGATE_FUNCTION_FIRST: AggregateFunction
AGGREGATE_FUNCTION_LAST: AggregateFunction
FILL_MODE_UNSPECIFIED: FillMode
FILL_MODE_NONE: FillMode
FILL_MODE_NULL: FillMode
FILL_MODE_PREVIOUS: FillMode
FILL_MODE_LINEAR: FillMode
FILL_MODE_VALUE: FillMode

class Ttl(_message.Message):
    __slots__ = ("value", "unit")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    value: int
    unit: TtlUnit
    def __init__(self, value: _Optional[int] = ..., unit: _Optional[_Union[TtlUnit, str]] = ...) -> None: ...

class FieldSchema(_message.Message):
    __slots__ = ("name", "type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: FieldType
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[FieldType, str]] = ...) -> None: ...

class Series(_message.Message):
    __slots__ = ("name", "timestamp_column", "tags", "fields", "partitioning", "ttl", "dedup_keys", "row_count", "min_time", "max_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_COLUMN_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    PARTITIONING_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    DEDUP_KEYS_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    MIN_TIME_FIELD_NUMBER: _ClassVar[int]
    MAX_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    timestamp_column: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    fields: _containers.RepeatedCompositeFieldContainer[FieldSchema]
    partitioning: Partitioning
    ttl: Ttl
    dedup_keys: _containers.RepeatedScalarFieldContainer[str]
    row_count: int
    min_time: _timestamp_pb2.Timestamp
    max_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., timestamp_column: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., fields: _Optional[_Iterable[_Union[FieldSchema, _Mapping]]] = ..., partitioning: _Optional[_Union[Partitioning, str]] = ..., ttl: _Optional[_Union[Ttl, _Mapping]] = ..., dedup_keys: _Optional[_Iterable[str]] = ..., row_count: _Optional[int] = ..., min_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., max_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateSeriesRequest(_message.Message):
    __slots__ = ("series_id", "series")
    SERIES_ID_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    series_id: str
    series: Series
    def __init__(self, series_id: _Optional[str] = ..., series: _Optional[_Union[Series, _Mapping]] = ...) -> None: ...

class CreateSeriesResponse(_message.Message):
    __slots__ = ("series",)
    SERIES_FIELD_NUMBER: _ClassVar[int]
    series: Series
    def __init__(self, series: _Optional[_Union[Series, _Mapping]] = ...) -> None: ...

class GetSeriesRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetSeriesResponse(_message.Message):
    __slots__ = ("series",)
    SERIES_FIELD_NUMBER: _ClassVar[int]
    series: Series
    def __init__(self, series: _Optional[_Union[Series, _Mapping]] = ...) -> None: ...

class ListSeriesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSeriesResponse(_message.Message):
    __slots__ = ("series", "next_page_token")
    SERIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    series: _containers.RepeatedCompositeFieldContainer[Series]
    next_page_token: str
    def __init__(self, series: _Optional[_Iterable[_Union[Series, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateSeriesRequest(_message.Message):
    __slots__ = ("series", "update_mask")
    SERIES_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    series: Series
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, series: _Optional[_Union[Series, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateSeriesResponse(_message.Message):
    __slots__ = ("series",)
    SERIES_FIELD_NUMBER: _ClassVar[int]
    series: Series
    def __init__(self, series: _Optional[_Union[Series, _Mapping]] = ...) -> None: ...

class DeleteSeriesRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteSeriesResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DoubleValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class LongValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class BoolValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, values: _Optional[_Iterable[bool]] = ...) -> None: ...

class StringValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class DictionaryValues(_message.Message):
    __slots__ = ("dictionary", "indexes")
    DICTIONARY_FIELD_NUMBER: _ClassVar[int]
    INDEXES_FIELD_NUMBER: _ClassVar[int]
    dictionary: _containers.RepeatedScalarFieldContainer[str]
    indexes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, dictionary: _Optional[_Iterable[str]] = ..., indexes: _Optional[_Iterable[int]] = ...) -> None: ...

class TimestampValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class ColumnData(_message.Message):
    __slots__ = ("name", "doubles", "longs", "bools", "strings", "dictionary", "timestamps", "null_rows")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DOUBLES_FIELD_NUMBER: _ClassVar[int]
    LONGS_FIELD_NUMBER: _ClassVar[int]
    BOOLS_FIELD_NUMBER: _ClassVar[int]
    STRINGS_FIELD_NUMBER: _ClassVar[int]
    DICTIONARY_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    NULL_ROWS_FIELD_NUMBER: _ClassVar[int]
    name: str
    doubles: DoubleValues
    longs: LongValues
    bools: BoolValues
    strings: StringValues
    dictionary: DictionaryValues
    timestamps: TimestampValues
    null_rows: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., doubles: _Optional[_Union[DoubleValues, _Mapping]] = ..., longs: _Optional[_Union[LongValues, _Mapping]] = ..., bools: _Optional[_Union[BoolValues, _Mapping]] = ..., strings: _Optional[_Union[StringValues, _Mapping]] = ..., dictionary: _Optional[_Union[DictionaryValues, _Mapping]] = ..., timestamps: _Optional[_Union[TimestampValues, _Mapping]] = ..., null_rows: _Optional[_Iterable[int]] = ...) -> None: ...

class RowBatch(_message.Message):
    __slots__ = ("columns",)
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    columns: _containers.RepeatedCompositeFieldContainer[ColumnData]
    def __init__(self, columns: _Optional[_Iterable[_Union[ColumnData, _Mapping]]] = ...) -> None: ...

class WriteRowsRequest(_message.Message):
    __slots__ = ("series", "rows")
    SERIES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    series: str
    rows: RowBatch
    def __init__(self, series: _Optional[str] = ..., rows: _Optional[_Union[RowBatch, _Mapping]] = ...) -> None: ...

class WriteRowsResponse(_message.Message):
    __slots__ = ("row_count",)
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    row_count: int
    def __init__(self, row_count: _Optional[int] = ...) -> None: ...

class StreamWriteRowsRequest(_message.Message):
    __slots__ = ("series", "rows")
    SERIES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    series: str
    rows: RowBatch
    def __init__(self, series: _Optional[str] = ..., rows: _Optional[_Union[RowBatch, _Mapping]] = ...) -> None: ...

class StreamWriteRowsResponse(_message.Message):
    __slots__ = ("batch_index", "row_count", "total_row_count")
    BATCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    batch_index: int
    row_count: int
    total_row_count: int
    def __init__(self, batch_index: _Optional[int] = ..., row_count: _Optional[int] = ..., total_row_count: _Optional[int] = ...) -> None: ...

class TagFilter(_message.Message):
    __slots__ = ("tag", "values")
    TAG_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    tag: str
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tag: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class FieldFilter(_message.Message):
    __slots__ = ("field", "comparison", "double_value", "long_value", "bool_value", "string_value", "timestamp_value")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    COMPARISON_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    LONG_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_VALUE_FIELD_NUMBER: _ClassVar[int]
    field: str
    comparison: Comparison
    double_value: float
    long_value: int
    bool_value: bool
    string_value: str
    timestamp_value: _timestamp_pb2.Timestamp
    def __init__(self, field: _Optional[str] = ..., comparison: _Optional[_Union[Comparison, str]] = ..., double_value: _Optional[float] = ..., long_value: _Optional[int] = ..., bool_value: _Optional[bool] = ..., string_value: _Optional[str] = ..., timestamp_value: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReadRowsRequest(_message.Message):
    __slots__ = ("series", "start_time", "end_time", "columns", "tag_filters", "field_filters", "page_size", "page_token")
    SERIES_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    TAG_FILTERS_FIELD_NUMBER: _ClassVar[int]
    FIELD_FILTERS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    series: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    columns: _containers.RepeatedScalarFieldContainer[str]
    tag_filters: _containers.RepeatedCompositeFieldContainer[TagFilter]
    field_filters: _containers.RepeatedCompositeFieldContainer[FieldFilter]
    page_size: int
    page_token: str
    def __init__(self, series: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., columns: _Optional[_Iterable[str]] = ..., tag_filters: _Optional[_Iterable[_Union[TagFilter, _Mapping]]] = ..., field_filters: _Optional[_Iterable[_Union[FieldFilter, _Mapping]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ReadRowsResponse(_message.Message):
    __slots__ = ("rows", "next_page_token")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rows: RowBatch
    next_page_token: str
    def __init__(self, rows: _Optional[_Union[RowBatch, _Mapping]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Aggregation(_message.Message):
    __slots__ = ("function", "field", "alias")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    function: AggregateFunction
    field: str
    alias: str
    def __init__(self, function: _Optional[_Union[AggregateFunction, str]] = ..., field: _Optional[str] = ..., alias: _Optional[str] = ...) -> None: ...

class Fill(_message.Message):
    __slots__ = ("mode", "value")
    MODE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    mode: FillMode
    value: float
    def __init__(self, mode: _Optional[_Union[FillMode, str]] = ..., value: _Optional[float] = ...) -> None: ...

class AggregateRowsRequest(_message.Message):
    __slots__ = ("series", "start_time", "end_time", "interval", "aggregations", "group_by", "tag_filters", "field_filters", "fill", "page_size", "page_token")
    SERIES_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    AGGREGATIONS_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    TAG_FILTERS_FIELD_NUMBER: _ClassVar[int]
    FIELD_FILTERS_FIELD_NUMBER: _ClassVar[int]
    FILL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    series: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    interval: _duration_pb2.Duration
    aggregations: _containers.RepeatedCompositeFieldContainer[Aggregation]
    group_by: _containers.RepeatedScalarFieldContainer[str]
    tag_filters: _containers.RepeatedCompositeFieldContainer[TagFilter]
    field_filters: _containers.RepeatedCompositeFieldContainer[FieldFilter]
    fill: Fill
    page_size: int
    page_token: str
    def __init__(self, series: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., aggregations: _Optional[_Iterable[_Union[Aggregation, _Mapping]]] = ..., group_by: _Optional[_Iterable[str]] = ..., tag_filters: _Optional[_Iterable[_Union[TagFilter, _Mapping]]] = ..., field_filters: _Optional[_Iterable[_Union[FieldFilter, _Mapping]]] = ..., fill: _Optional[_Union[Fill, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class AggregateRowsResponse(_message.Message):
    __slots__ = ("rows", "next_page_token")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rows: RowBatch
    next_page_token: str
    def __init__(self, rows: _Optional[_Union[RowBatch, _Mapping]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ReadLatestRequest(_message.Message):
    __slots__ = ("series", "partition_by", "end_time", "columns", "tag_filters", "page_size", "page_token")
    SERIES_FIELD_NUMBER: _ClassVar[int]
    PARTITION_BY_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    TAG_FILTERS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    series: str
    partition_by: _containers.RepeatedScalarFieldContainer[str]
    end_time: _timestamp_pb2.Timestamp
    columns: _containers.RepeatedScalarFieldContainer[str]
    tag_filters: _containers.RepeatedCompositeFieldContainer[TagFilter]
    page_size: int
    page_token: str
    def __init__(self, series: _Optional[str] = ..., partition_by: _Optional[_Iterable[str]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., columns: _Optional[_Iterable[str]] = ..., tag_filters: _Optional[_Iterable[_Union[TagFilter, _Mapping]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ReadLatestResponse(_message.Message):
    __slots__ = ("rows", "next_page_token")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rows: RowBatch
    next_page_token: str
    def __init__(self, rows: _Optional[_Union[RowBatch, _Mapping]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DownsamplingRule(_message.Message):
    __slots__ = ("name", "interval", "aggregations", "group_by", "ttl", "view_series", "status")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    AGGREGATIONS_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    VIEW_SERIES_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    name: str
    interval: _duration_pb2.Duration
    aggregations: _containers.RepeatedCompositeFieldContainer[Aggregation]
    group_by: _containers.RepeatedScalarFieldContainer[str]
    ttl: Ttl
    view_series: str
    status: str
    def __init__(self, name: _Optional[str] = ..., interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., aggregations: _Optional[_Iterable[_Union[Aggregation, _Mapping]]] = ..., group_by: _Optional[_Iterable[str]] = ..., ttl: _Optional[_Union[Ttl, _Mapping]] = ..., view_series: _Optional[str] = ..., status: _Optional[str] = ...) -> None: ...

class CreateDownsamplingRuleRequest(_message.Message):
    __slots__ = ("parent", "rule_id", "rule")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    parent: str
    rule_id: str
    rule: DownsamplingRule
    def __init__(self, parent: _Optional[str] = ..., rule_id: _Optional[str] = ..., rule: _Optional[_Union[DownsamplingRule, _Mapping]] = ...) -> None: ...

class CreateDownsamplingRuleResponse(_message.Message):
    __slots__ = ("rule",)
    RULE_FIELD_NUMBER: _ClassVar[int]
    rule: DownsamplingRule
    def __init__(self, rule: _Optional[_Union[DownsamplingRule, _Mapping]] = ...) -> None: ...

class GetDownsamplingRuleRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetDownsamplingRuleResponse(_message.Message):
    __slots__ = ("rule",)
    RULE_FIELD_NUMBER: _ClassVar[int]
    rule: DownsamplingRule
    def __init__(self, rule: _Optional[_Union[DownsamplingRule, _Mapping]] = ...) -> None: ...

class ListDownsamplingRulesRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDownsamplingRulesResponse(_message.Message):
    __slots__ = ("rules", "next_page_token")
    RULES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedCompositeFieldContainer[DownsamplingRule]
    next_page_token: str
    def __init__(self, rules: _Optional[_Iterable[_Union[DownsamplingRule, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteDownsamplingRuleRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteDownsamplingRuleResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
