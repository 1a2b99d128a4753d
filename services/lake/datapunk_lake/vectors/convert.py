"""Protobuf messages of datapunk.lake.v1.vectors to domain objects and back."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC
from typing import Any

import numpy as np
from datapunk.lake.v1 import vectors_pb2 as pb
from datapunk_shared.errors import FieldViolation, InvalidArgument
from datapunk_shared.paging import decode_page_token, encode_page_token, invalid_page_token
from google.protobuf import struct_pb2, timestamp_pb2

from datapunk_lake.vectors.domain import (
    DEFAULT_EF,
    DEFAULT_EF_CONSTRUCT,
    DEFAULT_FULL_SCAN_THRESHOLD_KB,
    DEFAULT_M,
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
    Hnsw,
    Match,
    MatchAny,
    Nested,
    NumberRange,
    PayloadField,
    Point,
    PointId,
    Quantization,
    Record,
    ScoredPoint,
    Selector,
    TextMatch,
    VectorQuery,
)

__all__ = [
    "collection_from_pb",
    "collection_name",
    "collection_to_pb",
    "decode_name_token",
    "decode_offset_token",
    "encode_name_token",
    "encode_offset_token",
    "filter_from_pb",
    "id_from_pb",
    "id_to_pb",
    "point_from_pb",
    "points_from_pb",
    "query_from_pb",
    "record_to_pb",
    "scored_to_pb",
    "selector_from_pb",
    "stats_to_pb",
    "struct_to_dict",
]

_DISTANCE_FROM_PB = {
    pb.DISTANCE_COSINE: Distance.COSINE,
    pb.DISTANCE_DOT: Distance.DOT,
    pb.DISTANCE_EUCLID: Distance.EUCLID,
}
_DISTANCE_TO_PB = {v: k for k, v in _DISTANCE_FROM_PB.items()}
_TYPE_FROM_PB = {
    pb.PAYLOAD_FIELD_TYPE_KEYWORD: FieldType.KEYWORD,
    pb.PAYLOAD_FIELD_TYPE_INTEGER: FieldType.INTEGER,
    pb.PAYLOAD_FIELD_TYPE_FLOAT: FieldType.FLOAT,
    pb.PAYLOAD_FIELD_TYPE_BOOL: FieldType.BOOL,
    pb.PAYLOAD_FIELD_TYPE_GEO: FieldType.GEO,
    pb.PAYLOAD_FIELD_TYPE_DATETIME: FieldType.DATETIME,
    pb.PAYLOAD_FIELD_TYPE_TEXT: FieldType.TEXT,
}
_TYPE_TO_PB = {v: k for k, v in _TYPE_FROM_PB.items()}
_NAME = re.compile(r"^collections/([a-z](?:[a-z0-9_-]{0,48}[a-z0-9])?)(/stats)?$")


def collection_name(resource: str, field: str) -> str:
    """The collection id of a resource name (protovalidate has checked its form)."""
    match = _NAME.match(resource)
    if match is None:
        raise InvalidArgument(
            f"{field}: {resource!r} is not a collection name",
            violations=[FieldViolation(field, "must be collections/{collection_id}", "BAD_NAME")],
        )
    return match.group(1)


# ---- collections ---------------------------------------------------------------------


def collection_from_pb(collection_id: str, message: pb.Collection) -> CollectionConfig:
    hnsw = message.hnsw
    quantization = Quantization.NONE
    quantile = 0.0
    always_ram = False
    kind = message.WhichOneof("quantization")
    if kind == "scalar_quantization":
        quantization = Quantization.SCALAR
        quantile = message.scalar_quantization.quantile
        always_ram = message.scalar_quantization.always_ram
    elif kind == "binary_quantization":
        quantization = Quantization.BINARY
        always_ram = message.binary_quantization.always_ram
    return CollectionConfig(
        name=collection_id,
        vector_size=message.vector_size,
        distance=_DISTANCE_FROM_PB[message.distance],
        hnsw=Hnsw(
            m=hnsw.m or DEFAULT_M,
            ef_construct=hnsw.ef_construct or DEFAULT_EF_CONSTRUCT,
            ef=hnsw.ef or DEFAULT_EF,
            full_scan_threshold_kb=hnsw.full_scan_threshold_kb or DEFAULT_FULL_SCAN_THRESHOLD_KB,
        ),
        quantization=quantization,
        quantile=quantile,
        quantization_always_ram=always_ram,
        on_disk=message.on_disk,
        payload_fields=tuple(
            PayloadField(f.name, _TYPE_FROM_PB[f.type]) for f in message.payload_fields
        ),
        description=message.description,
    )


def collection_to_pb(config: CollectionConfig) -> pb.Collection:
    message = pb.Collection(
        name=f"collections/{config.name}",
        description=config.description,
        vector_size=config.vector_size,
        distance=_DISTANCE_TO_PB[config.distance],
        hnsw=pb.HnswConfig(
            m=config.hnsw.m,
            ef_construct=config.hnsw.ef_construct,
            ef=config.hnsw.ef,
            full_scan_threshold_kb=config.hnsw.full_scan_threshold_kb,
        ),
        on_disk=config.on_disk,
        payload_fields=[
            pb.PayloadField(name=f.name, type=_TYPE_TO_PB[f.type]) for f in config.payload_fields
        ],
    )
    if config.quantization is Quantization.SCALAR:
        message.scalar_quantization.quantile = config.quantile
        message.scalar_quantization.always_ram = config.quantization_always_ram
    elif config.quantization is Quantization.BINARY:
        message.binary_quantization.always_ram = config.quantization_always_ram
    if config.create_time is not None:
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(config.create_time)
        message.create_time.CopyFrom(stamp)
    return message


def stats_to_pb(stats: CollectionStats) -> pb.CollectionStats:
    return pb.CollectionStats(
        points_count=stats.points_count,
        indexed_vectors_count=stats.indexed_vectors_count,
        segments_count=stats.segments_count,
        disk_bytes=stats.disk_bytes,
        ram_bytes=stats.ram_bytes,
        indexed_payload_points=dict(stats.indexed_payload_points),
    )


# ---- points --------------------------------------------------------------------------


def id_from_pb(message: pb.PointId) -> PointId:
    if message.WhichOneof("kind") == "uuid":
        return str(uuid.UUID(message.uuid))  # canonical lower-case form
    return message.num


def id_to_pb(value: PointId) -> pb.PointId:
    return pb.PointId(num=value) if isinstance(value, int) else pb.PointId(uuid=value)


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return value.number_value
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_value(v) for v in value.list_value.values]
    return None


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    return {key: _value(value) for key, value in message.fields.items()}


def _struct(payload: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    if not payload:
        return None
    message = struct_pb2.Struct()
    message.update(payload)
    return message


def point_from_pb(message: pb.Point) -> Point:
    if message.HasField("payload"):
        payload = message.payload
        return Point(
            id_from_pb(message.id), message.vector, struct_to_dict(payload), payload.ByteSize()
        )
    return Point(id_from_pb(message.id), message.vector)


def _varint(data: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, i
        shift += 7


def _vector_bytes(data: bytes) -> bytes:
    """The packed little-endian float32 payload of field 2 (``vector``) of a serialized
    Point. protobuf's own parser reads each float into a Python object; the Lake reads
    whole batches of vectors at C speed instead (``np.frombuffer``)."""
    i, end = 0, len(data)
    chunks: list[bytes] = []
    while i < end:
        key, i = _varint(data, i)
        wire = key & 7
        if wire == 2:
            length, i = _varint(data, i)
            if key >> 3 == 2:
                chunks.append(data[i : i + length])
            i += length
        elif wire == 0:
            _, i = _varint(data, i)
        elif wire == 5:
            if key >> 3 == 2:  # an unpacked float, as old encoders may send
                chunks.append(data[i : i + 4])
            i += 4
        elif wire == 1:
            i += 8
        else:  # pragma: no cover - groups are not used by proto3
            raise ValueError(f"unexpected wire type {wire}")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def points_from_pb(messages: Sequence[pb.Point]) -> list[Point]:
    """Domain points of a batch, vectors as Python lists decoded in bulk."""
    raw = [_vector_bytes(m.SerializeToString()) for m in messages]
    sizes = {len(r) for r in raw}
    vectors: list[list[float]]
    if len(sizes) == 1:
        matrix = np.frombuffer(b"".join(raw), dtype="<f4").reshape(len(raw), -1)
        vectors = matrix.tolist()
    else:
        vectors = [np.frombuffer(r, dtype="<f4").tolist() for r in raw]
    points = []
    for message, vector in zip(messages, vectors, strict=True):
        if message.HasField("payload"):
            payload = message.payload
            points.append(
                Point(id_from_pb(message.id), vector, struct_to_dict(payload), payload.ByteSize())
            )
        else:
            points.append(Point(id_from_pb(message.id), vector))
    return points


def record_to_pb(record: Record) -> pb.Point:
    return pb.Point(
        id=id_to_pb(record.id), vector=record.vector or (), payload=_struct(record.payload)
    )


def scored_to_pb(point: ScoredPoint) -> pb.ScoredPoint:
    return pb.ScoredPoint(
        id=id_to_pb(point.id),
        score=point.score,
        vector=point.vector or (),
        payload=_struct(point.payload),
    )


# ---- filters and queries -------------------------------------------------------------


def _field_condition(message: pb.FieldCondition) -> FieldCondition:
    kind = message.WhichOneof("condition")
    predicate: Any
    if kind == "match":
        which = message.match.WhichOneof("value")
        predicate = Match(getattr(message.match, str(which)))
    elif kind == "any":
        predicate = MatchAny(
            tuple(message.any.keywords) if message.any.keywords else tuple(message.any.integers)
        )
    elif kind == "range":
        r = message.range
        predicate = NumberRange(
            gt=r.gt if r.HasField("gt") else None,
            gte=r.gte if r.HasField("gte") else None,
            lt=r.lt if r.HasField("lt") else None,
            lte=r.lte if r.HasField("lte") else None,
        )
    elif kind == "datetime_range":
        d = message.datetime_range
        predicate = DatetimeRange(
            **{
                bound: getattr(d, bound).ToDatetime(tzinfo=UTC)
                for bound in ("gt", "gte", "lt", "lte")
                if d.HasField(bound)
            }
        )
    elif kind == "geo_radius":
        g = message.geo_radius
        predicate = GeoRadius(g.center.lon, g.center.lat, g.radius_meters)
    elif kind == "geo_bounding_box":
        b = message.geo_bounding_box
        predicate = GeoBox(b.top_left.lon, b.top_left.lat, b.bottom_right.lon, b.bottom_right.lat)
    else:
        predicate = TextMatch(message.text)
    return FieldCondition(message.key, predicate)


def _condition(message: pb.Condition) -> Condition:
    kind = message.WhichOneof("kind")
    if kind == "field":
        return _field_condition(message.field)
    if kind == "filter":
        return filter_from_pb(message.filter)
    if kind == "nested":
        return Nested(message.nested.key, filter_from_pb(message.nested.filter))
    return HasId(tuple(id_from_pb(i) for i in message.has_id.ids))


def filter_from_pb(message: pb.Filter, depth: int = 0) -> Filter:
    if depth > 64:  # a hard stop for recursion; the store reports depth > 16 precisely
        raise InvalidArgument("the filter nests too deep", reason="FILTER_TOO_DEEP")
    return Filter(
        must=tuple(_condition(c) for c in message.must),
        should=tuple(_condition(c) for c in message.should),
        must_not=tuple(_condition(c) for c in message.must_not),
    )


def selector_from_pb(message: pb.PointSelector) -> Selector:
    if message.WhichOneof("selector") == "ids":
        return Selector(ids=tuple(id_from_pb(i) for i in message.ids.ids))
    return Selector(filter=filter_from_pb(message.filter))


def query_from_pb(message: pb.VectorQuery) -> VectorQuery:
    return VectorQuery(
        vector=message.vector,
        limit=message.limit or 10,
        offset=message.offset,
        score_threshold=message.score_threshold if message.HasField("score_threshold") else None,
        filter=filter_from_pb(message.filter) if message.HasField("filter") else None,
        with_payload=message.with_payload,
        with_vector=message.with_vector,
        hnsw_ef=message.hnsw_ef or None,
        exact=message.exact,
    )


# ---- page tokens ---------------------------------------------------------------------


def _bad_token(field: str) -> InvalidArgument:
    return invalid_page_token(
        f"{field} is not a token this service issued", "not a page token this service issued", field
    )


def encode_offset_token(offset: PointId) -> str:
    return encode_page_token(f"n:{offset}" if isinstance(offset, int) else f"u:{offset}")


def decode_offset_token(token: str, field: str = "page_token") -> PointId:
    try:
        text = decode_page_token(token)
        kind, _, value = text.partition(":")
        if kind == "n":
            number = int(value)
            if number < 0:
                raise ValueError(value)
            return number
        if kind == "u":
            return str(uuid.UUID(value))
        raise ValueError(text)
    except ValueError:
        raise _bad_token(field) from None


def encode_name_token(name: str) -> str:
    return encode_page_token(f"c:{name}")


def decode_name_token(token: str, field: str = "page_token") -> str:
    try:
        text = decode_page_token(token)
        if not text.startswith("c:"):
            raise ValueError(text)
        return text[2:]
    except ValueError:
        raise _bad_token(field) from None
