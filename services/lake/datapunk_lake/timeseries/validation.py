"""Checks a row batch against a series' schema before anything reaches QuestDB.

ILP would create unknown columns and coerce or refuse values row by row; the Lake refuses
the whole batch up front instead, with one field violation per bad column, so a batch is
written entirely or not at all. NaN and infinities are refused (write nulls through
``null_rows``); timestamps must lie in [1970-01-01, 2200-01-01)."""

from __future__ import annotations

from typing import Any

import numpy as np
from datapunk_shared.errors import FailedPrecondition, FieldViolation, InvalidArgument

from datapunk_lake.timeseries.domain import (
    MAX_TIMESTAMP_US,
    MIN_TIMESTAMP_US,
    Column,
    ColumnKind,
    FieldType,
    RowBatch,
    SeriesSchema,
)

__all__ = ["check_batch"]

_ACCEPTED: dict[FieldType | str, tuple[ColumnKind, ...]] = {
    "DESIGNATED": (ColumnKind.TIMESTAMP,),
    "TAG": (ColumnKind.STRING, ColumnKind.DICTIONARY),
    FieldType.DOUBLE: (ColumnKind.DOUBLE,),
    FieldType.LONG: (ColumnKind.LONG,),
    FieldType.BOOLEAN: (ColumnKind.BOOL,),
    FieldType.VARCHAR: (ColumnKind.STRING, ColumnKind.DICTIONARY),
    FieldType.TIMESTAMP: (ColumnKind.TIMESTAMP,),
}


def check_batch(schema: SeriesSchema, batch: RowBatch, *, max_rows: int, prefix: str) -> None:
    """Raise InvalidArgument (every violation found, one per column at most) unless
    ``batch`` fits ``schema``. ``prefix`` is the field path of the batch ("rows")."""
    if schema.read_only:
        raise FailedPrecondition(
            f"series {schema.series_id!r} is a downsampling view and cannot be written",
            reason="SERIES_READ_ONLY",
            metadata={"series": schema.series_id},
        )
    violations: list[FieldViolation] = []
    rows = batch.row_count
    if rows > max_rows:
        raise InvalidArgument(
            f"the batch holds {rows} rows; at most {max_rows} may be written at once",
            violations=[
                FieldViolation(prefix, f"at most {max_rows} rows per write", "TOO_MANY_ROWS")
            ],
            reason="TOO_MANY_ROWS",
            metadata={"max_rows_per_write": str(max_rows), "rows": str(rows)},
        )
    seen: set[str] = set()
    for index, column in enumerate(batch.columns):
        path = f"{prefix}.columns[{index}]"
        problem = _check_column(schema, column, rows, seen, path)
        if problem is not None:
            violations.append(problem)
        seen.add(column.name)
    if schema.timestamp_column not in seen and rows > 0:
        violations.append(
            FieldViolation(
                f"{prefix}.columns",
                f"the designated timestamp column {schema.timestamp_column!r} is missing",
                "TIMESTAMP_MISSING",
            )
        )
    if violations:
        reason = violations[0].reason
        raise InvalidArgument(
            f"the batch does not fit series {schema.series_id!r}: "
            + "; ".join(f"{v.field}: {v.description}" for v in violations),
            violations=violations,
            reason=reason,
            metadata={"series": schema.series_id},
        )


def _check_column(
    schema: SeriesSchema, column: Column, rows: int, seen: set[str], path: str
) -> FieldViolation | None:
    name = column.name
    if name in seen:
        return FieldViolation(f"{path}.name", f"column {name!r} appears twice", "DUPLICATE_COLUMN")
    declared = schema.column_type(name)
    if declared is None:
        return FieldViolation(
            f"{path}.name",
            f"series {schema.series_id!r} has no column {name!r}",
            "UNKNOWN_COLUMN",
        )
    accepted = _ACCEPTED[declared]
    if column.kind not in accepted:
        wanted = " or ".join(kind.value for kind in accepted)
        shown = declared if isinstance(declared, str) else declared.value
        return FieldViolation(
            f"{path}.{column.kind.value}",
            f"column {name!r} is {shown}; its values must come as {wanted}",
            "TYPE_MISMATCH",
        )
    values_path = (
        f"{path}.dictionary.indexes"
        if column.kind is ColumnKind.DICTIONARY
        else f"{path}.{column.kind.value}.values"
    )
    if len(column) != rows:
        return FieldViolation(
            values_path,
            f"column {name!r} has {len(column)} values but the batch has {rows} rows",
            "COLUMN_LENGTH_MISMATCH",
        )
    nulls = column.null_rows
    if len(nulls):
        if declared == "DESIGNATED":
            return FieldViolation(
                f"{path}.null_rows",
                f"row {int(nulls[0])} has no timestamp; every row needs one",
                "TIMESTAMP_MISSING",
            )
        if declared is FieldType.BOOLEAN:
            return FieldViolation(
                f"{path}.null_rows", f"BOOLEAN column {name!r} cannot be null", "NOT_NULLABLE"
            )
        if int(nulls.max()) >= rows:
            return FieldViolation(
                f"{path}.null_rows",
                f"null row {int(nulls.max())} is outside the batch's {rows} rows",
                "NULL_ROW_OUT_OF_RANGE",
            )
    return _check_values(column, values_path)


def _first_bad(mask: np.ndarray, nulls: np.ndarray) -> int | None:
    """The first index where ``mask`` is true, ignoring null rows."""
    if len(nulls):
        mask = mask.copy()
        mask[nulls] = False
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


def _check_values(column: Column, values_path: str) -> FieldViolation | None:
    values: Any = column.values
    if column.kind is ColumnKind.DOUBLE:
        assert isinstance(values, np.ndarray)
        finite = np.isfinite(values)
        if not finite.all():
            bad = _first_bad(~finite, column.null_rows)
            if bad is not None:
                return FieldViolation(
                    f"{values_path}[{bad}]",
                    f"{float(values[bad])} is not a finite number; NaN and infinities are "
                    "refused (send a null through null_rows)",
                    "NON_FINITE_VALUE",
                )
    elif column.kind is ColumnKind.TIMESTAMP:
        assert isinstance(values, np.ndarray)
        if len(values) and (
            int(values.min()) < MIN_TIMESTAMP_US or int(values.max()) >= MAX_TIMESTAMP_US
        ):
            outside = (values < MIN_TIMESTAMP_US) | (values >= MAX_TIMESTAMP_US)
            bad = _first_bad(outside, column.null_rows)
            if bad is not None:
                return FieldViolation(
                    f"{values_path}[{bad}]",
                    f"timestamp {int(values[bad])} (microseconds since the epoch) is outside "
                    "[1970-01-01T00:00:00Z, 2200-01-01T00:00:00Z)",
                    "TIMESTAMP_OUT_OF_RANGE",
                )
    elif column.kind is ColumnKind.DICTIONARY:
        assert isinstance(values, np.ndarray)
        size = len(column.dictionary)
        if len(values) and int(values.max()) >= size:
            bad = _first_bad(values >= size, column.null_rows)
            if bad is not None:
                return FieldViolation(
                    f"{values_path}[{bad}]",
                    f"index {int(values[bad])} is outside the dictionary of {size} strings",
                    "DICTIONARY_INDEX_OUT_OF_RANGE",
                )
    return None
