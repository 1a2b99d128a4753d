"""Validated row batches as pandas DataFrames for the questdb client's ``dataframe()``:
tags become categoricals (sent as ILP symbols), timestamps ``datetime64[us]``, nulls NaN,
NaT, pandas' nullable Int64 or None."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from datapunk_lake.timeseries.domain import Column, ColumnKind, RowBatch, SeriesSchema

__all__ = ["frame_of"]

_NAT = np.iinfo(np.int64).min


def frame_of(schema: SeriesSchema, batch: RowBatch) -> pd.DataFrame:
    """The batch as a DataFrame whose columns are named like the series' columns."""
    data: dict[str, Any] = {}
    tags = set(schema.tags)
    for column in batch.columns:
        data[column.name] = _series_of(column, is_tag=column.name in tags)
    return pd.DataFrame(data, copy=False)


def _series_of(column: Column, *, is_tag: bool) -> Any:
    values = column.values
    nulls = column.null_rows
    kind = column.kind
    if kind is ColumnKind.DOUBLE:
        assert isinstance(values, np.ndarray)
        if len(nulls):
            values = values.astype(np.float64, copy=True)
            values[nulls] = np.nan
        return values
    if kind is ColumnKind.LONG:
        assert isinstance(values, np.ndarray)
        if len(nulls):
            mask = np.zeros(len(values), dtype=bool)
            mask[nulls] = True
            return pd.arrays.IntegerArray(values.astype(np.int64), mask)
        return values
    if kind is ColumnKind.BOOL:
        return values
    if kind is ColumnKind.TIMESTAMP:
        assert isinstance(values, np.ndarray)
        stamps = values.astype(np.int64, copy=bool(len(nulls)))
        if len(nulls):
            stamps[nulls] = _NAT
        return stamps.view("datetime64[us]")
    if kind is ColumnKind.DICTIONARY:
        assert isinstance(values, np.ndarray)
        dictionary = list(column.dictionary)
        codes = values.astype(np.int64)
        if len(nulls):
            codes[nulls] = -1
        if is_tag and len(set(dictionary)) == len(dictionary):
            return pd.Categorical.from_codes(codes, categories=dictionary)
        strings = np.asarray([*dictionary, None], dtype=object)[codes]
        return pd.Categorical(strings) if is_tag else strings
    # STRING
    strings_list: list[str | None] = list(values)
    for row in nulls.tolist():
        strings_list[row] = None
    if is_tag:
        return pd.Categorical(strings_list)
    return np.asarray(strings_list, dtype=object)
