"""Nexus's mutual-TLS listener for Envoy (``nexus.envoy_services``).

Envoy's ext_authz and rate-limit filters cannot get a Nexus service token, which the
service port asks of every caller, so they call ``Check`` and ``ShouldRateLimit`` here
instead, and prove who they are with a client certificate: the TLS handshake fails for a
client without a certificate from ``client_ca``, and a call whose certificate names none
of ``allowed_clients`` (a URI or DNS subject alternative name) is refused with
PERMISSION_DENIED (``CLIENT_NOT_ALLOWED``). Such a refusal is written to the platform's
audit trail before it is answered, like every refusal at Nexus's entries (failing closed:
a record that cannot be written makes the answer UNAVAILABLE, ``AUDIT_UNAVAILABLE``); a
failed handshake never reaches a method and leaves no record. Nothing but those two
methods and health is served here; its health follows the service port's (engines,
migrations, draining). The calls keep the shared edges of every Datapunk server (request
ids, validation, error details, metrics, access log); only the token check is replaced by
the certificate check, and the certificate's identity goes into the log lines."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from datapunk_shared.auth.identity import Identity, identity_var
from datapunk_shared.config import EnvoyServicesSettings
from datapunk_shared.errors import ConfigError, DatapunkError, PermissionDenied, Unauthenticated
from datapunk_shared.logging import get_logger, request_id_var
from datapunk_shared.rpc.interceptor import DatapunkServerInterceptor, InstrumentedServer
from datapunk_shared.rpc.server import PortInUse, ServiceContext
from datapunk_shared.secrets import SecretProvider
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from datapunk_nexus.entry.metadata import client_ip
from datapunk_nexus.envoy_services.authz import AuthorizationService
from datapunk_nexus.envoy_services.ratelimit import RateLimitService
from datapunk_nexus.identity.audit import AuditEvent, AuditLog, Outcome

__all__ = [
    "AUDIT_RESOURCE",
    "ClientCertificates",
    "certificate_identities",
    "start_envoy_listener",
]

log = get_logger("datapunk.nexus.envoy")

SERVED = (
    external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name,
    rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"].full_name,
)
_CHECK = f"/{SERVED[0]}/Check"
_SHOULD_RATE_LIMIT = f"/{SERVED[1]}/ShouldRateLimit"
_PEM_CERT = "x509_pem_cert"
AUDIT_RESOURCE = "listener/envoy_services"
"""The resource of the listener's audit records (search them by this prefix)."""


@functools.lru_cache(maxsize=64)
def certificate_identities(pem: bytes) -> tuple[str, ...]:
    """The URI and DNS subject alternative names of a PEM certificate (cached: Envoy
    presents the same certificate on every call of a connection)."""
    certificate = x509.load_pem_x509_certificate(pem)
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return (
        *names.value.get_values_for_type(x509.UniformResourceIdentifier),
        *names.value.get_values_for_type(x509.DNSName),
    )


class ClientCertificates:
    """Decides whether a call's verified client certificate may use the listener, and
    writes each refusal to the audit trail."""

    def __init__(self, allowed: Iterable[str], audit: AuditLog) -> None:
        self._allowed = frozenset(allowed)
        self._audit = audit

    async def identify(self, context: Any, method: str) -> Identity:
        """The caller's identity, from the certificate the TLS handshake verified; a
        refusal is recorded (on the platform's trail: nobody was identified) and raised,
        or UNAVAILABLE (``AUDIT_UNAVAILABLE``) when the record cannot be written."""
        pems = context.auth_context().get(_PEM_CERT) or []
        presented = certificate_identities(pems[0]) if pems else ()
        for name in presented:
            if name in self._allowed:
                return Identity(subject=name, tenant="", kind="service", issuer="mtls")
        refusal: DatapunkError
        if not pems:  # the handshake requires one; refuse rather than trust its absence
            refusal = Unauthenticated(
                "this port needs a client certificate", reason="MISSING_CLIENT_CERTIFICATE"
            )
        else:
            refusal = PermissionDenied(
                "the client certificate names no identity allowed to call Envoy's services",
                reason="CLIENT_NOT_ALLOWED",
                metadata={"identities": ",".join(presented)[:512]},
            )
        await self._audit.record(
            AuditEvent(
                action="authenticate" if not pems else "authorize",
                outcome=Outcome.DENY,
                # The certificate's names are public: the credential by its public id.
                credential_id=",".join(presented),
                method=method,
                resource=AUDIT_RESOURCE,
                reason=refusal.reason,
                client_address=client_ip(str(context.peer() or "")),
                request_id=request_id_var.get() or "",
            )
        )
        raise refusal


