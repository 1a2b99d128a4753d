"""The OAuth tests' harness (no tests here): a private PostgreSQL database with Nexus's
migrations, a software-key signing ring on it, the authorization server, AuthService
on a real grpc.aio server behind the Datapunk edges (authentication by bearer token,
anonymous calls allowed through so that IssueToken works), and a real REST edge serving
both the transcoded AuthService routes and the plain OAuth endpoints. The REST edge
enforces access as Nexus's does (an ``AccessGuard`` with the policy and the audit trail
on the same database): it authenticates the caller's token, decides, records, and calls
AuthService with the harness's own service token on the caller's behalf.

Each harness has its own database, so a ring made here never touches the keys of the
stack's Nexus."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
from datapunk_nexus.backends import Backends
from datapunk_nexus.contracts import default_descriptor_set, load_contracts
from datapunk_nexus.edge.routes import load_routes
from datapunk_nexus.edge.server import RestEdge
from datapunk_nexus.identity.audit.servicer import add_audit_service
from datapunk_nexus.identity.enforce import AccessGuard, EdgeAuthenticator
from datapunk_nexus.identity.oauth import (
    AuthorizationServer,
    ClientSpec,
    OAuthClient,
    add_auth_service,
    build_authorization_server,
    oauth_http_routes,
)
from datapunk_nexus.identity.policy import Requirements, add_policy_service
from datapunk_nexus.identity.service_tokens import ServiceTokens
from datapunk_nexus.identity.signing import SigningKeyRing, SoftwareKeys
from datapunk_shared.auth.identity import ANONYMOUS, Identity
from datapunk_shared.auth.interceptor import CallerAuthenticator
from datapunk_shared.auth.tokens import TokenVerifier
from datapunk_shared.auth.verifiers import build_verifier
from datapunk_shared.config import (
    AuthSettings,
    EngineSettings,
    NexusAuthSettings,
    NexusSettings,
    OAuthSettings,
    PostgresSettings,
    RestEdgeSettings,
    Settings,
)
from datapunk_shared.db import apply_migrations, load_migrations
from datapunk_shared.errors import Unauthenticated
from datapunk_shared.rpc.interceptor import DatapunkServerInterceptor
from datapunk_shared.rpc.server import ServiceContext, create_server
from datapunk_shared.secrets import EnvSecretProvider
from psycopg_pool import AsyncConnectionPool

from tests.support import free_port

__all__ = ["OAuthHarness", "oauth_harness"]


class _OptionalCredentials(CallerAuthenticator):
    """Verifies a bearer token when there is one; a call without any is anonymous (as
    IssueToken must be, and as the edges let the token endpoint be)."""

    async def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> Identity:
        pairs = list(metadata)
        if not any(key == "authorization" for key, _ in pairs):
            return ANONYMOUS
        return await super().authenticate(pairs)


class _ClientOrServiceTokens:
    """Client tokens as the authorization server verifies them (any audience it issued
    them for); a service token (the REST edge calling on a client's behalf) by the
    verifier a Nexus entry uses."""

    def __init__(self, server: AuthorizationServer, services: TokenVerifier) -> None:
        self._server = server
        self._services = services

    async def verify(self, token: str) -> Identity:
        try:
            return await self._server.verify(token)
        except Unauthenticated as refused:
            if refused.reason != "WRONG_TOKEN_TYPE":
                raise
            return await self._services.verify(token)


@dataclass
class OAuthHarness:
    url: str
    """The REST edge's base URL, which is also the issuer."""
    server: AuthorizationServer
    ring: SigningKeyRing
    pool: AsyncConnectionPool
    grpc_address: str
    database_url: str
    settings: Settings

    async def client(
        self,
        client_id: str | None = None,
        *,
        tenant: str = "acme",
        roles: tuple[str, ...] = ("reader",),
        scopes: tuple[str, ...] = ("lake.read", "lake.write"),
        audiences: tuple[str, ...] = (),
        refresh: bool = False,
    ) -> tuple[OAuthClient, str]:
        """A new client made directly through the server, and its secret."""
        spec = ClientSpec(
            client_id=client_id or f"c-{uuid.uuid4().hex[:12]}",
            display_name="test client",
            roles=roles,
            allowed_scopes=scopes,
            allowed_audiences=audiences,
            allow_refresh_tokens=refresh,
        )
        return await self.server.create_client(tenant, spec)


def _database_url(base: str, name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(base)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})


