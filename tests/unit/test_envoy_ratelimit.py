"""Nexus's ``ShouldRateLimit`` called the way Envoy's rate limit filter calls it, over a
real grpc.aio server, answered from the same request gate the entries use."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from datapunk_nexus.envoy_services.ratelimit import RateLimitService
from datapunk_nexus.limits import build_gate
from datapunk_shared.config import RateLimitRule, RateLimitSettings
from datapunk_shared.errors import InvalidArgument
from datapunk_shared.rpc.client import error_from_rpc_error
from datapunk_shared.rpc.interceptor import DatapunkServerInterceptor
from datapunk_shared.rpc.server import create_server
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

SEARCH = "/datapunk.lake.v1.VectorService/SearchPoints"
OK = rls_pb2.RateLimitResponse.Code.OK
OVER = rls_pb2.RateLimitResponse.Code.OVER_LIMIT


@pytest.fixture
async def stub() -> AsyncIterator[rls_pb2_grpc.RateLimitServiceStub]:
    rules = [
        RateLimitRule(name="per-ip", methods=[SEARCH], key="client_ip", rate=2, period=60),
        RateLimitRule(name="per-tenant", methods=["*"], key="tenant", rate=3, period=60),
    ]
    gate = build_gate(RateLimitSettings(backend="memory", rules=rules), None)
    server, port = create_server(
        "127.0.0.1:0", edges=DatapunkServerInterceptor("nexus", access_log="off")
    )
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(RateLimitService(gate), server)
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield rls_pb2_grpc.RateLimitServiceStub(channel)
    await server.stop(None)


def request(
    *, ip: str = "10.0.0.1", tenant: str | None = None, domain: str = "datapunk", hits: int = 0
) -> rls_pb2.RateLimitRequest:
    """The descriptors envoy/generate.py's ``edge_rate_limits`` makes Envoy send."""
    entry = ratelimit_pb2.RateLimitDescriptor.Entry
    descriptors = [
        ratelimit_pb2.RateLimitDescriptor(
            entries=[entry(key="rpc", value=SEARCH), entry(key="remote_address", value=ip)]
        )
    ]
    if tenant is not None:
        descriptors.append(
            ratelimit_pb2.RateLimitDescriptor(entries=[entry(key="tenant", value=tenant)])
        )
    return rls_pb2.RateLimitRequest(domain=domain, descriptors=descriptors, hits_addend=hits)


async def test_calls_within_the_limit_are_ok_with_ratelimit_headers(
    stub: rls_pb2_grpc.RateLimitServiceStub,
) -> None:
    response = await stub.ShouldRateLimit(request())
    assert response.overall_code == OK
    headers = {h.key: h.value for h in response.response_headers_to_add}
    assert headers["ratelimit-limit"] == "2"
    assert headers["ratelimit-remaining"] == "1"
    assert [s.code for s in response.statuses] == [OK]


async def test_over_the_limit_is_over_limit_with_retry_after(
    stub: rls_pb2_grpc.RateLimitServiceStub,
) -> None:
    codes = [(await stub.ShouldRateLimit(request(ip="10.0.0.2"))).overall_code for _ in range(3)]
    assert codes == [OK, OK, OVER]
    refused = await stub.ShouldRateLimit(request(ip="10.0.0.2"))
    headers = {h.key: h.value for h in refused.response_headers_to_add}
    assert int(headers["retry-after"]) >= 1
    assert headers["ratelimit-remaining"] == "0"
    assert refused.statuses[0].duration_until_reset.seconds >= 1
    # Another address has its own bucket.
    assert (await stub.ShouldRateLimit(request(ip="10.0.0.3"))).overall_code == OK


async def test_tenant_descriptor_counts_per_tenant(
    stub: rls_pb2_grpc.RateLimitServiceStub,
) -> None:
    codes = [
        (await stub.ShouldRateLimit(request(ip=f"10.1.0.{i}", tenant="acme"))).overall_code
        for i in range(4)
    ]
    assert codes == [OK, OK, OK, OVER]
    assert (await stub.ShouldRateLimit(request(ip="10.1.1.1", tenant="other"))).overall_code == OK


async def test_hits_addend_counts_several_hits(stub: rls_pb2_grpc.RateLimitServiceStub) -> None:
    assert (await stub.ShouldRateLimit(request(ip="10.2.0.1", hits=3))).overall_code == OVER


@pytest.mark.parametrize(
    ("bad", "reason"), [(dict(domain="other"), "UNKNOWN_DOMAIN"), (dict(hits=1000), "TOO_MANY")]
)
async def test_malformed_requests_are_invalid_argument(
    stub: rls_pb2_grpc.RateLimitServiceStub, bad: dict[str, object], reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ShouldRateLimit(request(**bad))  # type: ignore[arg-type]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = error_from_rpc_error(caught.value)
    assert isinstance(error, InvalidArgument)
    assert error.reason == reason or reason in {v.reason for v in error.violations}
