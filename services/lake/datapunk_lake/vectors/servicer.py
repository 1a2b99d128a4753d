"""The gRPC face of the vector store: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from datapunk.lake.v1 import vectors_pb2 as pb
from datapunk.lake.v1 import vectors_pb2_grpc as pb_grpc
from datapunk_shared.errors import FieldViolation, InvalidArgument

from datapunk_lake.vectors.convert import (
    collection_from_pb,
    collection_name,
    collection_to_pb,
    decode_name_token,
    decode_offset_token,
    encode_name_token,
    encode_offset_token,
    filter_from_pb,
    id_from_pb,
    points_from_pb,
    query_from_pb,
    record_to_pb,
    scored_list_to_pb,
    selector_from_pb,
    stats_to_pb,
    struct_to_dict,
)
from datapunk_lake.vectors.store import VectorStore
from datapunk_lake.vectors.streams import read_ahead

__all__ = ["VectorServicer"]

_Context = Any  # grpc.aio.ServicerContext; the servicer never touches it


class VectorServicer(pb_grpc.VectorServiceServicer):
    """datapunk.lake.v1.VectorService over a VectorStore."""

    def __init__(self, store: VectorStore) -> None:
        self.store = store

    async def CreateCollection(
        self, request: pb.CreateCollectionRequest, context: _Context
    ) -> pb.CreateCollectionResponse:
        config = collection_from_pb(request.collection_id, request.collection)
        created = await self.store.create_collection(config)
        return pb.CreateCollectionResponse(collection=collection_to_pb(created))

    async def GetCollection(
        self, request: pb.GetCollectionRequest, context: _Context
    ) -> pb.GetCollectionResponse:
        config = await self.store.get_collection(collection_name(request.name, "name"))
        return pb.GetCollectionResponse(collection=collection_to_pb(config))

    async def ListCollections(
        self, request: pb.ListCollectionsRequest, context: _Context
    ) -> pb.ListCollectionsResponse:
        after = decode_name_token(request.page_token) if request.page_token else ""
        page, last = await self.store.list_collections(after=after, limit=request.page_size or 100)
        return pb.ListCollectionsResponse(
            collections=[collection_to_pb(c) for c in page],
            next_page_token=encode_name_token(last) if last else "",
        )

    async def DeleteCollection(
        self, request: pb.DeleteCollectionRequest, context: _Context
    ) -> pb.DeleteCollectionResponse:
        await self.store.delete_collection(collection_name(request.name, "name"))
        return pb.DeleteCollectionResponse()

    async def GetCollectionStats(
        self, request: pb.GetCollectionStatsRequest, context: _Context
    ) -> pb.GetCollectionStatsResponse:
        stats = await self.store.stats(collection_name(request.name, "name"))
        return pb.GetCollectionStatsResponse(stats=stats_to_pb(stats))

    async def OptimizeCollection(
        self, request: pb.OptimizeCollectionRequest, context: _Context
    ) -> pb.OptimizeCollectionResponse:
        stats = await self.store.optimize(collection_name(request.name, "name"))
        return pb.OptimizeCollectionResponse(stats=stats_to_pb(stats))

    async def UpsertPoints(
        self, request: pb.UpsertPointsRequest, context: _Context
    ) -> pb.UpsertPointsResponse:
        name = collection_name(request.collection, "collection")
        count = await self.store.upsert(name, points_from_pb(request.points))
        return pb.UpsertPointsResponse(upserted_count=count)

    async def ImportPoints(
        self, requests: AsyncIterator[pb.ImportPointsRequest], context: _Context
    ) -> AsyncIterator[pb.ImportPointsResponse]:
        collection = ""
        total = 0
        async for request in read_ahead(requests):
            if not collection:
                collection = request.collection
            elif request.collection != collection:
                raise InvalidArgument(
                    f"batch {request.sequence} names {request.collection!r}; "
                    f"this stream loads {collection!r}",
                    violations=[
                        FieldViolation(
                            "collection",
                            "every batch of a stream must name the same collection",
                            "COLLECTION_CHANGED",
                        )
                    ],
                )
            name = collection_name(collection, "collection")
            count = await self.store.upsert(name, points_from_pb(request.points))
            total += count
            yield pb.ImportPointsResponse(
                sequence=request.sequence, upserted_count=count, total_upserted=total
            )

    async def GetPoints(
        self, request: pb.GetPointsRequest, context: _Context
    ) -> pb.GetPointsResponse:
        records = await self.store.retrieve(
            collection_name(request.collection, "collection"),
            [id_from_pb(i) for i in request.ids],
            with_payload=request.with_payload,
            with_vector=request.with_vector,
        )
        return pb.GetPointsResponse(points=[record_to_pb(r) for r in records])

    async def DeletePoints(
        self, request: pb.DeletePointsRequest, context: _Context
    ) -> pb.DeletePointsResponse:
        await self.store.delete(
            collection_name(request.collection, "collection"), selector_from_pb(request.points)
        )
        return pb.DeletePointsResponse()

    async def SetPayload(
        self, request: pb.SetPayloadRequest, context: _Context
    ) -> pb.SetPayloadResponse:
        await self.store.set_payload(
            collection_name(request.collection, "collection"),
            selector_from_pb(request.points),
            struct_to_dict(request.payload),
            request.payload.ByteSize(),
        )
        return pb.SetPayloadResponse()

    async def SearchPoints(
        self, request: pb.SearchPointsRequest, context: _Context
    ) -> pb.SearchPointsResponse:
        results = await self.store.search(
            collection_name(request.collection, "collection"), [query_from_pb(request.query)]
        )
        response = pb.SearchPointsResponse()
        scored_list_to_pb(results[0], response.points)
        return response

    async def BatchSearchPoints(
        self, request: pb.BatchSearchPointsRequest, context: _Context
    ) -> pb.BatchSearchPointsResponse:
        results = await self.store.search(
            collection_name(request.collection, "collection"),
            [query_from_pb(q) for q in request.queries],
            path="queries",
        )
        response = pb.BatchSearchPointsResponse()
        for found in results:
            scored_list_to_pb(found, response.results.add().points)
        return response

    async def ScrollPoints(
        self, request: pb.ScrollPointsRequest, context: _Context
    ) -> pb.ScrollPointsResponse:
        page = await self.store.scroll(
            collection_name(request.collection, "collection"),
            filter=filter_from_pb(request.filter) if request.HasField("filter") else None,
            offset=decode_offset_token(request.page_token) if request.page_token else None,
            limit=request.page_size or 100,
            with_payload=request.with_payload,
            with_vector=request.with_vector,
        )
        return pb.ScrollPointsResponse(
            points=[record_to_pb(r) for r in page.records],
            next_page_token=encode_offset_token(page.next_offset)
            if page.next_offset is not None
            else "",
        )

    async def CountPoints(
        self, request: pb.CountPointsRequest, context: _Context
    ) -> pb.CountPointsResponse:
        count = await self.store.count(
            collection_name(request.collection, "collection"),
            filter_from_pb(request.filter) if request.HasField("filter") else None,
        )
        return pb.CountPointsResponse(count=count)
