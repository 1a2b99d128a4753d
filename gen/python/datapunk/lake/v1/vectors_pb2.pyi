import datetime

from buf.validate import validate_pb2 as _validate_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Distance(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISTANCE_UNSPECIFIED: _ClassVar[Distance]
    DISTANCE_COSINE: _ClassVar[Distance]
    DISTANCE_DOT: _ClassVar[Distance]
    DISTANCE_EUCLID: _ClassVar[Distance]

class PayloadFieldType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PAYLOAD_FIELD_TYPE_UNSPECIFIED: _ClassVar[PayloadFieldType]
    PAYLOAD_FIELD_TYPE_KEYWORD: _ClassVar[PayloadFieldType]
    PAYLOAD_FIELD_TYPE_INTEGER: _ClassVar[PayloadFieldType]
    PAYLOAD_FIELD_TYPE_FLOAT: _ClassVar[PayloadFieldType]
    PAYLOAD_FIELD_TYPE_BOOL: _ClassVar[PayloadFieldType]
    PAYLOAD_FIELD_TYPE_GEO: _ClassVar[PayloadFieldType]
    PAYLOAD_FIELD_TYPE_DATETIME: _ClassVar[PayloadFieldType]
    PAYLOAD_FIELD_TYPE_TEXT: _ClassVar[PayloadFieldType]
DISTANCE_UNSPECIFIED: Distance
DISTANCE_COSINE: Distance
DISTANCE_DOT: Distance
DISTANCE_EUCLID: Distance
PAYLOAD_FIELD_TYPE_UNSPECIFIED: PayloadFieldType
PAYLOAD_FIELD_TYPE_KEYWORD: PayloadFieldType
PAYLOAD_FIELD_TYPE_INTEGER: PayloadFieldType
PAYLOAD_FIELD_TYPE_FLOAT: PayloadFieldType
PAYLOAD_FIELD_TYPE_BOOL: PayloadFieldType
PAYLOAD_FIELD_TYPE_GEO: PayloadFieldType
PAYLOAD_FIELD_TYPE_DATETIME: PayloadFieldType
PAYLOAD_FIELD_TYPE_TEXT: PayloadFieldType

class PayloadField(_message.Message):
    __slots__ = ("name", "type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: PayloadFieldType
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[PayloadFieldType, str]] = ...) -> None: ...

class HnswConfig(_message.Message):
    __slots__ = ("m", "ef_construct", "ef", "full_scan_threshold_kb")
    M_FIELD_NUMBER: _ClassVar[int]
    EF_CONSTRUCT_FIELD_NUMBER: _ClassVar[int]
    EF_FIELD_NUMBER: _ClassVar[int]
    FULL_SCAN_THRESHOLD_KB_FIELD_NUMBER: _ClassVar[int]
    m: int
    ef_construct: int
    ef: int
    full_scan_threshold_kb: int
    def __init__(self, m: _Optional[int] = ..., ef_construct: _Optional[int] = ..., ef: _Optional[int] = ..., full_scan_threshold_kb: _Optional[int] = ...) -> None: ...

class ScalarQuantization(_message.Message):
    __slots__ = ("quantile", "always_ram")
    QUANTILE_FIELD_NUMBER: _ClassVar[int]
    ALWAYS_RAM_FIELD_NUMBER: _ClassVar[int]
    quantile: float
    always_ram: bool
    def __init__(self, quantile: _Optional[float] = ..., always_ram: _Optional[bool] = ...) -> None: ...

class BinaryQuantization(_message.Message):
    __slots__ = ("always_ram",)
    ALWAYS_RAM_FIELD_NUMBER: _ClassVar[int]
    always_ram: bool
    def __init__(self, always_ram: _Optional[bool] = ...) -> None: ...

