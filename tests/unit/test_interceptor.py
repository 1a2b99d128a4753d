"""The Datapunk interceptor on a real in-process grpc.aio server: contract validation,
error mapping with details, request ids."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from datapunk.lake.v1 import status_pb2, status_pb2_grpc, vectors_pb2
from datapunk_shared.errors import Internal, InvalidArgument, NotFound
from datapunk_shared.rpc.client import LakeClient, error_from_rpc_error
from datapunk_shared.rpc.interceptor import REQUEST_ID_KEY, DatapunkServerInterceptor
from datapunk_shared.rpc.server import create_server
from google.protobuf import duration_pb2
from prometheus_client import REGISTRY, generate_latest


class Servicer(status_pb2_grpc.StatusServiceServicer):
    async def GetStatus(self, request: Any, context: Any) -> Any:
        if "missing" in request.engines:
            raise NotFound("no such engine", reason="ENGINE_NOT_FOUND", metadata={"e": "missing"})
        if "boom" in request.engines:
            raise RuntimeError("secret internals")
        return status_pb2.GetStatusResponse()


@pytest.fixture(params=["registered", "interceptor"])
async def address(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    # The edges work the same wrapped at registration (how services run) and as a plain
    # grpc.aio interceptor.
    edges = DatapunkServerInterceptor("test", access_log="off")
    if request.param == "registered":
        server, port = create_server("127.0.0.1:0", edges=edges)
    else:
        server, port = create_server("127.0.0.1:0", interceptors=[edges])
    status_pb2_grpc.add_StatusServiceServicer_to_server(Servicer(), server)
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


async def test_contract_violation_is_invalid_argument_with_field_violations(address: str) -> None:
    async with LakeClient(address) as client:
        with pytest.raises(InvalidArgument) as caught:
            await client.get_status(engines=["ok", "BAD NAME"], probe_timeout=60)
    fields = {v.field: v.reason for v in caught.value.violations}
    assert fields == {"engines[1]": "string.pattern", "probe_timeout": "duration.gt_lte"}
    assert caught.value.reason == "CONTRACT_VIOLATION"


async def test_domain_error_maps_to_its_code_and_error_info(address: str) -> None:
    async with LakeClient(address) as client:
        with pytest.raises(NotFound) as caught:
            await client.get_status(engines=["missing"])
    assert caught.value.reason == "ENGINE_NOT_FOUND"
    assert caught.value.metadata == {"e": "missing"}


async def test_unexpected_exception_is_internal_without_leaking(address: str) -> None:
    async with LakeClient(address) as client:
        with pytest.raises(Internal) as caught:
            await client.get_status(engines=["boom"])
    assert "secret" not in caught.value.message
    assert caught.value.metadata["request_id"]


async def test_request_id_is_echoed_or_made_up(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        call = stub.GetStatus(
            status_pb2.GetStatusRequest(), metadata=((REQUEST_ID_KEY, "req-123"),)
        )
        await call
        assert (REQUEST_ID_KEY, "req-123") in tuple(await call.trailing_metadata())
        call = stub.GetStatus(status_pb2.GetStatusRequest())
        await call
        made_up = dict(tuple(await call.trailing_metadata()))[REQUEST_ID_KEY]
        assert len(made_up) == 16


async def test_raw_status_details_are_parseable(address: str) -> None:
    request = status_pb2.GetStatusRequest(probe_timeout=duration_pb2.Duration(seconds=-1))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = status_pb2_grpc.StatusServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetStatus(request)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    error = error_from_rpc_error(caught.value)
    assert isinstance(error, InvalidArgument)
    assert [v.field for v in error.violations] == ["probe_timeout"]


GET_COLLECTION = "/datapunk.lake.v1.VectorService/GetCollection"


async def test_empty_requests_are_checked_every_time_and_counted_by_code() -> None:
    # An empty GetCollectionRequest breaks its contract (the name pattern): the verdict of
    # an empty message is kept per type, and must still refuse every such call.
    async def get_collection(request: Any, context: Any) -> Any:
        return vectors_pb2.GetCollectionResponse()

    handler = grpc.unary_unary_rpc_method_handler(
        get_collection,
        request_deserializer=vectors_pb2.GetCollectionRequest.FromString,
        response_serializer=vectors_pb2.GetCollectionResponse.SerializeToString,
    )
    edges = DatapunkServerInterceptor("verdicts", access_log="off")
    server, port = create_server("127.0.0.1:0", edges=edges)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "datapunk.lake.v1.VectorService", {"GetCollection": handler}
            ),
        )
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(
                GET_COLLECTION,
                request_serializer=vectors_pb2.GetCollectionRequest.SerializeToString,
                response_deserializer=vectors_pb2.GetCollectionResponse.FromString,
            )
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call(vectors_pb2.GetCollectionRequest())
                error = error_from_rpc_error(caught.value)
                assert isinstance(error, InvalidArgument)
                assert [v.field for v in error.violations] == ["name"]
            await call(vectors_pb2.GetCollectionRequest(name="collections/c1"))
    finally:
        await server.stop(None)
    text = generate_latest(REGISTRY).decode()
    labels = f'method="{GET_COLLECTION}",service="verdicts"'
    assert f'datapunk_rpc_total{{code="INVALID_ARGUMENT",{labels}}} 2.0' in text
    assert f'datapunk_rpc_total{{code="OK",{labels}}} 1.0' in text
    assert f"datapunk_rpc_duration_seconds_count{{{labels}}} 3.0" in text
    assert f'datapunk_rpc_duration_seconds_bucket{{le="+Inf",{labels}}} 3.0' in text
    assert 'datapunk_rpc_in_flight{service="verdicts"} 0.0' in text
