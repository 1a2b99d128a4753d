"""The time-series store's vocabulary: series schemas, columnar row batches, queries and
downsampling rules, plus the small interface an engine adapter implements.

Nothing here knows gRPC, protobuf or SQL. Timestamps are int64 microseconds since the Unix
epoch (UTC) throughout."""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt
from datapunk_shared.auth.tenancy import split_physical_name

__all__ = [
    "IDENTIFIER",
    "MAX_TABLE_NAME",
    "MAX_TIMESTAMP_US",
    "MIN_TIMESTAMP_US",
    "AggregateFunction",
    "AggregateQuery",
    "Aggregation",
    "Column",
    "ColumnKind",
    "Comparison",
    "DownsamplingRule",
    "FieldFilter",
    "FieldSpec",
    "FieldType",
    "Fill",
    "FillMode",
    "LatestQuery",
    "Partitioning",
    "RangeQuery",
    "RowBatch",
    "SeriesInfo",
    "SeriesSchema",
    "Statement",
    "TagFilter",
    "TimeSeriesEngine",
    "Ttl",
    "TtlUnit",
    "is_table_name",
]

IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
"""Every series, tag, field and rule name: the contract's pattern, checked again here
(with ``fullmatch``: ``$`` alone would let a trailing newline through)."""

MAX_TABLE_NAME = 127
"""QuestDB's longest table name (``cairo.max.file.name.length``, 127 by default)."""


def is_table_name(name: str) -> bool:
    """Whether ``name`` is a QuestDB table or view name the Lake makes: a series (or
    view) id, alone for the default tenant or behind another tenant's ``_<tenant>__``
    (``datapunk_shared.auth.tenancy``)."""
    parts = split_physical_name(name)
    return (
        parts is not None
        and len(name) <= MAX_TABLE_NAME
        and IDENTIFIER.fullmatch(parts[1]) is not None
    )


MIN_TIMESTAMP_US = 0
"""1970-01-01T00:00:00Z: the first timestamp a row may carry."""
MAX_TIMESTAMP_US = 7_258_118_400_000_000
"""2200-01-01T00:00:00Z: timestamps must be before this."""


class FieldType(enum.Enum):
    """The type of a field, named like QuestDB's column type."""

    DOUBLE = "DOUBLE"
    LONG = "LONG"
    BOOLEAN = "BOOLEAN"
    VARCHAR = "VARCHAR"
    TIMESTAMP = "TIMESTAMP"


class Partitioning(enum.Enum):
    """QuestDB's PARTITION BY unit."""

    HOUR = "HOUR"
    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"
    YEAR = "YEAR"


class TtlUnit(enum.Enum):
    """The unit of a TTL, as QuestDB spells it."""

    HOURS = "HOURS"
    DAYS = "DAYS"
    WEEKS = "WEEKS"
    MONTHS = "MONTHS"
    YEARS = "YEARS"


@dataclass(frozen=True, slots=True)
class Ttl:
    """A retention period; ``value`` 0 means forever."""

    value: int
    unit: TtlUnit


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One declared field."""

    name: str
    type: FieldType


@dataclass(frozen=True, slots=True)
class SeriesSchema:
    """A series' declared schema. ``read_only`` marks a downsampling view."""

    series_id: str
    timestamp_column: str
    tags: tuple[str, ...]
    fields: tuple[FieldSpec, ...]
    partitioning: Partitioning = Partitioning.DAY
    ttl: Ttl | None = None
    dedup_keys: tuple[str, ...] = ()
    read_only: bool = False

    def column_type(self, name: str) -> FieldType | str | None:
        """``"TAG"``, ``"DESIGNATED"``, a FieldType, or None for an unknown name."""
        if name == self.timestamp_column:
            return "DESIGNATED"
        if name in self.tags:
            return "TAG"
        for spec in self.fields:
            if spec.name == name:
                return spec.type
        return None

    @property
    def column_names(self) -> tuple[str, ...]:
        return (self.timestamp_column, *self.tags, *(f.name for f in self.fields))


@dataclass(frozen=True, slots=True)
class SeriesInfo:
    """A schema plus what QuestDB reports about the series."""

    schema: SeriesSchema
    row_count: int = 0
    min_time_us: int | None = None
    max_time_us: int | None = None


