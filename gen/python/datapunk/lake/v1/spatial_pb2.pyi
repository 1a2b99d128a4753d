import datetime

from buf.validate import validate_pb2 as _validate_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SpatialRelation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPATIAL_RELATION_UNSPECIFIED: _ClassVar[SpatialRelation]
    SPATIAL_RELATION_INTERSECTS: _ClassVar[SpatialRelation]
    SPATIAL_RELATION_WITHIN: _ClassVar[SpatialRelation]
SPATIAL_RELATION_UNSPECIFIED: SpatialRelation
SPATIAL_RELATION_INTERSECTS: SpatialRelation
SPATIAL_RELATION_WITHIN: SpatialRelation

class Layer(_message.Message):
    __slots__ = ("name", "description", "create_time", "feature_count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    FEATURE_COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    create_time: _timestamp_pb2.Timestamp
    feature_count: int
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., feature_count: _Optional[int] = ...) -> None: ...

class Feature(_message.Message):
    __slots__ = ("id", "geometry", "properties")
    ID_FIELD_NUMBER: _ClassVar[int]
    GEOMETRY_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    id: str
    geometry: str
    properties: str
    def __init__(self, id: _Optional[str] = ..., geometry: _Optional[str] = ..., properties: _Optional[str] = ...) -> None: ...

class FeatureDistance(_message.Message):
    __slots__ = ("feature", "distance_meters")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_METERS_FIELD_NUMBER: _ClassVar[int]
    feature: Feature
    distance_meters: float
    def __init__(self, feature: _Optional[_Union[Feature, _Mapping]] = ..., distance_meters: _Optional[float] = ...) -> None: ...

class BoundingBox(_message.Message):
    __slots__ = ("west", "south", "east", "north")
    WEST_FIELD_NUMBER: _ClassVar[int]
    SOUTH_FIELD_NUMBER: _ClassVar[int]
    EAST_FIELD_NUMBER: _ClassVar[int]
    NORTH_FIELD_NUMBER: _ClassVar[int]
    west: float
    south: float
    east: float
    north: float
    def __init__(self, west: _Optional[float] = ..., south: _Optional[float] = ..., east: _Optional[float] = ..., north: _Optional[float] = ...) -> None: ...

class CreateLayerRequest(_message.Message):
    __slots__ = ("layer_id", "layer")
    LAYER_ID_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    layer_id: str
    layer: Layer
    def __init__(self, layer_id: _Optional[str] = ..., layer: _Optional[_Union[Layer, _Mapping]] = ...) -> None: ...

class CreateLayerResponse(_message.Message):
    __slots__ = ("layer",)
    LAYER_FIELD_NUMBER: _ClassVar[int]
    layer: Layer
    def __init__(self, layer: _Optional[_Union[Layer, _Mapping]] = ...) -> None: ...

class GetLayerRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetLayerResponse(_message.Message):
    __slots__ = ("layer",)
    LAYER_FIELD_NUMBER: _ClassVar[int]
    layer: Layer
    def __init__(self, layer: _Optional[_Union[Layer, _Mapping]] = ...) -> None: ...

class ListLayersRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListLayersResponse(_message.Message):
    __slots__ = ("layers", "next_page_token")
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[Layer]
    next_page_token: str
    def __init__(self, layers: _Optional[_Iterable[_Union[Layer, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteLayerRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteLayerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpsertFeaturesRequest(_message.Message):
    __slots__ = ("parent", "features")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    parent: str
    features: _containers.RepeatedCompositeFieldContainer[Feature]
    def __init__(self, parent: _Optional[str] = ..., features: _Optional[_Iterable[_Union[Feature, _Mapping]]] = ...) -> None: ...

class UpsertFeaturesResponse(_message.Message):
    __slots__ = ("written_count",)
    WRITTEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    written_count: int
    def __init__(self, written_count: _Optional[int] = ...) -> None: ...

class LoadFeaturesRequest(_message.Message):
    __slots__ = ("parent", "features")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    parent: str
    features: _containers.RepeatedCompositeFieldContainer[Feature]
    def __init__(self, parent: _Optional[str] = ..., features: _Optional[_Iterable[_Union[Feature, _Mapping]]] = ...) -> None: ...

class LoadFeaturesResponse(_message.Message):
    __slots__ = ("batch_index", "written_count", "total_written_count")
    BATCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_WRITTEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    batch_index: int
    written_count: int
    total_written_count: int
    def __init__(self, batch_index: _Optional[int] = ..., written_count: _Optional[int] = ..., total_written_count: _Optional[int] = ...) -> None: ...

class GetFeatureRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetFeatureResponse(_message.Message):
    __slots__ = ("feature",)
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    feature: Feature
    def __init__(self, feature: _Optional[_Union[Feature, _Mapping]] = ...) -> None: ...

class ListFeaturesRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListFeaturesResponse(_message.Message):
    __slots__ = ("features", "next_page_token")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedCompositeFieldContainer[Feature]
    next_page_token: str
    def __init__(self, features: _Optional[_Iterable[_Union[Feature, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteFeatureRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteFeatureResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SearchWithinDistanceRequest(_message.Message):
    __slots__ = ("parent", "geometry", "distance_meters", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    GEOMETRY_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_METERS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    geometry: str
    distance_meters: float
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., geometry: _Optional[str] = ..., distance_meters: _Optional[float] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class SearchWithinDistanceResponse(_message.Message):
    __slots__ = ("results", "next_page_token")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[FeatureDistance]
    next_page_token: str
    def __init__(self, results: _Optional[_Iterable[_Union[FeatureDistance, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SearchNearestRequest(_message.Message):
    __slots__ = ("parent", "geometry", "limit", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    GEOMETRY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    geometry: str
    limit: int
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., geometry: _Optional[str] = ..., limit: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class SearchNearestResponse(_message.Message):
    __slots__ = ("results", "next_page_token")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[FeatureDistance]
    next_page_token: str
    def __init__(self, results: _Optional[_Iterable[_Union[FeatureDistance, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SearchIntersectingRequest(_message.Message):
    __slots__ = ("parent", "geometry", "bbox", "relation", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    GEOMETRY_FIELD_NUMBER: _ClassVar[int]
    BBOX_FIELD_NUMBER: _ClassVar[int]
    RELATION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    geometry: str
    bbox: BoundingBox
    relation: SpatialRelation
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., geometry: _Optional[str] = ..., bbox: _Optional[_Union[BoundingBox, _Mapping]] = ..., relation: _Optional[_Union[SpatialRelation, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class SearchIntersectingResponse(_message.Message):
    __slots__ = ("features", "next_page_token")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedCompositeFieldContainer[Feature]
    next_page_token: str
    def __init__(self, features: _Optional[_Iterable[_Union[Feature, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ComputeDistanceRequest(_message.Message):
    __slots__ = ("from_feature", "to_feature")
    FROM_FEATURE_FIELD_NUMBER: _ClassVar[int]
    TO_FEATURE_FIELD_NUMBER: _ClassVar[int]
    from_feature: str
    to_feature: str
    def __init__(self, from_feature: _Optional[str] = ..., to_feature: _Optional[str] = ...) -> None: ...

class ComputeDistanceResponse(_message.Message):
    __slots__ = ("distance_meters",)
    DISTANCE_METERS_FIELD_NUMBER: _ClassVar[int]
    distance_meters: float
    def __init__(self, distance_meters: _Optional[float] = ...) -> None: ...
