"""Nexus's mutual-TLS listener for Envoy: its settings, what stops it from starting (each
with a message naming the setting and never showing the key), the identities read from a
certificate, and what a refused client leaves in the audit log (the record's fields, and
failing closed when it cannot be written). The calls with Nexus itself, and the records
in PostgreSQL, are in tests/integration/test_envoy_mtls.py."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from datapunk_nexus.envoy_listener import (
    AUDIT_RESOURCE,
    certificate_identities,
    start_envoy_listener,
)
from datapunk_nexus.envoy_services.authz import AuthorizationService
from datapunk_nexus.envoy_services.ratelimit import RateLimitService
from datapunk_nexus.identity.audit import AuditEvent, AuditLog, Outcome
from datapunk_nexus.limits import build_gate
from datapunk_shared.config import EnvoyServicesSettings, RateLimitSettings, Settings
from datapunk_shared.errors import (
    ConfigError,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from datapunk_shared.rpc.client import error_from_rpc_error
from datapunk_shared.rpc.interceptor import REQUEST_ID_KEY
from datapunk_shared.rpc.server import PortInUse, ServiceContext
from datapunk_shared.secrets import EnvSecretProvider
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from pydantic import ValidationError

from tests.tls_support import CertificateAuthority, Pem, client_cert, issue, make_ca

KEY_ENV = "DATAPUNK_SECRET_NEXUS__ENVOY_SERVICES_TLS_KEY"
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return make_ca("unit test CA")


@pytest.fixture(scope="module")
def server(ca: CertificateAuthority) -> Pem:
    return issue(ca, "nexus", [x509.DNSName("localhost")], ExtendedKeyUsageOID.SERVER_AUTH)


@pytest.fixture
def files(tmp_path: Path, ca: CertificateAuthority, server: Pem) -> Path:
    (tmp_path / "nexus.crt").write_bytes(server.cert)
    (tmp_path / "ca.crt").write_bytes(ca[0].cert)
    return tmp_path


@pytest.fixture
async def context() -> AsyncIterator[ServiceContext]:
    settings = Settings()
    # Its health watches the service port: a free one here, never the local stack's Nexus.
    own = settings.nexus.model_copy(update={"port": free_port()})
    ctx = ServiceContext(settings=settings, service_settings=own, server=grpc.aio.server())
    yield ctx
    for cleanup in reversed(ctx.cleanups):
        await cleanup()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def enabled(files: Path, port: int = 0) -> EnvoyServicesSettings:
    return EnvoyServicesSettings(
        enabled=True,
        port=port or free_port(),
        tls_cert=files / "nexus.crt",
        client_ca=files / "ca.crt",
    )


class Collected:
    """A ``BatchWriter`` keeping what it is given in memory (the PostgreSQL one is tested
    in tests/integration), or failing every batch like an engine that is down."""

    def __init__(self, *, failing: bool = False) -> None:
        self.events: list[AuditEvent] = []
        self.failing = failing

    async def append(self, events: Sequence[AuditEvent]) -> object:
        if self.failing:
            raise OSError("the audit store is down")
        self.events.extend(events)
        return None


async def start(
    context: ServiceContext, settings: EnvoyServicesSettings, writer: Collected | None = None
) -> int | None:
    gate = build_gate(RateLimitSettings(backend="memory"), None)
    audit = AuditLog(writer or Collected(), write_timeout=5, retry_interval=0)
    context.cleanups.append(audit.close)
    return await start_envoy_listener(
        context,
        settings,
        EnvSecretProvider(),
        authorization=AuthorizationService(None),  # type: ignore[arg-type]  # never called
        rate_limit=RateLimitService(gate),
        audit=audit,
    )


def test_the_listener_is_off_by_default_and_needs_its_files_when_on() -> None:
    assert EnvoyServicesSettings().enabled is False
    with pytest.raises(ValidationError, match="tls_cert and client_ca"):
        EnvoyServicesSettings(enabled=True, tls_cert=Path("/x.crt"))
    with pytest.raises(ValidationError):
        EnvoyServicesSettings(allowed_clients=[])
    with pytest.raises(ValidationError):
        EnvoyServicesSettings(allowed_clients=["spiffe://a b"])


async def test_off_means_no_listener(context: ServiceContext) -> None:
    assert await start(context, EnvoyServicesSettings()) is None
    assert context.cleanups == [context.cleanups[0]]  # the test's audit log only


async def test_it_starts_with_a_matching_key_and_stops_with_nexus(
    context: ServiceContext, files: Path, server: Pem, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, server.key.decode())
    port = await start(context, enabled(files))
    assert port
    assert len(context.cleanups) == 2  # the test's audit log, then the listener
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


async def test_a_key_of_another_certificate_stops_the_start_without_showing_it(
    context: ServiceContext,
    files: Path,
    ca: CertificateAuthority,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = issue(ca, "other", [x509.DNSName("other")], ExtendedKeyUsageOID.SERVER_AUTH)
    monkeypatch.setenv(KEY_ENV, other.key.decode())
    with pytest.raises(ConfigError, match="not tls_cert's") as refused:
        await start(context, enabled(files))
    assert refused.value.keys == ["nexus.envoy_services.tls_key_secret"]
    assert "PRIVATE KEY" not in str(refused.value.message)


async def test_a_key_that_is_not_pem_stops_the_start(
    context: ServiceContext, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "not-a-key-but-a-secret-value")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key") as refused:
        await start(context, enabled(files))
    assert "not-a-key-but-a-secret-value" not in refused.value.message


async def test_a_missing_key_secret_or_file_stops_the_start(
    context: ServiceContext, files: Path, server: Pem, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(NotFound):
        await start(context, enabled(files))
    monkeypatch.setenv(KEY_ENV, server.key.decode())
    (files / "ca.crt").unlink()
    with pytest.raises(ConfigError, match="client_ca: cannot read"):
        await start(context, enabled(files))


async def test_a_port_in_use_is_port_in_use(
    context: ServiceContext, files: Path, server: Pem, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, server.key.decode())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(PortInUse):
            await start(context, enabled(files, taken.getsockname()[1]))


def test_identities_are_the_uri_and_dns_names(ca: CertificateAuthority) -> None:
    pem = issue(
        ca,
        "envoy",
        [
            x509.UniformResourceIdentifier("spiffe://datapunk/envoy"),
            x509.DNSName("envoy.internal"),
            x509.RFC822Name("ops@example.org"),
        ],
        ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    assert certificate_identities(pem.cert) == ("spiffe://datapunk/envoy", "envoy.internal")


async def _health_of(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    answer = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    status: int = answer.status
    return status


async def _eventually(channel: grpc.aio.Channel, service: str, status: int) -> None:
    for _ in range(100):
        if await _health_of(channel, service) == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{service!r} never became {status}")


async def test_health_follows_the_service_ports(
    context: ServiceContext,
    files: Path,
    ca: CertificateAuthority,
    server: Pem,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stand-in for Nexus's own server: only its public health matters here.
    main = grpc.aio.server()
    main_port = main.add_insecure_port("127.0.0.1:0")
    main_health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(main_health, main)
    await main_health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await main.start()
    context.service_settings = context.service_settings.model_copy(
        update={"host": "0.0.0.0", "port": main_port, "probe_interval": 0.1}
    )
    monkeypatch.setenv(KEY_ENV, server.key.decode())
    port = await start(context, enabled(files))
    envoy = client_cert(ca, "spiffe://datapunk/envoy")
    credentials = grpc.ssl_channel_credentials(ca[0].cert, envoy.key, envoy.cert)
    authz = "envoy.service.auth.v3.Authorization"
    serving, not_serving = SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
        assert await _health_of(channel, authz) == not_serving
        await main_health.set("", serving)
        await _eventually(channel, "", serving)
        await _eventually(channel, authz, serving)
        await main_health.set("", not_serving)  # an engine down
        await _eventually(channel, authz, not_serving)
        await main_health.set("", serving)
        await _eventually(channel, authz, serving)
        await main.stop(None)  # Nexus's server gone: nothing to vouch for it
        await _eventually(channel, authz, not_serving)


def _rate_request() -> rls_pb2.RateLimitRequest:
    entry = ratelimit_pb2.RateLimitDescriptor.Entry
    descriptor = ratelimit_pb2.RateLimitDescriptor(
        entries=[entry(key="rpc", value="/x.v1.S/M"), entry(key="remote_address", value="::1")]
    )
    return rls_pb2.RateLimitRequest(domain="datapunk", descriptors=[descriptor])


@pytest.mark.parametrize("audit_up", [True, False], ids=["recorded", "audit down"])
async def test_a_refused_client_is_audited_and_the_refusal_fails_closed(
    context: ServiceContext,
    files: Path,
    ca: CertificateAuthority,
    server: Pem,
    monkeypatch: pytest.MonkeyPatch,
    audit_up: bool,
) -> None:
    monkeypatch.setenv(KEY_ENV, server.key.decode())
    writer = Collected(failing=not audit_up)
    port = await start(context, enabled(files), writer)
    intruder = client_cert(ca, "spiffe://datapunk/intruder")
    credentials = grpc.ssl_channel_credentials(ca[0].cert, intruder.key, intruder.cert)
    async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
        call = rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(
            _rate_request(), metadata=[(REQUEST_ID_KEY, "listener-unit-1")], timeout=10
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
    error = error_from_rpc_error(refused.value)
    if not audit_up:  # no record, no answer but UNAVAILABLE
        assert isinstance(error, Unavailable)
        assert error.reason == "AUDIT_UNAVAILABLE"
        assert writer.events == []
        return
    assert isinstance(error, PermissionDenied)
    assert error.reason == "CLIENT_NOT_ALLOWED"
    [event] = writer.events
    assert event.action == "authorize"
    assert event.outcome == Outcome.DENY
    assert (event.tenant, event.principal, event.principal_kind) == ("", "", "")
    assert event.credential_id == "spiffe://datapunk/intruder"
    assert event.method == "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
    assert event.resource == AUDIT_RESOURCE
    assert event.reason == "CLIENT_NOT_ALLOWED"
    assert event.client_address in ("127.0.0.1", "::1")
    assert event.request_id == "listener-unit-1"


async def test_an_allowed_client_leaves_no_refusal(
    context: ServiceContext,
    files: Path,
    ca: CertificateAuthority,
    server: Pem,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, server.key.decode())
    writer = Collected()
    port = await start(context, enabled(files), writer)
    envoy = client_cert(ca, "spiffe://datapunk/envoy")
    credentials = grpc.ssl_channel_credentials(ca[0].cert, envoy.key, envoy.cert)
    async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
        answer = await rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit(
            _rate_request(), timeout=10
        )
    assert answer.overall_code == rls_pb2.RateLimitResponse.Code.OK
    assert writer.events == []