class _Certified:
    """``Check`` and ``ShouldRateLimit`` behind the client-certificate check (registered by
    method name, like the servicers they wrap)."""

    def __init__(
        self,
        clients: ClientCertificates,
        authorization: AuthorizationService,
        rate_limit: RateLimitService,
    ) -> None:
        self._clients = clients
        self._authorization = authorization
        self._rate_limit = rate_limit

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: Any
    ) -> external_auth_pb2.CheckResponse:
        token = identity_var.set(await self._clients.identify(context, _CHECK))
        try:
            return await self._authorization.Check(request, context)
        finally:
            identity_var.reset(token)

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: Any
    ) -> rls_pb2.RateLimitResponse:
        token = identity_var.set(await self._clients.identify(context, _SHOULD_RATE_LIMIT))
        try:
            return await self._rate_limit.ShouldRateLimit(request, context)
        finally:
            identity_var.reset(token)


async def _mirror_health(health: HealthServicer, address: str, retry_seconds: float) -> None:
    """Keep the listener's health what Nexus's own server says (its engines, its
    migrations, its draining), so Envoy's health checks of ``nexus_authz`` see it too.
    Watches the service port's public health; NOT_SERVING while that cannot be read."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), wait_for_ready=True)
                async for answer in watch:
                    for name in ("", *SERVED):
                        await health.set(name, answer.status)
            except grpc.aio.AioRpcError:
                pass
            for name in ("", *SERVED):
                await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
            await asyncio.sleep(retry_seconds)


def _loopback(host: str) -> str:
    """Where this process reaches its own server listening on ``host``."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"nexus.envoy_services.{what}: cannot read {path}: {exc.strerror}",
            keys=[f"nexus.envoy_services.{what}"],
        ) from None


def _check_key_pair(chain: bytes, key: bytes) -> None:
    """Refuse to start with a key that is not the certificate's (grpc would only say that
    the credentials are invalid); the messages never show the key."""
    try:
        certificate = x509.load_pem_x509_certificate(chain)
    except ValueError:
        raise ConfigError(
            "nexus.envoy_services.tls_cert is not a PEM certificate",
            keys=["nexus.envoy_services.tls_cert"],
        ) from None
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        raise ConfigError(
            "the secret nexus.envoy_services.tls_key_secret names is not an unencrypted "
            "PEM private key",
            keys=["nexus.envoy_services.tls_key_secret"],
        ) from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if private.public_key().public_bytes(der, spki) != certificate.public_key().public_bytes(
        der, spki
    ):
        raise ConfigError(
            "the key in nexus.envoy_services.tls_key_secret is not tls_cert's",
            keys=["nexus.envoy_services.tls_key_secret"],
        )


async def start_envoy_listener(
    context: ServiceContext,
    settings: EnvoyServicesSettings,
    secrets: SecretProvider,
    *,
    authorization: AuthorizationService,
    rate_limit: RateLimitService,
    audit: AuditLog,
) -> int | None:
    """Start the listener when ``settings`` enable it (it stops with Nexus); returns its
    port, or None when it is off. Refused clients are recorded in ``audit`` (the
    entries' ``AuditLog``)."""
    if not settings.enabled:
        return None
    if settings.tls_cert is None or settings.client_ca is None:  # the settings refuse it too
        raise ConfigError("nexus.envoy_services needs tls_cert and client_ca when enabled")
    chain = _read(settings.tls_cert, "tls_cert")
    client_ca = _read(settings.client_ca, "client_ca")
    key = await secrets.get(settings.tls_key_secret)
    _check_key_pair(chain, key)
    credentials = grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=True
    )
    own = context.service_settings
    raw = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", own.max_message_bytes),
            ("grpc.max_send_message_length", own.max_message_bytes),
        ]
    )
    address = f"{settings.host}:{settings.port}"
    try:
        port = raw.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise PortInUse(f"cannot listen on {address}: {exc}") from None
    if port == 0:
        raise PortInUse(f"cannot listen on {address}: the port is in use")
    log_settings = context.settings.log
    edges = DatapunkServerInterceptor(
        "nexus",
        access_log=log_settings.access_log,
        slow_call_seconds=log_settings.slow_call_ms / 1000,
    )
    server = InstrumentedServer(raw, edges)
    clients = ClientCertificates(settings.allowed_clients, audit)
    certified = _Certified(clients, authorization, rate_limit)
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(certified, server)
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(certified, server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for name in ("", *SERVED):
        await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await raw.start()
    host = _loopback(own.host)
    mirror = asyncio.create_task(
        _mirror_health(
            health,
            f"[{host}]:{own.port}" if ":" in host else f"{host}:{own.port}",
            own.probe_interval,
        )
    )
    log.info("envoy services listening", address=f"{settings.host}:{port}", tls="mutual")

    async def stop() -> None:
        mirror.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await mirror
        await health.enter_graceful_shutdown()
        await raw.stop(own.shutdown_grace)

    context.cleanups.append(stop)
    return port
