"""The gRPC face of the spatial store: converts ``datapunk.lake.v1`` messages to domain
calls and back, nothing else. Resource names are already checked by the contract's
patterns when a request gets here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from datapunk.lake.v1 import spatial_pb2, spatial_pb2_grpc
from datapunk_shared.errors import FieldViolation, InvalidArgument

from datapunk_lake.spatial.domain import (
    Area,
    BoundingBox,
    Feature,
    FeatureDistance,
    FeatureInput,
    FeatureRef,
    Layer,
    Relation,
    SpatialStore,
)

__all__ = ["SpatialServicer"]

# The generated gRPC module is untyped; use it through Any.
_grpc: Any = spatial_pb2_grpc

_RELATIONS = {
    spatial_pb2.SPATIAL_RELATION_UNSPECIFIED: Relation.INTERSECTS,
    spatial_pb2.SPATIAL_RELATION_INTERSECTS: Relation.INTERSECTS,
    spatial_pb2.SPATIAL_RELATION_WITHIN: Relation.WITHIN,
}


def _layer_id(name: str) -> str:
    return name.removeprefix("layers/")


def _feature_ref(name: str) -> FeatureRef:
    layer, _, feature = name.removeprefix("layers/").partition("/features/")
    return FeatureRef(layer, feature)


def _layer_to_proto(layer: Layer) -> spatial_pb2.Layer:
    message = spatial_pb2.Layer(
        name=f"layers/{layer.layer_id}",
        description=layer.description,
        feature_count=layer.feature_count or 0,
    )
    message.create_time.FromDatetime(layer.create_time)
    return message


def _feature_to_proto(feature: Feature) -> spatial_pb2.Feature:
    return spatial_pb2.Feature(
        id=feature.id, geometry=feature.geometry, properties=feature.properties
    )


def _features(items: list[Feature]) -> list[dict[str, str]]:
    """``Feature`` messages as the dictionaries the response's constructor takes: a
    nested message passed as a message is copied, a dictionary is not."""
    return [{"id": f.id, "geometry": f.geometry, "properties": f.properties} for f in items]


def _add_results(items: list[FeatureDistance], into: Any) -> None:
    """Append ``items`` to a repeated ``FeatureDistance`` field, setting each field in
    place: a nested message passed to a constructor is copied, and even a dictionary
    costs a third more than the fields set one by one (about 40 against 26 µs for a page
    of 14 results, measured in process)."""
    add = into.add
    for (fid, geometry, properties), distance in items:
        result = add(distance_meters=distance)
        feature = result.feature
        feature.id = fid
        feature.geometry = geometry
        feature.properties = properties


class SpatialServicer(_grpc.SpatialServiceServicer):  # type: ignore[misc]
    """``datapunk.lake.v1.SpatialService`` over a :class:`SpatialStore`."""

    def __init__(self, store: SpatialStore) -> None:
        self._store = store

    async def CreateLayer(
        self, request: spatial_pb2.CreateLayerRequest, context: Any
    ) -> spatial_pb2.CreateLayerResponse:
        layer = await self._store.create_layer(request.layer_id, request.layer.description)
        return spatial_pb2.CreateLayerResponse(layer=_layer_to_proto(layer))

    async def GetLayer(
        self, request: spatial_pb2.GetLayerRequest, context: Any
    ) -> spatial_pb2.GetLayerResponse:
        layer = await self._store.get_layer(_layer_id(request.name))
        return spatial_pb2.GetLayerResponse(layer=_layer_to_proto(layer))

    async def ListLayers(
        self, request: spatial_pb2.ListLayersRequest, context: Any
    ) -> spatial_pb2.ListLayersResponse:
        page = await self._store.list_layers(request.page_size, request.page_token)
        return spatial_pb2.ListLayersResponse(
            layers=[_layer_to_proto(layer) for layer in page.items],
            next_page_token=page.next_page_token,
        )

    async def DeleteLayer(
        self, request: spatial_pb2.DeleteLayerRequest, context: Any
    ) -> spatial_pb2.DeleteLayerResponse:
        await self._store.delete_layer(_layer_id(request.name))
        return spatial_pb2.DeleteLayerResponse()

    async def UpsertFeatures(
        self, request: spatial_pb2.UpsertFeaturesRequest, context: Any
    ) -> spatial_pb2.UpsertFeaturesResponse:
        written = await self._store.upsert_features(_layer_id(request.parent), request.features)
        return spatial_pb2.UpsertFeaturesResponse(written_count=written)

    async def LoadFeatures(
        self, requests: AsyncIterator[spatial_pb2.LoadFeaturesRequest], context: Any
    ) -> AsyncIterator[spatial_pb2.LoadFeaturesResponse]:
        first = await anext(aiter(requests), None)
        if first is None:
            return
        parent = first.parent

        async def batches() -> AsyncIterator[Sequence[FeatureInput]]:
            yield first.features
            index = 1
            async for request in requests:
                if request.parent != parent:
                    raise InvalidArgument(
                        f"batch {index} names parent {request.parent!r}, but this stream "
                        f"loads {parent!r}",
                        violations=[
                            FieldViolation(
                                "parent", "must be the same in every batch", "PARENT_CHANGED"
                            )
                        ],
                        reason="PARENT_CHANGED",
                        metadata={"batch_index": str(index)},
                    )
                yield request.features
                index += 1

        async for ack in self._store.load_features(_layer_id(parent), batches()):
            yield spatial_pb2.LoadFeaturesResponse(
                batch_index=ack.batch_index,
                written_count=ack.written_count,
                total_written_count=ack.total_written_count,
            )

    async def GetFeature(
        self, request: spatial_pb2.GetFeatureRequest, context: Any
    ) -> spatial_pb2.GetFeatureResponse:
        ref = _feature_ref(request.name)
        feature = await self._store.get_feature(ref.layer_id, ref.feature_id)
        return spatial_pb2.GetFeatureResponse(feature=_feature_to_proto(feature))

    async def ListFeatures(
        self, request: spatial_pb2.ListFeaturesRequest, context: Any
    ) -> spatial_pb2.ListFeaturesResponse:
        page = await self._store.list_features(
            _layer_id(request.parent), request.page_size, request.page_token
        )
        return spatial_pb2.ListFeaturesResponse(
            features=_features(page.items),
            next_page_token=page.next_page_token,
        )

    async def DeleteFeature(
        self, request: spatial_pb2.DeleteFeatureRequest, context: Any
    ) -> spatial_pb2.DeleteFeatureResponse:
        ref = _feature_ref(request.name)
        await self._store.delete_feature(ref.layer_id, ref.feature_id)
        return spatial_pb2.DeleteFeatureResponse()

    async def SearchWithinDistance(
        self, request: spatial_pb2.SearchWithinDistanceRequest, context: Any
    ) -> spatial_pb2.SearchWithinDistanceResponse:
        page = await self._store.search_within_distance(
            _layer_id(request.parent),
            request.geometry,
            request.distance_meters,
            request.page_size,
            request.page_token,
        )
        response = spatial_pb2.SearchWithinDistanceResponse(next_page_token=page.next_page_token)
        _add_results(page.items, response.results)
        return response

    async def SearchNearest(
        self, request: spatial_pb2.SearchNearestRequest, context: Any
    ) -> spatial_pb2.SearchNearestResponse:
        page = await self._store.search_nearest(
            _layer_id(request.parent),
            request.geometry,
            request.limit,
            request.page_size,
            request.page_token,
        )
        response = spatial_pb2.SearchNearestResponse(next_page_token=page.next_page_token)
        _add_results(page.items, response.results)
        return response

    async def SearchIntersecting(
        self, request: spatial_pb2.SearchIntersectingRequest, context: Any
    ) -> spatial_pb2.SearchIntersectingResponse:
        area: Area
        if request.WhichOneof("area") == "bbox":
            box = request.bbox
            area = BoundingBox(box.west, box.south, box.east, box.north)
        else:
            area = request.geometry
        page = await self._store.search_intersecting(
            _layer_id(request.parent),
            area,
            _RELATIONS[request.relation],
            request.page_size,
            request.page_token,
        )
        return spatial_pb2.SearchIntersectingResponse(
            features=_features(page.items),
            next_page_token=page.next_page_token,
        )

    async def ComputeDistance(
        self, request: spatial_pb2.ComputeDistanceRequest, context: Any
    ) -> spatial_pb2.ComputeDistanceResponse:
        distance = await self._store.compute_distance(
            _feature_ref(request.from_feature), _feature_ref(request.to_feature)
        )
        return spatial_pb2.ComputeDistanceResponse(distance_meters=distance)
