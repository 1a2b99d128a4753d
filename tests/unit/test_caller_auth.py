"""The service-side caller check on a real in-process grpc.aio server: calls without
valid credentials are refused, public methods stay open, on-behalf-of identities are
believed only from trusted delegates, and the identity reaches the handler."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from datapunk.lake.v1 import status_pb2, status_pb2_grpc
from datapunk.nexus.v1 import cache_pb2, cache_pb2_grpc
from datapunk_shared.auth.identity import Identity, identity_var
from datapunk_shared.auth.interceptor import (
    ON_BEHALF_KEY,
    CallerAuthenticator,
    decode_on_behalf,
    encode_on_behalf,
    is_public_method,
)
from datapunk_shared.errors import Unauthenticated
from datapunk_shared.rpc.client import error_from_rpc_error
from datapunk_shared.rpc.interceptor import DatapunkServerInterceptor
from datapunk_shared.rpc.server import create_server

NEXUS = Identity(subject="service:nexus", tenant="", kind="service", issuer="dp")
STREAM = Identity(subject="service:stream", tenant="", kind="service", issuer="dp")
CLIENT = Identity(subject="client:bot", tenant="acme", kind="client", roles=frozenset({"reader"}))


class TokenTable:
    """Verifies tokens by a fixed table: this test is about what the authenticator does
    with a verified identity; the verifier has tests of its own."""

    def __init__(self) -> None:
        self.tokens = {"nexus-token": NEXUS, "stream-token": STREAM, "client-token": CLIENT}
        self.calls = 0

    async def verify(self, token: str) -> Identity:
        self.calls += 1
        try:
            return self.tokens[token]
        except KeyError:
            raise Unauthenticated("bad token", reason="BAD_SIGNATURE") from None


class EchoIdentity(cache_pb2_grpc.CacheServiceServicer):
    async def InvalidateCache(self, request: Any, context: Any) -> Any:
        identity = identity_var.get()
        assert identity is not None
        effective = identity.effective
        return cache_pb2.InvalidateCacheResponse(
            tags=[identity.subject, effective.subject, effective.tenant]
        )


class OpenStatus(status_pb2_grpc.StatusServiceServicer):
    async def GetStatus(self, request: Any, context: Any) -> Any:
        return status_pb2.GetStatusResponse()


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    edges = DatapunkServerInterceptor(
        "test", access_log="off", authenticator=CallerAuthenticator(TokenTable())
    )
    server, port = create_server("127.0.0.1:0", edges=edges)
    cache_pb2_grpc.add_CacheServiceServicer_to_server(EchoIdentity(), server)
    status_pb2_grpc.add_StatusServiceServicer_to_server(OpenStatus(), server)
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    await server.stop(None)


async def _call(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> list[str]:
    stub = cache_pb2_grpc.CacheServiceStub(channel)
    request = cache_pb2.InvalidateCacheRequest(tags=["lake"])
    response = await stub.InvalidateCache(request, metadata=metadata)
    return list(response.tags)


async def _refused(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(channel, metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    return error_from_rpc_error(caught.value).reason


async def test_a_call_without_credentials_is_refused(channel: grpc.aio.Channel) -> None:
    assert await _refused(channel, ()) == "MISSING_CREDENTIALS"
    assert await _refused(channel, (("authorization", "Basic abc"),)) == "MALFORMED_TOKEN"
    assert await _refused(channel, (("authorization", "Bearer nope"),)) == "BAD_SIGNATURE"


async def test_public_methods_need_no_credentials(channel: grpc.aio.Channel) -> None:
    await status_pb2_grpc.StatusServiceStub(channel).GetStatus(status_pb2.GetStatusRequest())
    assert is_public_method("/grpc.health.v1.Health/Check")
    assert is_public_method("/datapunk.lake.v1.StatusService/GetStatus")
    assert not is_public_method("/datapunk.lake.v1.VectorService/SearchPoints")


async def test_the_verified_identity_reaches_the_handler(channel: grpc.aio.Channel) -> None:
    tags = await _call(channel, (("authorization", "Bearer stream-token"),))
    assert tags == ["service:stream", "service:stream", ""]


async def test_end_users_must_come_through_nexus(channel: grpc.aio.Channel) -> None:
    # A valid client token is still refused on a service port: only Nexus checks a
    # client's permissions.
    assert await _refused(channel, (("authorization", "Bearer client-token"),)) == (
        "WRONG_PRINCIPAL_KIND"
    )


async def test_a_trusted_delegate_acts_on_behalf_of_a_caller(channel: grpc.aio.Channel) -> None:
    metadata = (
        ("authorization", "Bearer nexus-token"),
        (ON_BEHALF_KEY, encode_on_behalf(CLIENT)),
    )
    assert await _call(channel, metadata) == ["service:nexus", "client:bot", "acme"]


async def test_nobody_else_may_claim_another_identity(channel: grpc.aio.Channel) -> None:
    forged = Identity(subject="client:admin", tenant="other", kind="client")
    metadata = (
        ("authorization", "Bearer stream-token"),
        (ON_BEHALF_KEY, encode_on_behalf(forged)),
    )
    assert await _refused(channel, metadata) == "UNTRUSTED_DELEGATION"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "[]",
        "{}",
        '{"sub": "x"}',
        '{"sub":"","tenant":"","kind":"client","iss":"","cid":""}',
        '{"sub":"a","tenant":"t","kind":"root","iss":"","cid":""}',
        "x" * 5000,
    ],
)
def test_malformed_on_behalf_values_are_refused(value: str) -> None:
    with pytest.raises(Unauthenticated) as caught:
        decode_on_behalf(value)
    assert caught.value.reason == "INVALID_DELEGATION"


def test_on_behalf_round_trips() -> None:
    identity = Identity(
        subject="user:https://idp|alice",
        tenant="acme",
        kind="user",
        roles=frozenset({"reader", "writer"}),
        scopes=frozenset({"lake.read"}),
        issuer="https://idp",
        credential_id="jti-1",
    )
    assert decode_on_behalf(encode_on_behalf(identity)) == identity


async def test_verified_tokens_are_remembered_until_they_expire() -> None:
    table = TokenTable()
    now = [1000.0]
    table.tokens["short"] = Identity(
        subject="service:s", tenant="", kind="service", expires_at=1005
    )
    authenticator = CallerAuthenticator(table, cache_seconds=30, clock=lambda: now[0])
    metadata = (("authorization", "Bearer short"),)
    await authenticator.authenticate(metadata)
    await authenticator.authenticate(metadata)
    assert table.calls == 1
    now[0] = 1006.0  # past the token's own expiry: verified again
    await authenticator.authenticate(metadata)
    assert table.calls == 2


async def test_repeated_credentials_resolve_without_parsing_again() -> None:
    table = TokenTable()
    now = [1000.0]
    table.tokens["nexus-token"] = Identity(
        subject="service:nexus", tenant="", kind="service", expires_at=1010
    )
    authenticator = CallerAuthenticator(table, cache_seconds=30, clock=lambda: now[0])
    for_client = (
        ("authorization", "Bearer nexus-token"),
        (ON_BEHALF_KEY, encode_on_behalf(CLIENT)),
    )
    first = await authenticator.authenticate(for_client)
    assert await authenticator.authenticate(for_client) is first  # the very same identity
    # Other on-behalf-of bytes are another identity, never the remembered one.
    other = Identity(subject="client:other", tenant="acme", kind="client")
    switched = await authenticator.authenticate(
        (("authorization", "Bearer nexus-token"), (ON_BEHALF_KEY, encode_on_behalf(other)))
    )
    assert switched.effective.subject == "client:other"
    assert table.calls == 1  # the token itself was verified once
    # Within a second of the token's expiry, the identity is resolved again from the
    # verified token, and past it the token is verified again.
    now[0] = 1009.5
    assert (await authenticator.authenticate(for_client)) is not first
    now[0] = 1011.0
    await authenticator.authenticate(for_client)
    assert table.calls == 2


async def test_refused_credentials_are_not_remembered() -> None:
    table = TokenTable()
    authenticator = CallerAuthenticator(table)
    forged = (
        ("authorization", "Bearer stream-token"),
        (ON_BEHALF_KEY, encode_on_behalf(CLIENT)),
    )
    for _ in range(2):
        with pytest.raises(Unauthenticated) as caught:
            await authenticator.authenticate(forged)
        assert caught.value.reason == "UNTRUSTED_DELEGATION"
