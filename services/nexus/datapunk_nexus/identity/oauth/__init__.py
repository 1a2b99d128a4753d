"""Nexus as an OAuth 2.0 authorization server for machine clients (docs/identity.md).

Wiring, in the Nexus's setup (``datapunk_nexus.service``)::

    server = build_authorization_server(settings, pool, key_ring)
    await server.start()
    context.cleanups.append(server.stop)
    add_auth_service(context, server)
    edge.add_plain_routes(oauth_http_routes(server))  # edge: start_rest_edge's RestEdge

An edge verifying Nexus's own tokens uses ``server.keys`` (the ring's public keys, no
HTTP) and ``server.revocations.is_revoked`` (the deny list)::

    build_verifier(settings.auth, service="nexus", extra_audiences=[oauth.audience],
                   nexus_keys=server.keys, is_revoked=server.revocations.is_revoked)
"""

from __future__ import annotations

from datapunk_nexus.identity.oauth.clients import ClientSpec, ClientStore, OAuthClient
from datapunk_nexus.identity.oauth.http import oauth_http_routes
from datapunk_nexus.identity.oauth.keyring import KeyRing, RingKeySource
from datapunk_nexus.identity.oauth.revocation import RevocationList
from datapunk_nexus.identity.oauth.server import (
    AuthorizationServer,
    Introspection,
    TokenGrant,
    TokenRequest,
    build_authorization_server,
)
from datapunk_nexus.identity.oauth.servicer import AuthServicer, add_auth_service

__all__ = [
    "AuthServicer",
    "AuthorizationServer",
    "ClientSpec",
    "ClientStore",
    "Introspection",
    "KeyRing",
    "OAuthClient",
    "RevocationList",
    "RingKeySource",
    "TokenGrant",
    "TokenRequest",
    "add_auth_service",
    "build_authorization_server",
    "oauth_http_routes",
]
