"""The standard OAuth 2.0 HTTP endpoints, served by the REST edge beside its transcoded
routes (``RestEdge.add_plain_routes``):

- ``GET /.well-known/oauth-authorization-server``: metadata (RFC 8414);
- ``GET /.well-known/jwks.json``: the public signing keys;
- ``POST /oauth/token``: the token endpoint (RFC 6749 sections 4.4, 5 and 6);
- ``POST /oauth/revoke``: revocation (RFC 7009);
- ``POST /oauth/introspect``: introspection (RFC 7662).

The three POST endpoints pass the edge's rate limits and concurrency bounds as calls of
their gRPC twins (``AuthService.IssueToken``, ``RevokeToken``, ``IntrospectToken``) from
the client's address, and each refused client authentication (401) counts once more, as
a wrong API key does: guessing client secrets meets the limits keyed by client IP (429).

The three POST endpoints take ``application/x-www-form-urlencoded`` bodies and
authenticate the client with ``client_secret_basic`` (HTTP Basic) or ``client_secret_post``
(form fields), never both. Errors are RFC 6749 JSON bodies (``{"error": ...}``), client
authentication failures 401 with ``WWW-Authenticate``; every answer that carries or
concerns a token has ``Cache-Control: no-store``. Bodies, secrets and tokens are never
logged."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote_plus

from aiohttp import web
from datapunk_shared.errors import InvalidArgument, Unauthenticated

from datapunk_nexus.identity.oauth.clients import OAuthClient
from datapunk_nexus.identity.oauth.server import (
    AuthorizationServer,
    Introspection,
    TokenRequest,
    invalid_client,
)
from datapunk_nexus.identity.oauth.trail import INTROSPECT_METHOD, ISSUE_METHOD, REVOKE_METHOD

__all__ = [
    "CLIENT_ADDRESS_KEY",
    "PlainHandler",
    "PlainRoute",
    "introspection_document",
    "oauth_http_routes",
]

CLIENT_ADDRESS_KEY = web.RequestKey("datapunk.client_address", str)
"""Where the REST edge leaves the client's address on a plain route's request (its
``X-Forwarded-For`` believed from trusted proxies only), for the audit records."""

PlainHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class PlainRoute(NamedTuple):
    """A route for ``RestEdge.add_plain_routes``."""

    http_method: str
    path: str
    handler: PlainHandler
    gated_as: str | None = None
    """The gRPC method whose rate limits its requests meet; None: not gated."""
    refused_status: int | None = None
    """The status of an answer refusing the client's credentials (counted once more)."""


MAX_FORM_BYTES = 64 * 1024
"""Token, revocation and introspection requests are small; more is refused (413)."""

_FORM = "application/x-www-form-urlencoded"
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_WWW_AUTHENTICATE = 'Basic realm="datapunk", charset="UTF-8"'

# Reasons of the error vocabulary to RFC 6749 section 5.2 error codes.
_OAUTH_ERRORS = {
    "INVALID_CLIENT": "invalid_client",
    "INVALID_GRANT": "invalid_grant",
    "UNSUPPORTED_GRANT_TYPE": "unsupported_grant_type",
    "INVALID_SCOPE": "invalid_scope",
    "INVALID_TARGET": "invalid_target",
}


class _OAuthError(Exception):
    """An RFC 6749 error answer."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


def _json(
    document: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] = _NO_STORE
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(document, separators=(",", ":")).encode(),
        headers={"Content-Type": "application/json", **headers},
    )


def _error_response(error: _OAuthError) -> web.Response:
    headers = dict(_NO_STORE)
    if error.error == "invalid_client":
        headers["WWW-Authenticate"] = _WWW_AUTHENTICATE
    return _json(
        {"error": error.error, "error_description": error.description}, error.status, headers
    )


def _from_domain(exc: InvalidArgument | Unauthenticated) -> _OAuthError:
    code = _OAUTH_ERRORS.get(exc.reason, "invalid_request")
    return _OAuthError(code, exc.message, 401 if code == "invalid_client" else 400)


async def _form(request: web.BaseRequest) -> dict[str, str]:
    """The request's form parameters; each may appear once (RFC 6749 section 3.2)."""
    content_type = request.headers.get("Content-Type", "")
    if content_type.split(";", 1)[0].strip().lower() != _FORM:
        raise _OAuthError("invalid_request", f"the body must be {_FORM}")
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise _OAuthError("invalid_request", "the request body is too large", 413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():  # a body may come in many pieces
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            raise _OAuthError("invalid_request", "the request body is too large", 413)
        chunks.append(chunk)
    body = b"".join(chunks)
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=32)
    except (UnicodeDecodeError, ValueError):
        raise _OAuthError("invalid_request", "the body is not a valid form") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise _OAuthError("invalid_request", f"the parameter {name!r} is repeated")
        form[name] = value
    return form


def _peer(request: web.BaseRequest) -> str:
    """The client's address, for the audit trail: the edge's (which believes trusted
    proxies), else the connection's peer."""
    address = request.get(CLIENT_ADDRESS_KEY)
    return address if isinstance(address, str) and address else str(request.remote or "")


