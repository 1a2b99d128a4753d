"""Nexus's mutual-TLS listener for Envoy (``nexus.envoy_services``), against a real Nexus
process: certificates are made here with ``cryptography`` (a CA, Nexus's server
certificate, Envoy's client certificate, and the wrong ones), and ``Check`` and
``ShouldRateLimit`` are called over TLS the way Envoy's ext_authz and rate-limit filters
call them.

- Envoy's certificate (URI SAN ``spiffe://datapunk/envoy``, from the configured CA) gets
  the guard's answers: the administrator's API key is allowed (with Nexus's service token
  for the upstream), no credential and a wrong key are refused with a JSON 401.
- ``ShouldRateLimit`` counts with the configured rules: OK, OK, then OVER_LIMIT.
- No client certificate, or one from another CA, fails the TLS handshake; plaintext
  fails too. A certificate from the right CA with an identity not allowed is refused
  with PERMISSION_DENIED (``CLIENT_NOT_ALLOWED``), and the refusal is on the platform's
  audit trail (searched through the gRPC entry with the administrator's key, as a platform
  administrator would). Nothing else (a Nexus API) is served.
- The service port still serves Check to a Nexus service token (internal callers).
- ``envoy/issue-dev-certs.sh`` (what envoy/README.md tells) issues certificates that work."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from datapunk.lake.v1 import vectors_pb2 as vec
from datapunk.nexus.v1 import audit_pb2, audit_pb2_grpc
from datapunk.nexus.v1 import status_pb2 as nexus_status
from datapunk.nexus.v1 import status_pb2_grpc as nexus_status_grpc
from datapunk_nexus.envoy_listener import AUDIT_RESOURCE
from datapunk_shared.config import load_settings
from datapunk_shared.errors import PermissionDenied
from datapunk_shared.rpc.client import error_from_rpc_error
from datapunk_shared.rpc.interceptor import REQUEST_ID_KEY
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.auth_support import authed_channel, issuer
from tests.support import (
    ROOT,
    RunningService,
    engines_env,
    free_port,
    run_service,
    wait_for_grpc_health,
    wait_until,
)
from tests.tls_support import Pem, client_cert, issue, make_ca

ENVOY_ID = "spiffe://datapunk/envoy"
GET_COLLECTION = "/datapunk.lake.v1.VectorService/GetCollection"
SEARCH = "/datapunk.lake.v1.VectorService/SearchPoints"
SERVING = health_pb2.HealthCheckResponse.SERVING


# --- the process ------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    nexus: RunningService
    tls_address: str
    entry: str
    """Nexus's gRPC entry, where the administrator's key reads the audit trail."""
    ca: Pem
    envoy: Pem
    intruder: Pem
    stranger: Pem
    """Envoy's identity, but issued by another CA."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("envoy-mtls")
    ca = make_ca("datapunk test envoy-services CA")
    other_ca = make_ca("somebody else's CA")
    server = issue(
        ca,
        "nexus",
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        ExtendedKeyUsageOID.SERVER_AUTH,
    )
    (tmp / "nexus.crt").write_bytes(server.cert)
    (tmp / "clients-ca.crt").write_bytes(ca[0].cert)
    port, entry_port = free_port(), free_port()
    rule = {"name": "per-ip", "methods": [SEARCH], "key": "client_ip", "rate": 2, "period": 60}
    env = {
        **engines_env(load_settings()),
        "DATAPUNK_NEXUS__GRPC_ENTRY__PORT": str(entry_port),
        "DATAPUNK_NEXUS__ENVOY_SERVICES__ENABLED": "true",
        "DATAPUNK_NEXUS__ENVOY_SERVICES__PORT": str(port),
        "DATAPUNK_NEXUS__ENVOY_SERVICES__TLS_CERT": str(tmp / "nexus.crt"),
        "DATAPUNK_NEXUS__ENVOY_SERVICES__CLIENT_CA": str(tmp / "clients-ca.crt"),
        "DATAPUNK_NEXUS__ENVOY_SERVICES__ALLOWED_CLIENTS": json.dumps([ENVOY_ID]),
        # The key comes from the secret provider (env in the tests), never from a file
        # the configuration names.
        "DATAPUNK_SECRET_NEXUS__ENVOY_SERVICES_TLS_KEY": server.key.decode(),
        "DATAPUNK_NEXUS__RATE_LIMITS__BACKEND": "memory",
        "DATAPUNK_NEXUS__RATE_LIMITS__RULES": json.dumps([rule]),
    }
    with run_service("nexus", tmp, env) as nexus:
        # Serving: signing keys loaded, the bootstrap administrator exists.
        wait_until(lambda: nexus.health() == SERVING, timeout=40)
        wait_for_grpc_health(f"127.0.0.1:{entry_port}")
        yield World(
            nexus=nexus,
            tls_address=f"127.0.0.1:{port}",
            entry=f"127.0.0.1:{entry_port}",
            ca=ca[0],
            envoy=client_cert(ca, ENVOY_ID),
            intruder=client_cert(ca, "spiffe://datapunk/intruder"),
            stranger=client_cert(other_ca, ENVOY_ID),
        )


