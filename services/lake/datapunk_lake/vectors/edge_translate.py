"""Domain types to qdrant-edge objects and back (pure functions, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import qdrant_edge as qe

from datapunk_lake.vectors.domain import (
    CollectionConfig,
    Condition,
    DatetimeRange,
    Distance,
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
    Quantization,
    Record,
    ScoredPoint,
    TextMatch,
    VectorQuery,
    point_id_of,
    vector_of,
)

__all__ = [
    "edge_config",
    "edge_filter",
    "edge_query",
    "record_of",
    "schema_type",
    "scored_of",
]

_DISTANCES = {
    Distance.COSINE: qe.Distance.Cosine,
    Distance.DOT: qe.Distance.Dot,
    Distance.EUCLID: qe.Distance.Euclid,
}

_SCHEMA = {
    FieldType.KEYWORD: qe.PayloadSchemaType.Keyword,
    FieldType.INTEGER: qe.PayloadSchemaType.Integer,
    FieldType.FLOAT: qe.PayloadSchemaType.Float,
    FieldType.BOOL: qe.PayloadSchemaType.Bool,
    FieldType.GEO: qe.PayloadSchemaType.Geo,
    FieldType.DATETIME: qe.PayloadSchemaType.Datetime,
    FieldType.TEXT: qe.PayloadSchemaType.Text,
}


def schema_type(kind: FieldType) -> qe.PayloadSchemaType:
    return _SCHEMA[kind]


def edge_config(config: CollectionConfig) -> qe.EdgeConfig:
    """The qdrant-edge shard configuration of a collection."""
    quantization: Any = None
    if config.quantization is Quantization.SCALAR:
        quantization = qe.ScalarQuantizationConfig(
            type=qe.ScalarType.Int8,
            quantile=config.quantile or None,
            always_ram=config.quantization_always_ram or None,
        )
    elif config.quantization is Quantization.BINARY:
        quantization = qe.BinaryQuantizationConfig(
            always_ram=config.quantization_always_ram or None
        )
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(
            size=config.vector_size,
            distance=_DISTANCES[config.distance],
            on_disk=True if config.on_disk else None,
        ),
        hnsw_config=qe.HnswIndexConfig(
            m=config.hnsw.m,
            ef_construct=config.hnsw.ef_construct,
            full_scan_threshold=config.hnsw.full_scan_threshold_kb,
        ),
        quantization_config=quantization,
        # Segments smaller than the full-scan threshold are searched exactly anyway, so
        # they are not worth an HNSW graph either.
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=config.hnsw.full_scan_threshold_kb),
    )


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def _field(condition: FieldCondition) -> Any:
    p = condition.predicate
    key = condition.key
    if isinstance(p, Match):
        value: Any = p.value
        if isinstance(value, bool):
            # qdrant-edge-py 0.9 reads a Python bool as the integer 1/0 (bool subclasses
            # int), which never matches a stored boolean; numpy's bool is not an int, so
            # it arrives as a boolean.
            value = np.bool_(value)
        return qe.FieldCondition(key, match=qe.MatchValue(value))
    if isinstance(p, MatchAny):
        return qe.FieldCondition(key, match=qe.MatchAny(list(p.values)))  # type: ignore[arg-type]
    if isinstance(p, NumberRange):
        return qe.FieldCondition(key, range=qe.RangeFloat(gt=p.gt, gte=p.gte, lt=p.lt, lte=p.lte))
    if isinstance(p, DatetimeRange):
        return qe.FieldCondition(
            key,
            range=qe.RangeDateTime(gt=_iso(p.gt), gte=_iso(p.gte), lt=_iso(p.lt), lte=_iso(p.lte)),
        )
    if isinstance(p, GeoRadius):
        return qe.FieldCondition(
            key, geo_radius=qe.GeoRadius(qe.GeoPoint(lon=p.lon, lat=p.lat), p.radius_meters)
        )
    if isinstance(p, GeoBox):
        return qe.FieldCondition(
            key,
            geo_bounding_box=qe.GeoBoundingBox(
                qe.GeoPoint(lon=p.top_left_lon, lat=p.top_left_lat),
                qe.GeoPoint(lon=p.bottom_right_lon, lat=p.bottom_right_lat),
            ),
        )
    if isinstance(p, TextMatch):
        return qe.FieldCondition(key, match=qe.MatchText(p.text))
    raise TypeError(f"unknown predicate {p!r}")  # pragma: no cover


def _condition(condition: Condition) -> Any:
    if isinstance(condition, FieldCondition):
        return _field(condition)
    if isinstance(condition, Filter):
        return edge_filter(condition)
    if isinstance(condition, Nested):
        return qe.NestedCondition(condition.key, edge_filter(condition.filter))
    if isinstance(condition, HasId):
        return qe.HasIdCondition(set(condition.ids))
    raise TypeError(f"unknown condition {condition!r}")  # pragma: no cover


def edge_filter(flt: Filter) -> qe.Filter:
    return qe.Filter(
        must=[_condition(c) for c in flt.must] or None,
        should=[_condition(c) for c in flt.should] or None,
        must_not=[_condition(c) for c in flt.must_not] or None,
    )


def edge_query(query: VectorQuery, default_ef: int) -> qe.QueryRequest:
    return qe.QueryRequest(
        limit=query.limit,
        offset=query.offset or None,
        query=qe.Query.Nearest(query.vector),  # type: ignore[arg-type]
        filter=edge_filter(query.filter)
        if query.filter is not None and not query.filter.is_empty()
        else None,
        score_threshold=query.score_threshold,
        params=qe.SearchParams(hnsw_ef=query.hnsw_ef or default_ef, exact=query.exact),
        with_payload=query.with_payload,
        with_vector=query.with_vector,
    )


def scored_of(point: qe.ScoredPoint) -> ScoredPoint:
    return ScoredPoint(point_id_of(point.id), point.score, vector_of(point.vector), point.payload)


def record_of(record: qe.Record) -> Record:
    return Record(
        id=point_id_of(record.id), vector=vector_of(record.vector), payload=record.payload
    )
