"""Protobuf messages of datapunk.lake.v1.vectors to domain objects and back."""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC
from typing import Any

import numpy as np
from datapunk.lake.v1 import vectors_pb2 as pb
from datapunk_shared.errors import FieldViolation, InvalidArgument
from datapunk_shared.paging import decode_page_token, encode_page_token, invalid_page_token
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

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
    "scored_list_to_pb",
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
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        return value.number_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_value(v) for v in value.list_value.values]
    return None


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    # Indexing the map by its keys avoids ``items()``, which protobuf's map implements
    # as a Python-level view (measured 1.6x slower for small payloads).
    fields = message.fields
    return {key: _value(fields[key]) for key in fields}


def _struct(payload: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    if not payload:
        return None
    message = struct_pb2.Struct()
    message.update(payload)
    return message


def point_from_pb(message: pb.Point) -> Point:
    return points_from_pb([message])[0]


def _varint(data: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, i
        shift += 7


def _vector_bytes(data: bytes) -> memoryview:
    """The bytes of field 2 (``vector``, packed little-endian float32) of a serialized
    Point, without a copy when they are one packed run (as every encoder sends them)."""
    i, end = 0, len(data)
    spans: list[tuple[int, int]] = []
    while i < end:
        key, i = _varint(data, i)
        wire = key & 7
        if wire == 2:
            length, i = _varint(data, i)
            if key >> 3 == 2:
                spans.append((i, i + length))
            i += length
        elif wire == 0:
            _, i = _varint(data, i)
        elif wire == 5:
            if key >> 3 == 2:  # an unpacked float, as old encoders may send
                spans.append((i, i + 4))
            i += 4
        elif wire == 1:
            i += 8
        else:  # pragma: no cover - groups are not used by proto3
            raise ValueError(f"unexpected wire type {wire}")
    whole = memoryview(data)
    if len(spans) == 1:  # the usual case: one packed run
        view = whole[spans[0][0] : spans[0][1]]
    else:
        view = memoryview(b"".join(whole[start:stop] for start, stop in spans))
    return view


_HEADERS: dict[int, bytes] = {}


def _header(count: int) -> bytes:
    """Tag and length of field 2 (``vector``) holding ``count`` packed floats."""
    header = _HEADERS.get(count)
    if header is None:
        length, encoded = 4 * count, bytearray(b"\x12")
        while length >= 0x80:
            encoded.append(length & 0x7F | 0x80)
            length >>= 7
        encoded.append(length)
        header = _HEADERS.setdefault(count, bytes(encoded))
    return header


def _packed_vector(message: pb.Point) -> memoryview:
    """The bytes of ``message``'s vector as packed little-endian float32, read from its
    serialized form. Usually they follow the id as one packed run of all the values: a
    field boundary holding field 2's tag and the length of ``len(message.vector)`` floats
    can be nothing else, so that is checked without scanning the message; anything else
    (another field order, unpacked or split runs) is scanned field by field."""
    data = message.SerializeToString()
    count = len(message.vector)
    if count == 0:
        return memoryview(b"")
    i = 0
    if data[:1] == b"\x0a" and data[1] < 0x80:  # the id, shorter than 128 bytes
        i = 2 + data[1]
    header = _header(count)
    if data.startswith(header, i):
        start = i + len(header)
        return memoryview(data)[start : start + 4 * count]
    return _vector_bytes(data)


def _vector_view(message: pb.Point) -> Any:
    """The vector of a Point as a float32 memoryview over its serialized bytes: no Python
    float per value, as protobuf's own accessor makes. qdrant-edge reads a memoryview as
    fast as a list, and the store checks a whole batch of them at once with numpy
    (``suspect_vectors``)."""
    return _packed_vector(message).cast("f")


def _vector_list(message: pb.Point) -> Any:
    """``_vector_view`` for a big-endian machine, where ``memoryview.cast`` would read
    protobuf's little-endian floats in the wrong byte order."""
    return np.frombuffer(_packed_vector(message), dtype="<f4").tolist()


_vector = _vector_view if sys.byteorder == "little" else _vector_list


def points_from_pb(messages: Sequence[pb.Point]) -> list[Point]:
    """Domain points of a batch. Each vector is a read-only view of the floats as they
    arrived (see ``_vector_view``); payloads become dicts."""
    points = []
    for message in messages:
        vector: Sequence[float] = _vector(message)
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
    message = pb.ScoredPoint()
    add_scored(message, point)
    return message


def add_scored(message: pb.ScoredPoint, point: ScoredPoint) -> None:
    """Fill ``message`` (usually ``response.points.add()``) in place: building each
    ScoredPoint with its PointId as separate messages and copying them in costs 3x more."""
    message.score = point.score
    if isinstance(point.id, int):
        message.id.num = point.id
    else:
        message.id.uuid = point.id
    if point.vector:
        message.vector.extend(point.vector)
    if point.payload:
        message.payload.update(point.payload)


def scored_list_to_pb(
    points: Sequence[ScoredPoint], into: RepeatedCompositeFieldContainer[pb.ScoredPoint]
) -> None:
    """Append ``points`` to a repeated ScoredPoint field."""
    add = into.add
    for point in points:
        add_scored(add(), point)


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
        # One list: qdrant-edge reads it faster than protobuf's container, and the finite
        # check sums it once (protobuf would make a Python float per value each time).
        vector=message.vector[:],
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