def _client_credentials(request: web.BaseRequest, form: Mapping[str, str]) -> tuple[str, str]:
    """The client id and secret, from HTTP Basic or from the form (not both)."""
    header = request.headers.get("Authorization", "")
    in_form = "client_id" in form or "client_secret" in form
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() == "basic":
        if in_form:
            raise _OAuthError(
                "invalid_request", "authenticate the client one way only (Basic or form)"
            )
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise _OAuthError("invalid_client", "client authentication failed", 401) from None
        client_id, colon, secret = decoded.partition(":")
        if not colon:
            raise _OAuthError("invalid_client", "client authentication failed", 401)
        # RFC 6749 section 2.3.1: both are form-encoded before Basic encoding.
        return unquote_plus(client_id), unquote_plus(secret)
    client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
    if not client_id or not secret:
        raise _OAuthError("invalid_client", "client authentication failed", 401)
    return client_id, secret


def _scopes(form: Mapping[str, str]) -> tuple[str, ...] | None:
    text = form.get("scope")
    if text is None or not text.strip():
        return None
    scopes = tuple(text.split(" "))
    if not all(_SCOPE_TOKEN.fullmatch(scope) for scope in scopes):
        raise _OAuthError("invalid_scope", "the scope parameter is malformed")
    return scopes


def _audience(form: Mapping[str, str]) -> str:
    audience, resource = form.get("audience", ""), form.get("resource", "")
    if audience and resource and audience != resource:
        raise _OAuthError("invalid_target", "audience and resource name different targets")
    return audience or resource


def introspection_document(result: Introspection) -> dict[str, Any]:
    """The RFC 7662 answer: ``{"active": false}`` alone for an inactive token."""
    if not result.active or result.identity is None:
        return {"active": False}
    claims, identity = result.claims, result.identity
    document: dict[str, Any] = {
        "active": True,
        "client_id": claims.get("client_id", ""),
        "sub": identity.subject,
        "token_type": "Bearer",
        "exp": claims["exp"],
        "iat": claims["iat"],
        "nbf": claims["nbf"],
        "aud": claims["aud"],
        "iss": claims["iss"],
        "jti": identity.credential_id,
        "tenant": identity.tenant,
        "roles": sorted(identity.roles),
    }
    if identity.scopes:
        document["scope"] = " ".join(sorted(identity.scopes))
    return document


class _Endpoints:
    def __init__(self, server: AuthorizationServer) -> None:
        self._server = server
        self._metadata = json.dumps(server.metadata(), separators=(",", ":")).encode()

    async def metadata(self, request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(
            body=self._metadata,
            headers={"Content-Type": "application/json", "Cache-Control": "max-age=300"},
        )

    async def jwks(self, request: web.BaseRequest) -> web.StreamResponse:
        # Short caching: a rotation must reach verifiers well within a token's lifetime.
        return _json(await self._server.jwks(), headers={"Cache-Control": "max-age=60"})

    async def token(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            form = await _form(request)
            client_id, secret = _client_credentials(request, form)
            grant_type = form.get("grant_type", "")
            if not grant_type:
                raise _OAuthError("invalid_request", "grant_type is required")
            token_request = TokenRequest(
                grant_type=grant_type,
                client_id=client_id,
                client_secret=secret,
                scopes=_scopes(form),
                refresh_token=form.get("refresh_token", ""),
                audience=_audience(form),
            )
            grant = await self._server.issue(token_request, client_address=_peer(request))
        except _OAuthError as error:
            return _error_response(error)
        except (InvalidArgument, Unauthenticated) as exc:
            return _error_response(_from_domain(exc))
        document: dict[str, Any] = {
            "access_token": grant.access.token,
            "token_type": "Bearer",
            "expires_in": grant.access.expires_in,
        }
        if grant.access.scopes:
            document["scope"] = " ".join(grant.access.scopes)
        if grant.refresh_token:
            document["refresh_token"] = grant.refresh_token
        return _json(document)

    async def _authenticated(
        self, request: web.BaseRequest, method: str
    ) -> tuple[OAuthClient, dict[str, str]]:
        form = await _form(request)
        client_id, secret = _client_credentials(request, form)
        try:
            client = await self._server.authenticate_client(
                client_id, secret, audit_as=method, client_address=_peer(request)
            )
        except Unauthenticated:
            raise _from_domain(invalid_client()) from None
        if not form.get("token"):
            raise _OAuthError("invalid_request", "the token parameter is required")
        return client, form

    async def revoke(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            client, form = await self._authenticated(request, REVOKE_METHOD)
        except _OAuthError as error:
            return _error_response(error)
        hint = form.get("token_type_hint", "")
        await self._server.revoke(form["token"], hint, client=client, client_address=_peer(request))
        return web.Response(status=200, headers=_NO_STORE)

    async def introspect(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            client, form = await self._authenticated(request, INTROSPECT_METHOD)
        except _OAuthError as error:
            return _error_response(error)
        result = await self._server.introspect(form["token"], tenant=client.tenant)
        return _json(introspection_document(result))


def oauth_http_routes(server: AuthorizationServer) -> list[PlainRoute]:
    """The OAuth endpoints for ``RestEdge.add_plain_routes``. The metadata and the keys
    are public documents served from memory; the endpoints that check a client secret
    are gated (a 401 is a refused client)."""
    endpoints = _Endpoints(server)
    refused = 401
    return [
        PlainRoute("GET", "/.well-known/oauth-authorization-server", endpoints.metadata),
        PlainRoute("GET", "/.well-known/jwks.json", endpoints.jwks),
        PlainRoute("POST", "/oauth/token", endpoints.token, ISSUE_METHOD, refused),
        PlainRoute("POST", "/oauth/revoke", endpoints.revoke, REVOKE_METHOD, refused),
        PlainRoute("POST", "/oauth/introspect", endpoints.introspect, INTROSPECT_METHOD, refused),
    ]