def tls_channel(world: World, client: Pem | None) -> grpc.aio.Channel:
    """A channel like Envoy's ``nexus_authz`` cluster: TLS, Nexus's certificate checked
    against the CA, the client's certificate presented (or none)."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=world.ca.cert,
        private_key=client.key if client else None,
        certificate_chain=client.cert if client else None,
    )
    return grpc.aio.secure_channel(world.tls_address, credentials)


@pytest.fixture
async def envoy(world: World) -> AsyncIterator[grpc.aio.Channel]:
    async with tls_channel(world, world.envoy) as channel:
        yield channel


def grpc_frame(message: Any) -> bytes:
    payload: bytes = message.SerializeToString()
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def check_request(method: str, message: Any, headers: Mapping[str, str]) -> Any:
    """What Envoy's ext_authz filter sends after the JSON transcoder: the gRPC method as
    the path, the request's headers, the gRPC-framed body as bytes."""
    request = external_auth_pb2.CheckRequest()
    request.attributes.source.address.socket_address.address = "203.0.113.9"
    http = request.attributes.request.http
    http.id = "envoy-mtls-1"
    http.method = "POST"
    http.path = method
    http.host = "datapunk.example"
    http.headers.update({"content-type": "application/grpc", "te": "trailers", **headers})
    http.raw_body = grpc_frame(message)
    return request


def rate_request(ip: str) -> Any:
    entry = ratelimit_pb2.RateLimitDescriptor.Entry
    return rls_pb2.RateLimitRequest(
        domain="datapunk",
        descriptors=[
            ratelimit_pb2.RateLimitDescriptor(
                entries=[entry(key="rpc", value=SEARCH), entry(key="remote_address", value=ip)]
            )
        ],
    )


GET = vec.GetCollectionRequest(name="collections/envoy-mtls")


def error_reason(body: str) -> str:
    status = json.loads(body)
    for detail in status.get("details", []):
        if detail.get("@type", "").endswith("google.rpc.ErrorInfo"):
            return str(detail["reason"])
    return ""


# --- the tests --------------------------------------------------------------------------


async def test_envoys_certificate_gets_the_guards_answers(
    world: World, envoy: grpc.aio.Channel
) -> None:
    check = external_auth_pb2_grpc.AuthorizationStub(envoy).Check
    admin = await check(
        check_request(GET_COLLECTION, GET, {"x-api-key": issuer().admin_key}), timeout=10
    )
    assert admin.status.code == 0
    assert admin.WhichOneof("http_response") == "ok_response"
    upstream = {o.header.key: o.header.value for o in admin.ok_response.headers}
    assert upstream["authorization"].startswith("Bearer ")
    assert upstream["authorization"] != f"Bearer {issuer().admin_key}"
    assert "x-api-key" in admin.ok_response.headers_to_remove
    assert dict(admin.dynamic_metadata)["tenant"] == "default"

    anonymous = await check(check_request(GET_COLLECTION, GET, {}), timeout=10)
    assert anonymous.status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert anonymous.denied_response.status.code == 401
    assert error_reason(anonymous.denied_response.body) == "MISSING_CREDENTIALS"

    wrong = await check(
        check_request(GET_COLLECTION, GET, {"x-api-key": "dpk_nothere_" + "x" * 43}),
        timeout=10,
    )
    assert wrong.denied_response.status.code == 401
    assert wrong.status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]


