"""Credentials for the test suite: one issuer standing in for Nexus's signing key.

Every service a test starts trusts this issuer (``DATAPUNK_AUTH__ISSUER``), and every
Nexus a test starts signs with the same key (the software signing backend, its PEM given
as a secret), so a token minted here and a token a test Nexus mints verify alike. The
issuer's discovery document and JWKS are served over real HTTP from a thread, the way
services fetch Nexus's keys in production."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from datapunk_nexus.identity.api_keys.key_format import format_api_key, new_key_id, new_secret
from datapunk_nexus.identity.signing import SoftwareSigner
from datapunk_shared.auth.identity import Identity
from datapunk_shared.auth.interceptor import AUTHORIZATION_KEY, ON_BEHALF_KEY, encode_on_behalf

from tests.token_kit import b64, b64json

__all__ = [
    "TestIssuer",
    "authed_channel",
    "authed_sync_channel",
    "entry_channel",
    "env_with_issuer",
    "issuer",
    "tenant_caller",
]

Metadata = tuple[tuple[str, str], ...]


class TestIssuer:
    """An ES256 key, its JWKS on a local HTTP server, and service tokens signed with it."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self) -> None:
        private = ec.generate_private_key(ec.SECP256R1())
        self.pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.signer = SoftwareSigner(private)
        self.pepper = secrets.token_bytes(32)
        self.chain_key = secrets.token_bytes(32)
        # The bootstrap administrator of every test Nexus (admin of the default tenant):
        # calls through a Nexus entry present it as ``x-api-key``.
        self.admin_key = format_api_key(new_key_id(), new_secret())
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                documents: dict[str, Any] = {
                    "/jwks.json": {"keys": [issuer.signer.public_jwk()]},
                    "/.well-known/oauth-authorization-server": {
                        "issuer": issuer.url,
                        "jwks_uri": f"{issuer.url}/jwks.json",
                    },
                }
                document = documents.get(self.path)
                body = json.dumps(document or {"error": "not found"}).encode()
                self.send_response(200 if document is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return Handler

    def env(self) -> dict[str, str]:
        """What a service process needs to trust this issuer, and a Nexus to sign as it."""
        return {
            "DATAPUNK_AUTH__ISSUER": self.url,
            "DATAPUNK_AUTH__JWKS_URL": f"{self.url}/jwks.json",
            "DATAPUNK_NEXUS__AUTH__SIGNING__BACKEND": "software",
            "DATAPUNK_SECRET_NEXUS__SIGNING_KEY": self.pem.decode(),
            "DATAPUNK_SECRET_NEXUS__API_KEY_PEPPER": self.pepper.hex(),
            "DATAPUNK_SECRET_NEXUS__BOOTSTRAP_ADMIN_KEY": self.admin_key,
            "DATAPUNK_SECRET_NEXUS__AUDIT_CHAIN_KEY": self.chain_key.hex(),
        }

    def token(
        self,
        *,
        audience: str | Sequence[str] = "datapunk:lake",
        subject: str = "service:nexus",
        ttl: float = 600,
        **claims: Any,
    ) -> str:
        """A signed access token (``typ: at+jwt``), by default a Nexus service token."""
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.url,
            "sub": subject,
            "aud": audience if isinstance(audience, str) else list(audience),
            "jti": secrets.token_urlsafe(12),
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl),
            **claims,
        }
        header = {"alg": "ES256", "typ": "at+jwt", "kid": self.signer.kid}
        signing_input = f"{b64json(header)}.{b64json(body)}"
        return f"{signing_input}.{b64(self.signer.sign(signing_input.encode()))}"

    def metadata(self, service: str = "lake", on_behalf: Identity | None = None) -> Metadata:
        """Call metadata of Nexus calling ``service``, optionally for a caller."""
        found: list[tuple[str, str]] = [
            (AUTHORIZATION_KEY, f"Bearer {self.token(audience=f'datapunk:{service}')}")
        ]
        if on_behalf is not None:
            found.append((ON_BEHALF_KEY, encode_on_behalf(on_behalf)))
        return tuple(found)


_issuer: TestIssuer | None = None


def issuer() -> TestIssuer:
    """The suite's one issuer, started on first use."""
    global _issuer
    if _issuer is None:
        _issuer = TestIssuer()
    return _issuer


class _AddMetadata:
    """Adds fixed metadata to every call of a channel (before the call's own)."""

    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        own = tuple(details.metadata or ())
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*self._metadata, *own),
            details.credentials,
            details.wait_for_ready,
        )


class _AddToUnaryUnary(_AddMetadata, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _AddToUnaryStream(_AddMetadata, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _AddToStreamUnary(_AddMetadata, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _AddToStreamStream(_AddMetadata, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def _adding(metadata: Metadata) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that add ``metadata`` to every kind of call. One per kind: grpc.aio
    files an interceptor under the first kind it implements only (unary-unary), so a
    single object implementing all four would never see a streaming call."""
    kinds = (_AddToUnaryUnary, _AddToUnaryStream, _AddToStreamUnary, _AddToStreamStream)
    return [kind(metadata) for kind in kinds]


def authed_channel(
    address: str,
    service: str = "lake",
    *,
    on_behalf: Identity | None = None,
    options: Sequence[tuple[str, Any]] | None = None,
) -> grpc.aio.Channel:
    """A channel to ``service`` at ``address`` whose calls carry a Nexus service token
    (and the caller Nexus acts for, when given)."""
    metadata = issuer().metadata(service, on_behalf)
    return grpc.aio.insecure_channel(address, options=options, interceptors=_adding(metadata))


class _SyncCallDetails(grpc.ClientCallDetails):
    """A call's details with more metadata (grpc leaves this class to its users)."""

    def __init__(self, details: grpc.ClientCallDetails, metadata: Metadata) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = (*metadata, *(details.metadata or ()))
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


class _AddSyncMetadata(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """``_AddMetadata`` for a synchronous channel."""

    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _SyncCallDetails(details, self._metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def authed_sync_channel(
    address: str,
    service: str = "lake",
    *,
    on_behalf: Identity | None = None,
    options: Sequence[tuple[str, Any]] | None = None,
) -> grpc.Channel:
    """``authed_channel`` for synchronous code: a ``grpc.Channel`` to ``service`` at
    ``address`` whose calls carry a Nexus service token (and the caller it acts for)."""
    metadata = issuer().metadata(service, on_behalf)
    return grpc.intercept_channel(
        grpc.insecure_channel(address, options=options), _AddSyncMetadata(metadata)
    )


def entry_channel(
    address: str,
    *,
    api_key: str | None = None,
    options: Sequence[tuple[str, Any]] | None = None,
) -> grpc.aio.Channel:
    """A channel to a Nexus gRPC entry whose calls carry an API key (by default the
    test Nexus's bootstrap administrator, admin of the default tenant)."""
    key = api_key if api_key is not None else issuer().admin_key
    return grpc.aio.insecure_channel(
        address, options=options, interceptors=_adding((("x-api-key", key),))
    )


def tenant_caller(tenant: str, *roles: str) -> Identity:
    """An end-user identity of ``tenant`` for ``authed_channel(on_behalf=...)``."""
    return Identity(
        subject=f"client:test-{tenant}", tenant=tenant, kind="client", roles=frozenset(roles)
    )


def env_with_issuer(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """``extra`` plus the issuer's environment."""
    return {**issuer().env(), **(extra or {})}
