"""The spatial store's domain: layers, features, query results, and the interface an
engine adapter implements. No gRPC or protobuf here."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, NamedTuple, Protocol, TypeVar

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "Area",
    "BoundingBox",
    "Feature",
    "FeatureDistance",
    "FeatureInput",
    "FeatureRef",
    "Layer",
    "LoadAck",
    "Page",
    "Relation",
    "SpatialStore",
]

DEFAULT_PAGE_SIZE = 100
"""The page size when a request gives none."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Layer:
    """A named set of features. ``feature_count`` is None when it was not counted."""

    layer_id: str
    description: str
    create_time: datetime
    feature_count: int | None = None


class FeatureInput(Protocol):
    """A feature to write: anything with these three text attributes (the protobuf
    ``Feature`` message has them, so write paths take it without copying)."""

    @property
    def id(self) -> str: ...

    @property
    def geometry(self) -> str:
        """GeoJSON geometry text."""
        ...

    @property
    def properties(self) -> str:
        """JSON object text; empty means ``{}``."""
        ...


class Feature(NamedTuple):
    """A stored feature: id, GeoJSON geometry text, JSON properties text. (Named tuples,
    this and ``FeatureDistance``: a query makes one per result, and a tuple is made in
    a fraction of a frozen dataclass's time.)"""

    id: str
    geometry: str
    properties: str


@dataclass(frozen=True, slots=True)
class FeatureRef:
    """A feature named by its layer and id."""

    layer_id: str
    feature_id: str


class FeatureDistance(NamedTuple):
    """A feature found by a distance query and its distance in metres."""

    feature: Feature
    distance_meters: float


@dataclass(frozen=True, slots=True)
class BoundingBox:
    """A longitude/latitude box; ``west > east`` crosses the antimeridian."""

    west: float
    south: float
    east: float
    north: float


Area = str | BoundingBox
"""A query area: GeoJSON geometry text or a bounding box."""


class Relation(enum.Enum):
    """How a feature must relate to a query area."""

    INTERSECTS = "intersects"
    WITHIN = "within"


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of results and the token of the next page ("" after the last)."""

    items: list[T]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class LoadAck:
    """A committed batch of a bulk load."""

    batch_index: int
    written_count: int
    total_written_count: int


class SpatialStore(Protocol):
    """What the SpatialService needs from a spatial engine.

    Errors are ``datapunk_shared.errors`` exceptions: NotFound (LAYER_NOT_FOUND,
    FEATURE_NOT_FOUND), AlreadyExists (LAYER_ALREADY_EXISTS), InvalidArgument with field
    violations for bad input, Unavailable when the engine cannot be reached."""

    async def create_layer(self, layer_id: str, description: str) -> Layer: ...

    async def get_layer(self, layer_id: str) -> Layer: ...

    async def list_layers(self, page_size: int, page_token: str) -> Page[Layer]: ...

    async def delete_layer(self, layer_id: str) -> None: ...

    async def upsert_features(self, layer_id: str, features: Sequence[FeatureInput]) -> int:
        """Write one batch in one transaction; return how many distinct ids it wrote."""
        ...

    def load_features(
        self, layer_id: str, batches: AsyncIterator[Sequence[FeatureInput]]
    ) -> AsyncIterator[LoadAck]:
        """Write each batch in its own transaction and yield its ack once committed."""
        ...

    async def get_feature(self, layer_id: str, feature_id: str) -> Feature: ...

    async def list_features(
        self, layer_id: str, page_size: int, page_token: str
    ) -> Page[Feature]: ...

    async def delete_feature(self, layer_id: str, feature_id: str) -> None: ...

    async def search_within_distance(
        self,
        layer_id: str,
        geometry: str,
        distance_meters: float,
        page_size: int,
        page_token: str,
    ) -> Page[FeatureDistance]: ...

    async def search_nearest(
        self, layer_id: str, geometry: str, limit: int, page_size: int, page_token: str
    ) -> Page[FeatureDistance]: ...

    async def search_intersecting(
        self, layer_id: str, area: Area, relation: Relation, page_size: int, page_token: str
    ) -> Page[Feature]: ...

    async def compute_distance(self, first: FeatureRef, second: FeatureRef) -> float: ...

    async def close(self) -> None: ...