async def test_envoys_certificate_gets_rate_limits_from_the_configured_rules(
    envoy: grpc.aio.Channel,
) -> None:
    limit = rls_pb2_grpc.RateLimitServiceStub(envoy).ShouldRateLimit
    codes = [
        (await limit(rate_request("198.51.100.20"), timeout=10)).overall_code for _ in range(3)
    ]
    ok, over = rls_pb2.RateLimitResponse.Code.OK, rls_pb2.RateLimitResponse.Code.OVER_LIMIT
    assert codes == [ok, ok, over]
    other = await limit(rate_request("198.51.100.21"), timeout=10)
    assert other.overall_code == ok


async def test_health_is_served_for_envoys_health_checks(envoy: grpc.aio.Channel) -> None:
    # It follows the service port's health, which the fixture saw SERVING.
    health = health_pb2_grpc.HealthStub(envoy)
    for service in ("", "envoy.service.auth.v3.Authorization"):
        for _ in range(50):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            if answer.status == SERVING:
                break
            await asyncio.sleep(0.1)
        assert answer.status == SERVING


async def test_nothing_else_is_served_on_the_envoy_port(envoy: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await nexus_status_grpc.StatusServiceStub(envoy).GetStatus(
            nexus_status.GetStatusRequest(), timeout=10
        )
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("who", ["no certificate", "another CA"])
async def test_a_client_without_a_trusted_certificate_fails_the_handshake(
    world: World, who: str
) -> None:
    client = None if who == "no certificate" else world.stranger
    async with tls_channel(world, client) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await external_auth_pb2_grpc.AuthorizationStub(channel).Check(
                check_request(GET_COLLECTION, GET, {"x-api-key": issuer().admin_key}),
                timeout=10,
            )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_plaintext_fails(world: World) -> None:
    async with grpc.aio.insecure_channel(world.tls_address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(
                rate_request("198.51.100.30"), timeout=10
            )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_trusted_certificate_of_another_identity_is_permission_denied(
    world: World,
) -> None:
    async with tls_channel(world, world.intruder) as channel:
        for call in (
            external_auth_pb2_grpc.AuthorizationStub(channel).Check(
                check_request(GET_COLLECTION, GET, {"x-api-key": issuer().admin_key}),
                timeout=10,
            ),
            rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(
                rate_request("198.51.100.40"), timeout=10
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            error = error_from_rpc_error(refused.value)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert isinstance(error, PermissionDenied)
            assert error.reason == "CLIENT_NOT_ALLOWED"
            assert error.metadata["identities"] == "spiffe://datapunk/intruder"
            metadata = dict(refused.value.trailing_metadata() or ())
            assert metadata[REQUEST_ID_KEY]


async def _platform_refusals(world: World, since: datetime) -> list[Any]:
    """The listener's refusals on the platform trail since ``since``, read through the
    gRPC entry with the administrator's key (a platform administrator)."""
    start = timestamp_pb2.Timestamp()
    start.FromDatetime(since)
    found: list[Any] = []
    token = ""
    async with grpc.aio.insecure_channel(world.entry) as channel:
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        while True:
            page = await stub.SearchAuditEvents(
                audit_pb2.SearchAuditEventsRequest(
                    filter=audit_pb2.AuditEventFilter(
                        resource_prefix=AUDIT_RESOURCE,
                        outcome=audit_pb2.AUDIT_OUTCOME_DENY,
                        start_time=start,
                    ),
                    page_size=1000,
                    page_token=token,
                    platform=True,
                ),
                metadata=[("x-api-key", issuer().admin_key)],
                timeout=30,
            )
            found += list(page.events)
            token = page.next_page_token
            if not token:
                return found


async def test_a_refused_client_is_on_the_platform_audit_trail(world: World) -> None:
    since = datetime.now(UTC) - timedelta(seconds=5)
    request_ids = {
        "check": f"envoy-mtls-refused-{uuid.uuid4().hex[:8]}",
        "rate": f"envoy-mtls-refused-{uuid.uuid4().hex[:8]}",
    }
    async with tls_channel(world, world.intruder) as channel:
        calls = {
            "check": external_auth_pb2_grpc.AuthorizationStub(channel).Check(
                check_request(GET_COLLECTION, GET, {"x-api-key": issuer().admin_key}),
                metadata=[(REQUEST_ID_KEY, request_ids["check"])],
                timeout=10,
            ),
            "rate": rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(
                rate_request("198.51.100.60"),
                metadata=[(REQUEST_ID_KEY, request_ids["rate"])],
                timeout=10,
            ),
        }
        for call in calls.values():
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Each refusal was committed before it was answered: no waiting for the trail.
    events = {e.request_id: e for e in await _platform_refusals(world, since)}
    methods = {
        "check": "/envoy.service.auth.v3.Authorization/Check",
        "rate": "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
    }
    for which, request_id in request_ids.items():
        event = events[request_id]
        assert event.outcome == audit_pb2.AUDIT_OUTCOME_DENY
        assert event.action == "authorize"
        assert event.reason == "CLIENT_NOT_ALLOWED"
        assert event.method == methods[which]
        assert event.resource == AUDIT_RESOURCE
        assert (event.tenant, event.principal) == ("", "")  # nobody was identified
        assert event.credential_id == "spiffe://datapunk/intruder"
        assert event.client_address == "127.0.0.1"
    # Envoy's own calls leave no refusal.
    assert all(e.credential_id != ENVOY_ID for e in events.values())


async def test_the_service_port_still_serves_check_to_a_service_token(world: World) -> None:
    async with authed_channel(world.nexus.address, "nexus") as channel:
        answer = await external_auth_pb2_grpc.AuthorizationStub(channel).Check(
            check_request(GET_COLLECTION, GET, {"x-api-key": issuer().admin_key}), timeout=10
        )
    assert answer.WhichOneof("http_response") == "ok_response"


def test_no_key_or_certificate_shows_up_in_the_log(world: World) -> None:
    log = world.nexus.log()
    assert "envoy services listening" in log
    for secret in (issuer().admin_key, world.envoy.key.decode(), world.ca.key.decode()):
        assert secret.strip() not in log
    assert "BEGIN" not in log  # no PEM of any kind


def test_the_development_certificates_script_issues_working_certificates(
    tmp_path: Path,
) -> None:
    """envoy/issue-dev-certs.sh, as envoy/README.md tells: its Nexus certificate and key
    serve the listener, its Envoy certificate is allowed by the default settings."""
    out = tmp_path / "envoy-tls"
    subprocess.run([str(ROOT / "envoy" / "issue-dev-certs.sh"), str(out)], check=True, cwd=ROOT)
    assert oct((out / "envoy.key").stat().st_mode & 0o777) == oct(0o600)
    port = free_port()
    env = {
        **engines_env(load_settings()),
        "DATAPUNK_NEXUS__ENVOY_SERVICES__ENABLED": "true",
        "DATAPUNK_NEXUS__ENVOY_SERVICES__PORT": str(port),
        "DATAPUNK_NEXUS__ENVOY_SERVICES__TLS_CERT": str(out / "nexus.crt"),
        "DATAPUNK_NEXUS__ENVOY_SERVICES__CLIENT_CA": str(out / "ca.crt"),
        "DATAPUNK_SECRET_NEXUS__ENVOY_SERVICES_TLS_KEY": (out / "nexus.key").read_text(),
    }
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(out / "ca.crt").read_bytes(),
        private_key=(out / "envoy.key").read_bytes(),
        certificate_chain=(out / "envoy.crt").read_bytes(),
    )
    with (
        run_service("nexus", tmp_path, env),
        grpc.secure_channel(f"localhost:{port}", credentials) as channel,
    ):
        limit = rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit
        answer = limit(rate_request("198.51.100.50"), timeout=10)
    assert answer.overall_code == rls_pb2.RateLimitResponse.Code.OK
