"""The services' write invalidations in process: which methods are writes (decided once,
reads left untouched), the tag each write publishes (its resource, scoped by tenant, the
naming Nexus's cache uses), nothing for a failed write, every resource of a client
stream, and a failed publication that never fails the write."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from typing import Any

import grpc
import pytest
from datapunk.lake.v1 import spatial_pb2, timeseries_pb2, vectors_pb2
from datapunk_nexus.cache.tags import ResourceTags as NexusTags
from datapunk_shared.auth.identity import Identity, identity_var
from datapunk_shared.config import CacheRule, CacheSettings
from datapunk_shared.errors import InvalidArgument
from datapunk_shared.invalidation import (
    INVALIDATIONS_PUBLISHED,
    InvalidationPublisher,
    WriteInvalidation,
)
from redis.asyncio import Redis

from tests.support import free_port

VS = "/datapunk.lake.v1.VectorService/"
TS = "/datapunk.lake.v1.TimeSeriesService/"


class Recorder:
    """Stands in for the publisher: records what would go to Redis."""

    def __init__(self) -> None:
        self.published: list[list[str]] = []

    async def publish(self, tags: Collection[str]) -> bool:
        self.published.append(list(tags))
        return True


def invalidation(recorder: Recorder, **settings: Any) -> WriteInvalidation:
    cache = CacheSettings(rules=[CacheRule(methods=[VS + "Count*"], ttl=60)], **settings)
    return WriteInvalidation.for_cache(recorder, cache)  # type: ignore[arg-type]


def as_tenant(tenant: str) -> Any:
    return identity_var.set(Identity(subject="client:x", tenant=tenant, kind="client"))


async def answer(request: Any, context: Any) -> str:
    return "done"


async def refuse(request: Any, context: Any) -> str:
    raise InvalidArgument("no", reason="BAD")


def test_reads_public_methods_and_cacheable_methods_are_left_untouched() -> None:
    writes = invalidation(Recorder())
    handler: Any = grpc.unary_unary_rpc_method_handler(answer)
    for method in (
        VS + "GetCollection",
        VS + "SearchPoints",
        VS + "CountPoints",  # cacheable by a rule: Nexus counts it as a read
        "/datapunk.lake.v1.StatusService/GetStatus",
        "/grpc.health.v1.Health/Check",
    ):
        assert writes.wrap(method, handler) is handler, method
    for method in (VS + "UpsertPoints", VS + "CreateCollection", TS + "StreamWriteRows"):
        assert writes.wrap(method, handler) is not handler, method


async def test_a_successful_write_publishes_its_resource_in_its_tenant() -> None:
    recorder = Recorder()
    writes = invalidation(recorder)
    upsert = writes.wrap(VS + "UpsertPoints", grpc.unary_unary_rpc_method_handler(answer))
    create = writes.wrap(VS + "CreateCollection", grpc.unary_unary_rpc_method_handler(answer))
    token = as_tenant("acme")
    try:
        request = vectors_pb2.UpsertPointsRequest(collection="collections/docs")
        assert await upsert.unary_unary(request, None) == "done"
        await create.unary_unary(vectors_pb2.CreateCollectionRequest(collection_id="x"), None)
    finally:
        identity_var.reset(token)
    # Without an identity (authentication off) the write is the default tenant's.
    await upsert.unary_unary(vectors_pb2.UpsertPointsRequest(collection="collections/a"), None)
    assert recorder.published == [
        ["acme/lake/collections/docs"],
        ["acme/lake/collections"],
        ["default/lake/collections/a"],
    ]


def test_the_tags_are_the_ones_nexus_caches_reads_under() -> None:
    nexus = NexusTags()
    writes = invalidation(Recorder())
    cases = [
        (VS + "UpsertPoints", vectors_pb2.UpsertPointsRequest(collection="collections/docs")),
        (VS + "DeletePoints", vectors_pb2.DeletePointsRequest(collection="collections/docs")),
        (
            "/datapunk.lake.v1.SpatialService/DeleteFeature",
            spatial_pb2.DeleteFeatureRequest(name="layers/roads/features/7"),
        ),
        (TS + "WriteRows", timeseries_pb2.WriteRowsRequest(series="series/cpu")),
    ]
    for method, request in cases:
        writes.wrap(method, grpc.unary_unary_rpc_method_handler(answer))
        expected = nexus.tag(method, request.SerializeToString())
        assert writes._tags.message_tag(method, request) == expected
        assert expected.startswith("lake/"), expected
        assert expected.count("/") >= 2, expected  # one resource, not a whole service


async def test_a_failed_write_publishes_nothing() -> None:
    recorder = Recorder()
    writes = invalidation(recorder)
    handler = writes.wrap(VS + "UpsertPoints", grpc.unary_unary_rpc_method_handler(refuse))
    with pytest.raises(InvalidArgument):
        await handler.unary_unary(vectors_pb2.UpsertPointsRequest(collection="collections/d"), None)
    assert recorder.published == []


def batches(*series: str) -> AsyncIterator[Any]:
    async def each() -> AsyncIterator[Any]:
        for name in series:
            yield timeseries_pb2.StreamWriteRowsRequest(series=name)

    return each()


async def test_a_client_stream_publishes_each_batch_before_acknowledging_it() -> None:
    recorder = Recorder()
    writes = invalidation(recorder)
    seen: list[list[list[str]]] = []

    async def write_rows(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[str]:
        async for _ in requests:
            yield "acknowledged"

    handler = writes.wrap(TS + "StreamWriteRows", grpc.stream_stream_rpc_method_handler(write_rows))
    async for _ in handler.stream_stream(batches("series/cpu", "series/mem"), None):
        seen.append([list(p) for p in recorder.published])
    # Each acknowledgement came after its batch's invalidation was published, with the
    # series each batch names (the path names none: the request's series field).
    assert seen[0] == [["default/lake/series/cpu"]]
    assert seen[1][-1] == ["default/lake/series/cpu", "default/lake/series/mem"]
    assert len(recorder.published) == 2  # nothing arrived after the last answer


async def test_a_servicer_reading_ahead_still_publishes_after_each_write() -> None:
    recorder = Recorder()
    writes = invalidation(recorder)
    written: list[str] = []
    published_after: dict[str, list[list[str]]] = {}

    async def read_ahead(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[str]:
        # Reads the second batch before the first one is written and acknowledged.
        pending = [message async for message in requests]
        for message in pending:
            written.append(message.series)
            yield "acknowledged"

    handler = writes.wrap(TS + "StreamWriteRows", grpc.stream_stream_rpc_method_handler(read_ahead))
    async for _ in handler.stream_stream(batches("series/cpu", "series/mem"), None):
        published_after[written[-1]] = [list(p) for p in recorder.published]
    # mem's tag was known at cpu's answer, before mem was written: it is published again
    # at mem's own answer, after its write.
    assert "default/lake/series/mem" in published_after["series/mem"][-1]
    assert len(published_after["series/mem"]) == 2


async def test_a_stream_naming_many_resources_publishes_the_list_above_them() -> None:
    recorder = Recorder()
    writes = invalidation(recorder)

    async def write_all(requests: AsyncIterator[Any], context: Any) -> str:
        async for _ in requests:
            pass
        return "done"

    handler = writes.wrap(TS + "StreamWriteRows", grpc.stream_unary_rpc_method_handler(write_all))
    names = [f"series/s{i}" for i in range(100)]
    assert await handler.stream_unary(batches(*names), None) == "done"
    assert recorder.published == [["default/lake/series"]]


async def test_a_failed_publication_does_not_fail_the_write() -> None:
    redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    publisher = InvalidationPublisher(
        redis, service="unit", prefix="unit:", channel="unit:invalidate", timeout=0.5
    )
    failed = INVALIDATIONS_PUBLISHED.labels("unit", "failed")
    before = failed._value.get()
    writes = WriteInvalidation.for_cache(publisher, CacheSettings(rules=[]))
    handler = writes.wrap(VS + "UpsertPoints", grpc.unary_unary_rpc_method_handler(answer))
    try:
        request = vectors_pb2.UpsertPointsRequest(collection="collections/docs")
        assert await handler.unary_unary(request, None) == "done"
    finally:
        await redis.aclose()
    assert failed._value.get() == before + 1