class Collection(_message.Message):
    __slots__ = ("name", "description", "vector_size", "distance", "hnsw", "scalar_quantization", "binary_quantization", "on_disk", "payload_fields", "create_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    VECTOR_SIZE_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    HNSW_FIELD_NUMBER: _ClassVar[int]
    SCALAR_QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    BINARY_QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    ON_DISK_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELDS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    vector_size: int
    distance: Distance
    hnsw: HnswConfig
    scalar_quantization: ScalarQuantization
    binary_quantization: BinaryQuantization
    on_disk: bool
    payload_fields: _containers.RepeatedCompositeFieldContainer[PayloadField]
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., vector_size: _Optional[int] = ..., distance: _Optional[_Union[Distance, str]] = ..., hnsw: _Optional[_Union[HnswConfig, _Mapping]] = ..., scalar_quantization: _Optional[_Union[ScalarQuantization, _Mapping]] = ..., binary_quantization: _Optional[_Union[BinaryQuantization, _Mapping]] = ..., on_disk: _Optional[bool] = ..., payload_fields: _Optional[_Iterable[_Union[PayloadField, _Mapping]]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CollectionStats(_message.Message):
    __slots__ = ("points_count", "indexed_vectors_count", "segments_count", "disk_bytes", "ram_bytes", "indexed_payload_points")
    class IndexedPayloadPointsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    POINTS_COUNT_FIELD_NUMBER: _ClassVar[int]
    INDEXED_VECTORS_COUNT_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_COUNT_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    RAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    INDEXED_PAYLOAD_POINTS_FIELD_NUMBER: _ClassVar[int]
    points_count: int
    indexed_vectors_count: int
    segments_count: int
    disk_bytes: int
    ram_bytes: int
    indexed_payload_points: _containers.ScalarMap[str, int]
    def __init__(self, points_count: _Optional[int] = ..., indexed_vectors_count: _Optional[int] = ..., segments_count: _Optional[int] = ..., disk_bytes: _Optional[int] = ..., ram_bytes: _Optional[int] = ..., indexed_payload_points: _Optional[_Mapping[str, int]] = ...) -> None: ...

class PointId(_message.Message):
    __slots__ = ("num", "uuid")
    NUM_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    num: int
    uuid: str
    def __init__(self, num: _Optional[int] = ..., uuid: _Optional[str] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("id", "vector", "payload")
    ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    id: PointId
    vector: _containers.RepeatedScalarFieldContainer[float]
    payload: _struct_pb2.Struct
    def __init__(self, id: _Optional[_Union[PointId, _Mapping]] = ..., vector: _Optional[_Iterable[float]] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ScoredPoint(_message.Message):
    __slots__ = ("id", "score", "payload", "vector")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    id: PointId
    score: float
    payload: _struct_pb2.Struct
    vector: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, id: _Optional[_Union[PointId, _Mapping]] = ..., score: _Optional[float] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., vector: _Optional[_Iterable[float]] = ...) -> None: ...

class PointIdList(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedCompositeFieldContainer[PointId]
    def __init__(self, ids: _Optional[_Iterable[_Union[PointId, _Mapping]]] = ...) -> None: ...

class PointSelector(_message.Message):
    __slots__ = ("ids", "filter")
    IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    ids: PointIdList
    filter: Filter
    def __init__(self, ids: _Optional[_Union[PointIdList, _Mapping]] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("must", "should", "must_not")
    MUST_FIELD_NUMBER: _ClassVar[int]
    SHOULD_FIELD_NUMBER: _ClassVar[int]
    MUST_NOT_FIELD_NUMBER: _ClassVar[int]
    must: _containers.RepeatedCompositeFieldContainer[Condition]
    should: _containers.RepeatedCompositeFieldContainer[Condition]
    must_not: _containers.RepeatedCompositeFieldContainer[Condition]
    def __init__(self, must: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., should: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., must_not: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("field", "filter", "nested", "has_id")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    NESTED_FIELD_NUMBER: _ClassVar[int]
    HAS_ID_FIELD_NUMBER: _ClassVar[int]
    field: FieldCondition
    filter: Filter
    nested: NestedCondition
    has_id: PointIdList
    def __init__(self, field: _Optional[_Union[FieldCondition, _Mapping]] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., nested: _Optional[_Union[NestedCondition, _Mapping]] = ..., has_id: _Optional[_Union[PointIdList, _Mapping]] = ...) -> None: ...

class NestedCondition(_message.Message):
    __slots__ = ("key", "filter")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    key: str
    filter: Filter
    def __init__(self, key: _Optional[str] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class FieldCondition(_message.Message):
    __slots__ = ("key", "match", "any", "range", "datetime_range", "geo_radius", "geo_bounding_box", "text")
    KEY_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    ANY_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    DATETIME_RANGE_FIELD_NUMBER: _ClassVar[int]
    GEO_RADIUS_FIELD_NUMBER: _ClassVar[int]
    GEO_BOUNDING_BOX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    key: str
    match: Match
    any: MatchAny
    range: Range
    datetime_range: DatetimeRange
    geo_radius: GeoRadius
    geo_bounding_box: GeoBoundingBox
    text: str
    def __init__(self, key: _Optional[str] = ..., match: _Optional[_Union[Match, _Mapping]] = ..., any: _Optional[_Union[MatchAny, _Mapping]] = ..., range: _Optional[_Union[Range, _Mapping]] = ..., datetime_range: _Optional[_Union[DatetimeRange, _Mapping]] = ..., geo_radius: _Optional[_Union[GeoRadius, _Mapping]] = ..., geo_bounding_box: _Optional[_Union[GeoBoundingBox, _Mapping]] = ..., text: _Optional[str] = ...) -> None: ...

class Match(_message.Message):
    __slots__ = ("keyword", "integer", "boolean")
    KEYWORD_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    BOOLEAN_FIELD_NUMBER: _ClassVar[int]
    keyword: str
    integer: int
    boolean: bool
    def __init__(self, keyword: _Optional[str] = ..., integer: _Optional[int] = ..., boolean: _Optional[bool] = ...) -> None: ...

class MatchAny(_message.Message):
    __slots__ = ("keywords", "integers")
    KEYWORDS_FIELD_NUMBER: _ClassVar[int]
    INTEGERS_FIELD_NUMBER: _ClassVar[int]
    keywords: _containers.RepeatedScalarFieldContainer[str]
    integers: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, keywords: _Optional[_Iterable[str]] = ..., integers: _Optional[_Iterable[int]] = ...) -> None: ...

class Range(_message.Message):
    __slots__ = ("gt", "gte", "lt", "lte")
    GT_FIELD_NUMBER: _ClassVar[int]
    GTE_FIELD_NUMBER: _ClassVar[int]
    LT_FIELD_NUMBER: _ClassVar[int]
    LTE_FIELD_NUMBER: _ClassVar[int]
    gt: float
    gte: float
    lt: float
    lte: float
    def __init__(self, gt: _Optional[float] = ..., gte: _Optional[float] = ..., lt: _Optional[float] = ..., lte: _Optional[float] = ...) -> None: ...

class DatetimeRange(_message.Message):
    __slots__ = ("gt", "gte", "lt", "lte")
    GT_FIELD_NUMBER: _ClassVar[int]
    GTE_FIELD_NUMBER: _ClassVar[int]
    LT_FIELD_NUMBER: _ClassVar[int]
    LTE_FIELD_NUMBER: _ClassVar[int]
    gt: _timestamp_pb2.Timestamp
    gte: _timestamp_pb2.Timestamp
    lt: _timestamp_pb2.Timestamp
    lte: _timestamp_pb2.Timestamp
    def __init__(self, gt: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., gte: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lt: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lte: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GeoPoint(_message.Message):
    __slots__ = ("lon", "lat")
    LON_FIELD_NUMBER: _ClassVar[int]
    LAT_FIELD_NUMBER: _ClassVar[int]
    lon: float
    lat: float
    def __init__(self, lon: _Optional[float] = ..., lat: _Optional[float] = ...) -> None: ...

class GeoRadius(_message.Message):
    __slots__ = ("center", "radius_meters")
    CENTER_FIELD_NUMBER: _ClassVar[int]
    RADIUS_METERS_FIELD_NUMBER: _ClassVar[int]
    center: GeoPoint
    radius_meters: float
    def __init__(self, center: _Optional[_Union[GeoPoint, _Mapping]] = ..., radius_meters: _Optional[float] = ...) -> None: ...

class GeoBoundingBox(_message.Message):
    __slots__ = ("top_left", "bottom_right")
    TOP_LEFT_FIELD_NUMBER: _ClassVar[int]
    BOTTOM_RIGHT_FIELD_NUMBER: _ClassVar[int]
    top_left: GeoPoint
    bottom_right: GeoPoint
    def __init__(self, top_left: _Optional[_Union[GeoPoint, _Mapping]] = ..., bottom_right: _Optional[_Union[GeoPoint, _Mapping]] = ...) -> None: ...

class VectorQuery(_message.Message):
    __slots__ = ("vector", "limit", "offset", "score_threshold", "filter", "with_payload", "with_vector", "hnsw_ef", "exact")
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    WITH_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTOR_FIELD_NUMBER: _ClassVar[int]
    HNSW_EF_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    vector: _containers.RepeatedScalarFieldContainer[float]
    limit: int
    offset: int
    score_threshold: float
    filter: Filter
    with_payload: bool
    with_vector: bool
    hnsw_ef: int
    exact: bool
    def __init__(self, vector: _Optional[_Iterable[float]] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ..., score_threshold: _Optional[float] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., with_payload: _Optional[bool] = ..., with_vector: _Optional[bool] = ..., hnsw_ef: _Optional[int] = ..., exact: _Optional[bool] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("collection_id", "collection")
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection_id: str
    collection: Collection
    def __init__(self, collection_id: _Optional[str] = ..., collection: _Optional[_Union[Collection, _Mapping]] = ...) -> None: ...

class CreateCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ...) -> None: ...

class GetCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections", "next_page_token")
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[Collection]
    next_page_token: str
    def __init__(self, collections: _Optional[_Iterable[_Union[Collection, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCollectionStatsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetCollectionStatsResponse(_message.Message):
    __slots__ = ("stats",)
    STATS_FIELD_NUMBER: _ClassVar[int]
    stats: CollectionStats
    def __init__(self, stats: _Optional[_Union[CollectionStats, _Mapping]] = ...) -> None: ...

class OptimizeCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class OptimizeCollectionResponse(_message.Message):
    __slots__ = ("stats",)
    STATS_FIELD_NUMBER: _ClassVar[int]
    stats: CollectionStats
    def __init__(self, stats: _Optional[_Union[CollectionStats, _Mapping]] = ...) -> None: ...

class UpsertPointsRequest(_message.Message):
    __slots__ = ("collection", "points")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    points: _containers.RepeatedCompositeFieldContainer[Point]
    def __init__(self, collection: _Optional[str] = ..., points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ...) -> None: ...

class UpsertPointsResponse(_message.Message):
    __slots__ = ("upserted_count",)
    UPSERTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    upserted_count: int
    def __init__(self, upserted_count: _Optional[int] = ...) -> None: ...

class ImportPointsRequest(_message.Message):
    __slots__ = ("collection", "sequence", "points")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    sequence: int
    points: _containers.RepeatedCompositeFieldContainer[Point]
    def __init__(self, collection: _Optional[str] = ..., sequence: _Optional[int] = ..., points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ...) -> None: ...

class ImportPointsResponse(_message.Message):
    __slots__ = ("sequence", "upserted_count", "total_upserted")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    UPSERTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_UPSERTED_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    upserted_count: int
    total_upserted: int
    def __init__(self, sequence: _Optional[int] = ..., upserted_count: _Optional[int] = ..., total_upserted: _Optional[int] = ...) -> None: ...

class GetPointsRequest(_message.Message):
    __slots__ = ("collection", "ids", "with_payload", "with_vector")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    WITH_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTOR_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedCompositeFieldContainer[PointId]
    with_payload: bool
    with_vector: bool
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[_Union[PointId, _Mapping]]] = ..., with_payload: _Optional[bool] = ..., with_vector: _Optional[bool] = ...) -> None: ...

class GetPointsResponse(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[Point]
    def __init__(self, points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ...) -> None: ...

class DeletePointsRequest(_message.Message):
    __slots__ = ("collection", "points")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    points: PointSelector
    def __init__(self, collection: _Optional[str] = ..., points: _Optional[_Union[PointSelector, _Mapping]] = ...) -> None: ...

class DeletePointsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetPayloadRequest(_message.Message):
    __slots__ = ("collection", "points", "payload")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    collection: str
    points: PointSelector
    payload: _struct_pb2.Struct
    def __init__(self, collection: _Optional[str] = ..., points: _Optional[_Union[PointSelector, _Mapping]] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class SetPayloadResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SearchPointsRequest(_message.Message):
    __slots__ = ("collection", "query")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    collection: str
    query: VectorQuery
    def __init__(self, collection: _Optional[str] = ..., query: _Optional[_Union[VectorQuery, _Mapping]] = ...) -> None: ...

class SearchPointsResponse(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[ScoredPoint]
    def __init__(self, points: _Optional[_Iterable[_Union[ScoredPoint, _Mapping]]] = ...) -> None: ...

class BatchSearchPointsRequest(_message.Message):
    __slots__ = ("collection", "queries")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    collection: str
    queries: _containers.RepeatedCompositeFieldContainer[VectorQuery]
    def __init__(self, collection: _Optional[str] = ..., queries: _Optional[_Iterable[_Union[VectorQuery, _Mapping]]] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[ScoredPoint]
    def __init__(self, points: _Optional[_Iterable[_Union[ScoredPoint, _Mapping]]] = ...) -> None: ...

class BatchSearchPointsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResult, _Mapping]]] = ...) -> None: ...

class ScrollPointsRequest(_message.Message):
    __slots__ = ("collection", "filter", "page_size", "page_token", "with_payload", "with_vector")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    WITH_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTOR_FIELD_NUMBER: _ClassVar[int]
    collection: str
    filter: Filter
    page_size: int
    page_token: str
    with_payload: bool
    with_vector: bool
    def __init__(self, collection: _Optional[str] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., with_payload: _Optional[bool] = ..., with_vector: _Optional[bool] = ...) -> None: ...

class ScrollPointsResponse(_message.Message):
    __slots__ = ("points", "next_page_token")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[Point]
    next_page_token: str
    def __init__(self, points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CountPointsRequest(_message.Message):
    __slots__ = ("collection", "filter")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    collection: str
    filter: Filter
    def __init__(self, collection: _Optional[str] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class CountPointsResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...
