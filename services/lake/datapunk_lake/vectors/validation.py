"""Checks the vector store makes before anything reaches an engine: vector sizes and
finite values, payload sizes and the types of declared fields, and filters (depth, and
conditions that fit the declared type of their field). Each problem becomes a
FieldViolation naming the request field it came from."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
from datapunk_shared.errors import FieldViolation

from datapunk_lake.vectors.domain import (
    MAX_FILTER_DEPTH,
    CollectionConfig,
    DatetimeRange,
    FieldCondition,
    FieldType,
    Filter,
    GeoBox,
    GeoRadius,
    HasId,
    Match,
    MatchAny,
    Nested,
    NumberRange,
    TextMatch,
)

__all__ = [
    "check_filter",
    "check_payload",
    "check_vector",
    "float_fields",
    "normalize_payload",
    "suspect_vectors",
]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_EXACT_FLOAT_INT = 2**53


def check_vector(vector: Sequence[float], size: int, path: str, out: list[FieldViolation]) -> None:
    """Append a violation when ``vector`` has the wrong size or a NaN/infinite value."""
    if len(vector) != size:
        out.append(
            FieldViolation(
                path,
                f"the vector has {len(vector)} dimensions; the collection's vectors have {size}",
                "VECTOR_SIZE_MISMATCH",
            )
        )
        return
    # The sum is finite exactly when every value is (float32 values cannot overflow a
    # double sum of at most 65536 terms); it is one C loop, so the common case is cheap.
    if not math.isfinite(sum(vector)):
        bad = next(i for i, v in enumerate(vector) if not math.isfinite(v))
        out.append(
            FieldViolation(
                path,
                f"value {bad} of the vector is {vector[bad]}; vectors must be finite numbers",
                "VECTOR_NOT_FINITE",
            )
        )


def suspect_vectors(vectors: Sequence[Sequence[float]], size: int) -> set[int]:
    """The indexes of a batch's vectors that ``check_vector`` may refuse, found in one
    numpy pass instead of a Python loop per vector; ``check_vector`` then words the
    violation of each. Vectors are the float32 memoryviews ``points_from_pb`` makes (read
    without a copy of their own) or any sequences of numbers."""
    if not vectors:
        return set()
    if any(len(v) != size for v in vectors):
        return set(range(len(vectors)))  # refused anyway: let check_vector sort them out
    matrix: np.ndarray[Any, Any]
    if all(isinstance(v, memoryview) and v.format == "f" for v in vectors):
        matrix = np.frombuffer(b"".join(vectors), dtype=np.float32)  # type: ignore[arg-type]
    else:
        matrix = np.asarray(vectors, dtype=np.float64)
    finite = np.isfinite(matrix.reshape(len(vectors), size)).all(axis=1)
    return set(np.flatnonzero(~finite).tolist())


def float_fields(config: CollectionConfig) -> frozenset[str]:
    """The payload fields declared FLOAT (``normalize_payload`` leaves their numbers be)."""
    return frozenset(f.name for f in config.payload_fields if f.type is FieldType.FLOAT)


def normalize_payload(
    payload: dict[str, Any], config: CollectionConfig, floats: frozenset[str] | None = None
) -> dict[str, Any]:
    """JSON numbers arrive as doubles; whole ones become ints (so integer matches work)
    except in fields declared FLOAT (``floats``: ``float_fields(config)``, computed once
    per batch by callers with many payloads). Modifies and returns ``payload``."""
    if floats is None:
        floats = float_fields(config)
    for key, value in payload.items():
        if key not in floats:
            payload[key] = _ints(value)
    return payload


def _ints(value: Any) -> Any:
    if isinstance(value, float):
        if value.is_integer() and abs(value) < _EXACT_FLOAT_INT:
            return int(value)
        return value
    if isinstance(value, list):
        return [_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    return value


def check_payload(
    payload: Mapping[str, Any],
    size: int,
    config: CollectionConfig,
    max_bytes: int,
    path: str,
    out: list[FieldViolation],
) -> None:
    """Append violations for an oversized payload or declared fields of the wrong type."""
    if size > max_bytes:
        out.append(
            FieldViolation(
                path,
                f"the payload is {size} bytes; the limit is {max_bytes} bytes",
                "PAYLOAD_TOO_LARGE",
            )
        )
        return
    for spec in config.payload_fields:
        if spec.name not in payload:
            continue
        value = payload[spec.name]
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        for item in values:
            problem = _type_problem(item, spec.type)
            if problem:
                out.append(
                    FieldViolation(
                        f"{path}.{spec.name}",
                        f"field {spec.name!r} is declared {spec.type.value}: {problem}",
                        "PAYLOAD_TYPE_MISMATCH",
                    )
                )
                break


def _type_problem(value: Any, kind: FieldType) -> str:
    if kind in (FieldType.KEYWORD, FieldType.TEXT):
        return "" if isinstance(value, str) else f"got {_kind(value)}, want a string"
    if kind is FieldType.BOOL:
        return "" if isinstance(value, bool) else f"got {_kind(value)}, want a boolean"
    if kind is FieldType.INTEGER:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"got {_kind(value)}, want a whole number"
        if isinstance(value, float) and not value.is_integer():
            return f"got {value}, want a whole number"
        if not _INT64_MIN <= value <= _INT64_MAX:
            return f"{value} is out of the 64-bit integer range"
        return ""
    if kind is FieldType.FLOAT:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"got {_kind(value)}, want a number"
        return ""
    if kind is FieldType.GEO:
        if not isinstance(value, dict) or set(value) != {"lon", "lat"}:
            return 'want an object {"lon": <degrees>, "lat": <degrees>}'
        lon, lat = value["lon"], value["lat"]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lon, lat)):
            return "lon and lat must be numbers"
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            return f"({lon}, {lat}) is not a longitude in [-180, 180] and latitude in [-90, 90]"
        return ""
    if kind is FieldType.DATETIME:
        if not isinstance(value, str):
            return f"got {_kind(value)}, want an RFC 3339 string"
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return f"{value!r} is not an RFC 3339 date-time"
        return ""
    return ""  # pragma: no cover - every FieldType is handled above


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "null"


# What each predicate needs of a declared field.
_FITS: dict[type, tuple[FieldType, ...]] = {
    MatchAny: (FieldType.KEYWORD, FieldType.INTEGER),
    NumberRange: (FieldType.INTEGER, FieldType.FLOAT),
    DatetimeRange: (FieldType.DATETIME,),
    GeoRadius: (FieldType.GEO,),
    GeoBox: (FieldType.GEO,),
    TextMatch: (FieldType.TEXT,),
}


def check_filter(
    flt: Filter, config: CollectionConfig, path: str, out: list[FieldViolation], depth: int = 1
) -> None:
    """Append violations for a filter nested too deep, or a condition whose kind does not
    fit the declared type of its field. Undeclared fields are accepted (and scanned)."""
    if depth > MAX_FILTER_DEPTH:
        out.append(
            FieldViolation(
                path,
                f"filters nest at most {MAX_FILTER_DEPTH} levels deep",
                "FILTER_TOO_DEEP",
            )
        )
        return
    types = config.field_types()
    for clause, conditions in (
        ("must", flt.must),
        ("should", flt.should),
        ("must_not", flt.must_not),
    ):
        for index, condition in enumerate(conditions):
            here = f"{path}.{clause}[{index}]"
            if isinstance(condition, Filter):
                check_filter(condition, config, f"{here}.filter", out, depth + 1)
            elif isinstance(condition, Nested):
                # Keys inside a nested filter are relative to the array's objects, which
                # have no declared types; only the depth is checked.
                check_filter(
                    condition.filter,
                    CollectionConfig(config.name, config.vector_size, config.distance),
                    f"{here}.nested.filter",
                    out,
                    depth + 1,
                )
            elif isinstance(condition, FieldCondition):
                _check_condition(condition, types, f"{here}.field", out)
            elif isinstance(condition, HasId):
                pass


def _check_condition(
    condition: FieldCondition,
    types: Mapping[str, FieldType],
    path: str,
    out: list[FieldViolation],
) -> None:
    declared = types.get(condition.key)
    if declared is None:
        return
    predicate = condition.predicate
    if isinstance(predicate, Match):
        value = predicate.value
        if isinstance(value, bool):
            fits: tuple[FieldType, ...] = (FieldType.BOOL,)
        elif isinstance(value, int):
            fits = (FieldType.INTEGER,)
        else:
            fits = (FieldType.KEYWORD,)
    elif isinstance(predicate, MatchAny):
        fits = (
            (FieldType.INTEGER,)
            if predicate.values and isinstance(predicate.values[0], int)
            else (FieldType.KEYWORD,)
        )
    else:
        fits = _FITS[type(predicate)]
    if declared not in fits:
        out.append(
            FieldViolation(
                path,
                f"field {condition.key!r} is declared {declared.value}; "
                f"this condition needs {' or '.join(f.value for f in fits)}",
                "FILTER_TYPE_MISMATCH",
            )
        )
