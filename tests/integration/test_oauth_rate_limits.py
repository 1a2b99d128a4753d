"""The REST edge's OAuth endpoints meet the rate limits, on a real Nexus process whose
limits live in the stack's Redis: a limit keyed by client IP on the token endpoints'
gRPC twins counts every ``/oauth/token``, ``/oauth/revoke`` and ``/oauth/introspect``
request from that address, a refused client secret counts twice (the request and the
refusal, as a wrong API key does), and over the limit the answer is 429 with a JSON
``google.rpc.Status``, ``Retry-After`` and ``RateLimit-*`` headers — even for the right
secret, so a guesser learns nothing. Another address keeps its own allowance."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from datapunk.nexus.v1 import audit_pb2, audit_pb2_grpc, auth_pb2, auth_pb2_grpc
from datapunk_shared.config import Settings
from grpc_health.v1 import health_pb2

from tests.auth_support import entry_channel
from tests.support import free_port, run_service, wait_until

BURST = 4
"""Calls an address may make at once; refills at one per 15 s, far beyond the test."""


@dataclass
class Edge:
    url: str
    entry: str
    client_id: str
    secret: str


@pytest.fixture
async def edge(settings: Settings, tmp_path: Path) -> AsyncIterator[Edge]:
    entry, rest = free_port(), free_port()
    rules = [
        {
            "name": "oauth",
            "methods": ["/datapunk.nexus.v1.AuthService/*Token"],
            "key": "client_ip",
            "rate": BURST,
            "period": 60,
            "burst": BURST,
        }
    ]
    env = {
        "DATAPUNK_ENGINES__POSTGRES__URL": settings.engines.postgres.url,
        "DATAPUNK_ENGINES__REDIS__URL": settings.engines.redis.url,
        "DATAPUNK_NEXUS__RATE_LIMITS__RULES": json.dumps(rules),
        "DATAPUNK_NEXUS__RATE_LIMITS__KEY_PREFIX": f"test:oauthrl:{uuid.uuid4().hex}:",
        "DATAPUNK_NEXUS__GRPC_ENTRY__PORT": str(entry),
        "DATAPUNK_NEXUS__REST__PORT": str(rest),
        # The test speaks for several client addresses through X-Forwarded-For.
        "DATAPUNK_NEXUS__REST__TRUSTED_PROXIES": json.dumps(["127.0.0.1/32"]),
    }
    with run_service("nexus", tmp_path, env) as nexus:
        serving = health_pb2.HealthCheckResponse.SERVING
        wait_until(lambda: nexus.health() == serving, timeout=40)
        client_id = f"rl-{uuid.uuid4().hex[:10]}"
        async with entry_channel(f"127.0.0.1:{entry}") as channel:
            made = await auth_pb2_grpc.AuthServiceStub(channel).CreateClient(
                auth_pb2.CreateClientRequest(
                    client=auth_pb2.Client(client_id=client_id, display_name="rate limited")
                ),
                timeout=10,
            )
        yield Edge(f"http://127.0.0.1:{rest}", f"127.0.0.1:{entry}", client_id, made.client_secret)


async def post(
    edge: Edge, path: str, address: str, secret: str, **form: str
) -> tuple[int, dict[str, str], Any]:
    data = {"client_id": edge.client_id, "client_secret": secret, **form}
    async with (
        aiohttp.ClientSession() as session,
        session.post(edge.url + path, data=data, headers={"X-Forwarded-For": address}) as answer,
    ):
        body = await answer.read()
        return answer.status, dict(answer.headers), json.loads(body) if body else None


async def token(edge: Edge, address: str, secret: str) -> tuple[int, dict[str, str], Any]:
    return await post(edge, "/oauth/token", address, secret, grant_type="client_credentials")


def assert_limited(status: int, headers: dict[str, str], body: Any) -> None:
    assert status == 429, body
    assert int(headers["Retry-After"]) >= 1
    assert headers["RateLimit-Remaining"] == "0"
    assert body["code"] == 8  # RESOURCE_EXHAUSTED, as a google.rpc.Status
    assert body["details"][0]["reason"] == "RATE_LIMITED"


async def test_refused_client_secrets_count_against_the_clients_address(edge: Edge) -> None:
    guesser, other = "10.77.0.1", "10.77.0.2"
    status, _, granted = await token(edge, guesser, edge.secret)  # 1 of 4
    assert status == 200, granted
    status, headers, refused = await token(edge, guesser, "wrong")  # 3 of 4: call + refusal
    assert (status, refused["error"]) == (401, "invalid_client")
    assert headers["WWW-Authenticate"].startswith("Basic")
    # The next refusal would be the fifth: the answer is the limit, not invalid_client.
    assert_limited(*await token(edge, guesser, "wrong"))
    # Now even the right secret is refused at the gate, and so are the token's twins.
    assert_limited(*await token(edge, guesser, edge.secret))
    token_value = granted["access_token"]
    for path in ("/oauth/revoke", "/oauth/introspect"):
        assert_limited(*await post(edge, path, guesser, edge.secret, token=token_value))

    # The refusals are audited with the client's address (the forwarded one, from a
    # trusted proxy), the way an operator finds who guessed. A client that failed to
    # authenticate is nobody's: its records are in the platform's trail.
    async with entry_channel(edge.entry) as channel:
        found = await audit_pb2_grpc.AuditServiceStub(channel).SearchAuditEvents(
            audit_pb2.SearchAuditEventsRequest(
                filter=audit_pb2.AuditEventFilter(
                    resource_prefix=f"client/{edge.client_id}",
                    outcome=audit_pb2.AUDIT_OUTCOME_DENY,
                ),
                platform=True,
            ),
            timeout=10,
        )
    refusals = [e for e in found.events if e.method.endswith("/IssueToken")]
    assert len(refusals) == 2, found
    assert {e.client_address for e in refusals} == {guesser}

    # Another address has its own allowance, and a granted request costs one.
    for _ in range(BURST):
        status, _, body = await token(edge, other, edge.secret)
        assert status == 200, body
    assert_limited(*await token(edge, other, edge.secret))