class ColumnKind(enum.Enum):
    """How a column's values are carried."""

    DOUBLE = "doubles"
    LONG = "longs"
    BOOL = "bools"
    STRING = "strings"
    DICTIONARY = "dictionary"
    TIMESTAMP = "timestamps"


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a batch. ``values`` is a numpy array (for STRING a list of str; for
    DICTIONARY the uint32 indexes into ``dictionary``); ``null_rows`` lists null rows."""

    name: str
    kind: ColumnKind
    values: npt.NDArray[np.generic] | list[str]
    dictionary: Sequence[str] = ()
    null_rows: npt.NDArray[np.uint32] = field(default_factory=lambda: np.empty(0, dtype=np.uint32))

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True, slots=True)
class RowBatch:
    """Rows stored by column."""

    columns: tuple[Column, ...]

    @property
    def row_count(self) -> int:
        return len(self.columns[0]) if self.columns else 0


@dataclass(frozen=True, slots=True)
class TagFilter:
    """tag IN values."""

    tag: str
    values: tuple[str, ...]


class Comparison(enum.Enum):
    """A FieldFilter's operator, as SQL spells it."""

    EQUAL = "="
    NOT_EQUAL = "!="
    LESS = "<"
    LESS_OR_EQUAL = "<="
    GREATER = ">"
    GREATER_OR_EQUAL = ">="


FilterValue = float | int | bool | str


@dataclass(frozen=True, slots=True)
class FieldFilter:
    """field <comparison> value. A timestamp value is given as ``("timestamp", micros)``."""

    field: str
    comparison: Comparison
    value: FilterValue
    is_timestamp: bool = False


@dataclass(frozen=True, slots=True)
class RangeQuery:
    """Raw rows of ``[start_us, end_us)`` in timestamp order."""

    series_id: str
    start_us: int | None
    end_us: int | None
    columns: tuple[str, ...]
    tag_filters: tuple[TagFilter, ...]
    field_filters: tuple[FieldFilter, ...]
    page_size: int


class AggregateFunction(enum.Enum):
    """An aggregate, as QuestDB names it."""

    AVG = "avg"
    MIN = "min"
    MAX = "max"
    SUM = "sum"
    COUNT = "count"
    FIRST = "first"
    LAST = "last"


@dataclass(frozen=True, slots=True)
class Aggregation:
    """One output column: ``function(field) AS alias``; ``field`` empty for count()."""

    function: AggregateFunction
    field: str
    alias: str

    @staticmethod
    def default_alias(function: AggregateFunction, field_name: str) -> str:
        return f"{function.value}_{field_name}" if field_name else function.value


class FillMode(enum.Enum):
    """SAMPLE BY's FILL."""

    NONE = "NONE"
    NULL = "NULL"
    PREVIOUS = "PREV"
    LINEAR = "LINEAR"
    VALUE = "VALUE"


@dataclass(frozen=True, slots=True)
class Fill:
    mode: FillMode = FillMode.NONE
    value: float = 0.0


@dataclass(frozen=True, slots=True)
class AggregateQuery:
    """Aggregates per interval (and per tag set)."""

    series_id: str
    start_us: int | None
    end_us: int | None
    interval_seconds: int
    aggregations: tuple[Aggregation, ...]
    group_by: tuple[str, ...]
    tag_filters: tuple[TagFilter, ...]
    field_filters: tuple[FieldFilter, ...]
    fill: Fill
    page_size: int


@dataclass(frozen=True, slots=True)
class LatestQuery:
    """The latest row of each tag set, as of ``end_us`` (exclusive)."""

    series_id: str
    partition_by: tuple[str, ...]
    end_us: int | None
    columns: tuple[str, ...]
    tag_filters: tuple[TagFilter, ...]
    page_size: int


@dataclass(frozen=True, slots=True)
class DownsamplingRule:
    """A rule kept by QuestDB as the materialized view ``{series_id}__{rule_id}``."""

    series_id: str
    rule_id: str
    interval_seconds: int
    aggregations: tuple[Aggregation, ...]
    group_by: tuple[str, ...]
    ttl: Ttl | None = None
    status: str = ""

    @property
    def view_id(self) -> str:
        return f"{self.series_id}__{self.rule_id}"


@dataclass(frozen=True, slots=True)
class Statement:
    """SQL text with ``%s`` placeholders and the values bound to them."""

    text: str
    params: tuple[object, ...] = ()


class TimeSeriesEngine(Protocol):
    """What the store needs from an engine. Adapters raise datapunk_shared.errors.

    The engine knows physical table names only (``is_table_name``): every name it takes
    and every ``series_id`` it returns is one; the store maps tenants' names to them."""

    async def describe(self, series_id: str) -> SeriesInfo | None:
        """The series or downsampling view of that name, or None."""
        ...

    async def list_series(self, after: str, before: str, limit: int) -> list[SeriesInfo]:
        """Series (not views) with names strictly between ``after`` and ``before``, in
        name order."""
        ...

    async def execute(self, statement: Statement) -> None:
        """Run a DDL statement."""
        ...

    async def fetch(self, statement: Statement) -> RowBatch:
        """Run a query; the result by column."""
        ...

    async def write(self, schema: SeriesSchema, batch: RowBatch) -> None:
        """Write a validated batch as one transaction; return once the engine accepted it."""
        ...

    async def list_rules(self, series_id: str) -> list[DownsamplingRule]:
        """The downsampling rules of a series, in name order."""
        ...

    async def close(self) -> None: ...
