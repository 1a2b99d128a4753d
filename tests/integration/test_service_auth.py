"""A real ``datapunk-lake`` process checks its callers: every call but status, health and
reflection needs a service token of the trusted issuer for ``datapunk:lake``, on unary
calls and on streams alike, and a refused call does nothing. Credentials come from the
suite's issuer (``tests.auth_support``), whose JWKS the Lake fetches over HTTP."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any

import grpc
import pytest
from datapunk.lake.v1 import status_pb2, status_pb2_grpc
from datapunk.lake.v1 import vectors_pb2 as pb
from datapunk.lake.v1 import vectors_pb2_grpc as pb_grpc
from datapunk_shared.auth.interceptor import ON_BEHALF_KEY, encode_on_behalf
from datapunk_shared.rpc.client import error_from_rpc_error
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.auth_support import authed_channel, authed_sync_channel, issuer, tenant_caller
from tests.support import RunningService, run_service

Metadata = tuple[tuple[str, str], ...]
DEFAULT_CLIENT = tenant_caller("default")


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    with run_service("lake", tmp_path_factory.mktemp("lake-auth")) as service:
        yield service


@pytest.fixture
async def stub(lake: RunningService) -> AsyncIterator[Any]:
    """The Lake's VectorService on a channel that adds no credentials of its own."""
    async with grpc.aio.insecure_channel(lake.address) as channel:
        yield pb_grpc.VectorServiceStub(channel)


def _bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def _collection(name: str) -> pb.CreateCollectionRequest:
    return pb.CreateCollectionRequest(
        collection_id=name, collection=pb.Collection(vector_size=2, distance=pb.DISTANCE_EUCLID)
    )


def _import(collection: str, first: int) -> Iterator[pb.ImportPointsRequest]:
    for sequence in range(first, first + 2):
        yield pb.ImportPointsRequest(
            collection=f"collections/{collection}",
            sequence=sequence,
            points=[pb.Point(id=pb.PointId(num=sequence), vector=[1.0, float(sequence)])],
        )


async def _refusal(call: Awaitable[Any], *secrets: str) -> str:
    """Await ``call``, which must be refused as unauthenticated; its reason. The answer
    carries none of ``secrets``."""
    try:
        await call
    except grpc.aio.AioRpcError as refused:
        error = refused
    else:
        raise AssertionError("the call was served")
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
    shown = repr((error.details(), error.trailing_metadata()))
    assert all(secret not in shown for secret in secrets)
    return error_from_rpc_error(error).reason


async def test_calls_without_a_service_token_for_the_lake_are_refused(stub: Any) -> None:
    client = issuer().token(subject="client:bot", datapunk_tenant="default")
    for_stream = issuer().token(audience="datapunk:stream")
    cases: list[tuple[Metadata, str, str]] = [
        ((), "MISSING_CREDENTIALS", ""),
        (_bearer(client), "WRONG_PRINCIPAL_KIND", client),
        (_bearer(for_stream), "WRONG_AUDIENCE", for_stream),
    ]
    for metadata, reason, token in cases:
        secrets = (token,) if token else ()
        listed = stub.ListCollections(pb.ListCollectionsRequest(), metadata=metadata)
        assert await _refusal(listed, *secrets) == reason
        # A stream is refused when it opens, before its first message. The client writes
        # nothing and reads: a write racing the refusal would get grpc.aio's own INTERNAL
        # ("Internal error from Core") in place of the service's status.
        imported = stub.ImportPoints(metadata=metadata)
        assert await _refusal(imported.read(), *secrets) == reason


async def test_only_nexus_may_act_for_someone_else(stub: Any) -> None:
    stream_token = issuer().token(subject="service:stream")
    forged = (*_bearer(stream_token), (ON_BEHALF_KEY, encode_on_behalf(DEFAULT_CLIENT)))
    listed = stub.ListCollections(pb.ListCollectionsRequest(), metadata=forged)
    assert await _refusal(listed, stream_token) == "UNTRUSTED_DELEGATION"


async def test_a_refused_call_changes_nothing(lake: RunningService, stub: Any) -> None:
    name = f"auth{uuid.uuid4().hex[:10]}"
    client = issuer().token(subject="client:bot", datapunk_tenant="default")
    assert await _refusal(stub.CreateCollection(_collection(name))) == "MISSING_CREDENTIALS"
    refused = stub.CreateCollection(_collection(name), metadata=_bearer(client))
    assert await _refusal(refused, client) == "WRONG_PRINCIPAL_KIND"
    async with authed_channel(lake.address, "lake", on_behalf=DEFAULT_CLIENT) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await pb_grpc.VectorServiceStub(channel).GetCollection(
                pb.GetCollectionRequest(name=f"collections/{name}")
            )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_status_and_health_need_no_credentials(lake: RunningService) -> None:
    async with grpc.aio.insecure_channel(lake.address) as channel:
        status = await status_pb2_grpc.StatusServiceStub(channel).GetStatus(
            status_pb2.GetStatusRequest()
        )
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert status.status.service == "lake"
    assert health.status in (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )


async def test_the_suites_channels_carry_credentials_on_every_kind_of_call(
    lake: RunningService,
) -> None:
    """The positive control of the refusals above, and a check of the test helpers
    themselves: ``authed_channel`` and ``authed_sync_channel`` add the token to unary
    calls and to streams (where an interceptor is easily left out)."""
    name = f"auth{uuid.uuid4().hex[:10]}"
    async with authed_channel(lake.address, "lake", on_behalf=DEFAULT_CLIENT) as channel:
        stub = pb_grpc.VectorServiceStub(channel)
        await stub.CreateCollection(_collection(name))
        acks = [ack.sequence async for ack in stub.ImportPoints(_import(name, 0))]
        assert acks == [0, 1]
    with authed_sync_channel(lake.address, "lake", on_behalf=DEFAULT_CLIENT) as sync_channel:
        sync_stub = pb_grpc.VectorServiceStub(sync_channel)
        assert [ack.sequence for ack in sync_stub.ImportPoints(_import(name, 2))] == [2, 3]
        got = sync_stub.GetCollection(pb.GetCollectionRequest(name=f"collections/{name}"))
        assert got.collection.name == f"collections/{name}"
        sync_stub.DeleteCollection(pb.DeleteCollectionRequest(name=f"collections/{name}"))
