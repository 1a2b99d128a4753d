"""Domain types to qdrant-client models and back (pure functions, no I/O), for the
Qdrant server engine."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from qdrant_client import models as m

from datapunk_lake.vectors.domain import (
    CollectionConfig,
    CollectionStats,
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
    Point,
    Quantization,
    Record,
    ScoredPoint,
    Selector,
    TextMatch,
    VectorQuery,
    point_id_of,
    vector_of,
)

__all__ = [
    "METADATA_KEY",
    "collection_params",
    "config_from_info",
    "point_struct",
    "query_request",
    "record_of",
    "schema_type",
    "scored_of",
    "selector",
    "server_filter",
    "stats_of",
]

METADATA_KEY = "datapunk"
"""The key of the collection metadata holding the Lake's CollectionConfig."""

_DISTANCES = {
    Distance.COSINE: m.Distance.COSINE,
    Distance.DOT: m.Distance.DOT,
    Distance.EUCLID: m.Distance.EUCLID,
}

_SCHEMA = {
    FieldType.KEYWORD: m.PayloadSchemaType.KEYWORD,
    FieldType.INTEGER: m.PayloadSchemaType.INTEGER,
    FieldType.FLOAT: m.PayloadSchemaType.FLOAT,
    FieldType.BOOL: m.PayloadSchemaType.BOOL,
    FieldType.GEO: m.PayloadSchemaType.GEO,
    FieldType.DATETIME: m.PayloadSchemaType.DATETIME,
    FieldType.TEXT: m.PayloadSchemaType.TEXT,
}


def schema_type(kind: FieldType) -> m.PayloadSchemaType:
    return _SCHEMA[kind]


def collection_params(config: CollectionConfig) -> dict[str, Any]:
    """The keyword arguments of ``create_collection`` for a collection."""
    quantization: Any = None
    if config.quantization is Quantization.SCALAR:
        quantization = m.ScalarQuantization(
            scalar=m.ScalarQuantizationConfig(
                type=m.ScalarType.INT8,
                quantile=config.quantile or None,
                always_ram=config.quantization_always_ram or None,
            )
        )
    elif config.quantization is Quantization.BINARY:
        quantization = m.BinaryQuantization(
            binary=m.BinaryQuantizationConfig(always_ram=config.quantization_always_ram or None)
        )
    return {
        "collection_name": config.name,
        "vectors_config": m.VectorParams(
            size=config.vector_size,
            distance=_DISTANCES[config.distance],
            on_disk=True if config.on_disk else None,
        ),
        "hnsw_config": m.HnswConfigDiff(
            m=config.hnsw.m,
            ef_construct=config.hnsw.ef_construct,
            full_scan_threshold=config.hnsw.full_scan_threshold_kb,
        ),
        "quantization_config": quantization,
        "metadata": {METADATA_KEY: config.to_json()},
    }


def config_from_info(name: str, info: m.CollectionInfo) -> CollectionConfig:
    """The Lake's configuration of a collection, from the metadata it stored there."""
    metadata = info.config.metadata or {}
    stored = metadata.get(METADATA_KEY)
    if not isinstance(stored, dict):
        raise ValueError(f"collection {name!r} was not created by the Lake (no metadata)")
    return CollectionConfig.from_json(stored)


def stats_of(info: m.CollectionInfo) -> CollectionStats:
    return CollectionStats(
        points_count=info.points_count or 0,
        indexed_vectors_count=info.indexed_vectors_count or 0,
        segments_count=info.segments_count,
        indexed_payload_points={k: v.points or 0 for k, v in info.payload_schema.items()},
    )


def _iso(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _field(condition: FieldCondition) -> m.FieldCondition:
    p = condition.predicate
    key = condition.key
    if isinstance(p, Match):
        return m.FieldCondition(key=key, match=m.MatchValue(value=p.value))
    if isinstance(p, MatchAny):
        return m.FieldCondition(key=key, match=m.MatchAny(any=list(p.values)))  # type: ignore[arg-type]
    if isinstance(p, NumberRange):
        return m.FieldCondition(key=key, range=m.Range(gt=p.gt, gte=p.gte, lt=p.lt, lte=p.lte))
    if isinstance(p, DatetimeRange):
        return m.FieldCondition(
            key=key,
            range=m.DatetimeRange(gt=_iso(p.gt), gte=_iso(p.gte), lt=_iso(p.lt), lte=_iso(p.lte)),
        )
    if isinstance(p, GeoRadius):
        return m.FieldCondition(
            key=key,
            geo_radius=m.GeoRadius(center=m.GeoPoint(lon=p.lon, lat=p.lat), radius=p.radius_meters),
        )
    if isinstance(p, GeoBox):
        return m.FieldCondition(
            key=key,
            geo_bounding_box=m.GeoBoundingBox(
                top_left=m.GeoPoint(lon=p.top_left_lon, lat=p.top_left_lat),
                bottom_right=m.GeoPoint(lon=p.bottom_right_lon, lat=p.bottom_right_lat),
            ),
        )
    if isinstance(p, TextMatch):
        return m.FieldCondition(key=key, match=m.MatchText(text=p.text))
    raise TypeError(f"unknown predicate {p!r}")  # pragma: no cover


def _condition(condition: Condition) -> Any:
    if isinstance(condition, FieldCondition):
        return _field(condition)
    if isinstance(condition, Filter):
        return server_filter(condition)
    if isinstance(condition, Nested):
        return m.NestedCondition(
            nested=m.Nested(key=condition.key, filter=server_filter(condition.filter))
        )
    if isinstance(condition, HasId):
        return m.HasIdCondition(has_id=list(condition.ids))
    raise TypeError(f"unknown condition {condition!r}")  # pragma: no cover


def server_filter(flt: Filter) -> m.Filter:
    return m.Filter(
        must=[_condition(c) for c in flt.must] or None,
        should=[_condition(c) for c in flt.should] or None,
        must_not=[_condition(c) for c in flt.must_not] or None,
    )


def _optional_filter(flt: Filter | None) -> m.Filter | None:
    return server_filter(flt) if flt is not None and not flt.is_empty() else None


def query_request(query: VectorQuery, default_ef: int) -> m.QueryRequest:
    return m.QueryRequest(
        query=list(query.vector),
        limit=query.limit,
        offset=query.offset or None,
        filter=_optional_filter(query.filter),
        score_threshold=query.score_threshold,
        params=m.SearchParams(hnsw_ef=query.hnsw_ef or default_ef, exact=query.exact),
        with_payload=query.with_payload,
        with_vector=query.with_vector,
    )


def point_struct(point: Point) -> m.PointStruct:
    return m.PointStruct(id=point.id, vector=list(point.vector), payload=point.payload or {})


def selector(chosen: Selector) -> m.PointIdsList | m.FilterSelector:
    if chosen.ids is not None:
        return m.PointIdsList(points=list(chosen.ids))
    return m.FilterSelector(filter=server_filter(chosen.filter or Filter()))


def scored_of(point: m.ScoredPoint) -> ScoredPoint:
    return ScoredPoint(
        id=point_id_of(point.id),
        score=point.score,
        vector=vector_of(point.vector),
        payload=point.payload,
    )


def record_of(record: m.Record) -> Record:
    return Record(
        id=point_id_of(record.id), vector=vector_of(record.vector), payload=record.payload
    )
