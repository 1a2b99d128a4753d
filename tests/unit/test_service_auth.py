"""A service's gRPC edge with the real verifier: tokens of the trusted issuer, fetched
over HTTP from its JWKS, for this service's audience only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from datapunk.nexus.v1 import cache_pb2, cache_pb2_grpc
from datapunk_shared.auth.identity import identity_var
from datapunk_shared.auth.interceptor import CallerAuthenticator
from datapunk_shared.auth.verifiers import build_verifier
from datapunk_shared.config import AuthSettings
from datapunk_shared.rpc.client import error_from_rpc_error
from datapunk_shared.rpc.interceptor import DatapunkServerInterceptor
from datapunk_shared.rpc.server import create_server

from tests.auth_support import authed_channel, issuer, tenant_caller


class WhoCalls(cache_pb2_grpc.CacheServiceServicer):
    async def InvalidateCache(self, request: Any, context: Any) -> Any:
        identity = identity_var.get()
        assert identity is not None
        return cache_pb2.InvalidateCacheResponse(
            tags=[identity.subject, identity.effective.subject, identity.effective.tenant]
        )


@pytest.fixture
async def address() -> AsyncIterator[str]:
    test_issuer = issuer()
    settings = AuthSettings(issuer=test_issuer.url, jwks_url=f"{test_issuer.url}/jwks.json")
    verifier = build_verifier(settings, service="lake")
    edges = DatapunkServerInterceptor(
        "lake", access_log="off", authenticator=CallerAuthenticator(verifier)
    )
    server, port = create_server("127.0.0.1:0", edges=edges)
    cache_pb2_grpc.add_CacheServiceServicer_to_server(WhoCalls(), server)
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)
    await verifier.aclose()


REQUEST = cache_pb2.InvalidateCacheRequest(tags=["lake"])


async def test_a_service_token_for_this_service_is_accepted(address: str) -> None:
    async with authed_channel(address, "lake", on_behalf=tenant_caller("acme")) as channel:
        response = await cache_pb2_grpc.CacheServiceStub(channel).InvalidateCache(REQUEST)
    assert list(response.tags) == ["service:nexus", "client:test-acme", "acme"]


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (lambda: issuer().token(audience="datapunk:stream"), "WRONG_AUDIENCE"),
        (lambda: issuer().token(ttl=-120), "TOKEN_EXPIRED"),
        (
            lambda: issuer().token(subject="client:bot", datapunk_tenant="acme"),
            "WRONG_PRINCIPAL_KIND",
        ),
        (lambda: issuer().token()[:-4] + "AAAA", "BAD_SIGNATURE"),
    ],
)
async def test_other_tokens_are_refused(address: str, token: Any, reason: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await cache_pb2_grpc.CacheServiceStub(channel).InvalidateCache(
                REQUEST, metadata=(("authorization", f"Bearer {token()}"),)
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_from_rpc_error(caught.value).reason == reason