@asynccontextmanager
async def oauth_harness(base: Settings, **oauth: Any) -> AsyncIterator[OAuthHarness]:
    name = f"dp_oauth_test_{uuid.uuid4().hex[:12]}"
    admin_url = base.engines.postgres.url
    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as admin:
        await admin.execute(f"CREATE DATABASE {name}")
    url = _database_url(admin_url, name)
    rest_port = free_port()
    issuer = f"http://127.0.0.1:{rest_port}"
    oauth_settings = OAuthSettings(
        issuer=issuer,
        # The cheapest argon2id the settings allow: the tests hash many secrets.
        secret_time_cost=1,
        secret_memory_kib=1024,
        **oauth,
    )
    settings = Settings(
        nexus=NexusSettings(
            rest=RestEdgeSettings(port=rest_port, access_log=True),
            auth=NexusAuthSettings(oauth=oauth_settings),
        ),
        engines=EngineSettings(postgres=PostgresSettings(url=url)),
        auth=AuthSettings(issuer=issuer),
    )
    pool = AsyncConnectionPool(url, min_size=1, max_size=8, open=False)
    await pool.open()
    cleanups: list[Any] = [pool.close]
    try:
        async with pool.connection() as conn:
            await apply_migrations(conn, "nexus", load_migrations("datapunk_nexus.migrations"))
        ring = SigningKeyRing(
            pool, SoftwareKeys(EnvSecretProvider(), "oauth-tests/no-such-key"), overlap=3600
        )
        await ring.start()
        cleanups.append(ring.aclose)
        server = build_authorization_server(settings, pool, ring)
        await server.start()
        cleanups.append(server.stop)

        # Nexus's own and its clients' tokens, as a Nexus entry verifies them.
        verifier = build_verifier(
            settings.auth,
            service="nexus",
            extra_audiences=[oauth_settings.audience],
            nexus_keys=server.keys,
            is_revoked=server.revocations.is_revoked,
        )
        cleanups.append(verifier.aclose)
        edges = DatapunkServerInterceptor(
            "nexus",
            access_log="all",
            # Callers present their own client tokens here, as they do at the Nexus
            # entry (which then forwards on their behalf); cache_seconds=0 so that a
            # revocation is seen by the very next call.
            authenticator=_OptionalCredentials(
                _ClientOrServiceTokens(server, verifier),
                kinds=("client", "service"),
                cache_seconds=0.0,
            ),
        )
        grpc_server, grpc_port = create_server("127.0.0.1:0", edges=edges)
        context = ServiceContext(
            settings=settings, service_settings=settings.nexus, server=grpc_server
        )

        async def close_context() -> None:
            for cleanup in reversed(context.cleanups):
                await cleanup()

        cleanups.append(close_context)
        add_auth_service(context, server)
        authorizer = await add_policy_service(context, pool)
        audit = await add_audit_service(context)
        await grpc_server.start()
        cleanups.append(lambda: grpc_server.stop(None))
        grpc_address = f"127.0.0.1:{grpc_port}"

        addresses = {"nexus": grpc_address, "lake": grpc_address, "stream": grpc_address}
        guard = AccessGuard(
            EdgeAuthenticator(
                verifier, None, is_revoked=server.revocations.is_revoked, cache_seconds=0.0
            ),
            authorizer,
            Requirements(),
            audit,
            ServiceTokens(server.minter, settings.auth.audience),
            load_contracts().pool,
        )
        edge = RestEdge(
            settings.nexus.rest,
            load_routes(default_descriptor_set()),
            Backends(addresses, max_message_bytes=16 * 1024 * 1024),
            guard=guard,
        )
        edge.add_plain_routes(oauth_http_routes(server))
        await edge.start()
        cleanups.append(edge.stop)
        yield OAuthHarness(issuer, server, ring, pool, grpc_address, url, settings)
    finally:
        for cleanup in reversed(cleanups):
            await cleanup()
        async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as admin:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def grpc_channel(harness: OAuthHarness) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(harness.grpc_address)
