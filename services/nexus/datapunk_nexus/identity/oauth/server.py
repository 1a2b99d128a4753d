"""The authorization server: client administration, the token endpoint's two grants,
revocation (RFC 7009) and introspection (RFC 7662), shared by the gRPC servicer and the
REST edge's plain HTTP endpoints. Nothing here knows about gRPC or HTTP."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from datapunk_shared.auth.claims import datapunk_claims
from datapunk_shared.auth.identity import Identity
from datapunk_shared.auth.tokens import (
    DEFAULT_MAX_TOKEN_BYTES,
    IssuerPolicy,
    TokenVerifier,
)
from datapunk_shared.config import OAuthSettings, Settings
from datapunk_shared.errors import (
    DatapunkError,
    FieldViolation,
    InvalidArgument,
    Unauthenticated,
)
from datapunk_shared.logging import get_logger
from psycopg_pool import AsyncConnectionPool

from datapunk_nexus.identity.delegation import require_roles_held
from datapunk_nexus.identity.oauth._pg import connection
from datapunk_nexus.identity.oauth.access import AccessToken, AccessTokenMinter
from datapunk_nexus.identity.oauth.client_secrets import SecretHasher, new_client_secret
from datapunk_nexus.identity.oauth.clients import ClientSpec, ClientStore, OAuthClient
from datapunk_nexus.identity.oauth.keyring import KeyInfo, KeyRing, RingKeySource
from datapunk_nexus.identity.oauth.refresh import (
    IssuedAccess,
    RefreshGrant,
    RefreshTokenStore,
    invalid_grant,
    looks_like_refresh_token,
    record_access,
)
from datapunk_nexus.identity.oauth.revocation import RevocationList
from datapunk_nexus.identity.oauth.trail import ISSUE_METHOD, Recorder, TokenTrail

__all__ = [
    "GRANT_TYPES",
    "AuthorizationServer",
    "Introspection",
    "TokenGrant",
    "TokenRequest",
    "build_authorization_server",
    "invalid_client",
]

log = get_logger("datapunk.nexus.oauth")

GRANT_TYPES = ("client_credentials", "refresh_token")

_PRUNE_INTERVAL = 60.0
_ALGORITHMS = frozenset({"ES256"})


def invalid_client() -> Unauthenticated:
    """INVALID_CLIENT: the same answer for an unknown client and a wrong secret."""
    return Unauthenticated("client authentication failed", reason="INVALID_CLIENT")


def _bad_request(reason: str, field_name: str, message: str) -> InvalidArgument:
    return InvalidArgument(
        message, violations=[FieldViolation(field_name, message, reason)], reason=reason
    )


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """A token request, from the HTTP form or the gRPC message. ``scopes`` is ``None``
    when the request named none."""

    grant_type: str
    client_id: str
    client_secret: str
    scopes: tuple[str, ...] | None = None
    refresh_token: str = ""
    audience: str = ""


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """A successful token response."""

    access: AccessToken
    refresh_token: str = ""


@dataclass(frozen=True, slots=True)
class Introspection:
    """An introspection answer; ``claims`` is empty when the token is not active."""

    active: bool
    claims: Mapping[str, Any] = field(default_factory=dict)
    identity: Identity | None = None


INACTIVE = Introspection(active=False)


class AuthorizationServer:
    """Nexus's OAuth 2.0 authorization server for machine clients."""

    def __init__(
        self,
        settings: OAuthSettings,
        pool: AsyncConnectionPool,
        *,
        issuer: str,
        clients: ClientStore,
        refresh_tokens: RefreshTokenStore,
        revocations: RevocationList,
        minter: AccessTokenMinter,
        hasher: SecretHasher,
        ring: KeyRing,
        trail: TokenTrail | None = None,
    ) -> None:
        self.settings = settings
        self.trail = trail or TokenTrail()
        """The audit records of token requests, failed client authentications and
        revocations (the entries let the token endpoints through unaudited)."""
        self.issuer = issuer
        self._pool = pool
        self.clients = clients
        self.refresh_tokens = refresh_tokens
        self.revocations = revocations
        self.minter = minter
        """Signs this server's access tokens (and Nexus's own service tokens)."""
        self._hasher = hasher
        self.ring = ring
        self.keys = RingKeySource(ring, issuer, max_age=settings.signing_keys_max_age)
        """Nexus's own public keys, for ``TokenVerifier`` (``build_verifier``'s
        ``nexus_keys``)."""
        self._prune_task: asyncio.Task[None] | None = None

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Load the revocation list and start keeping it (and the tables) tidy."""
        await self.revocations.start()
        self._prune_task = asyncio.create_task(self._prune_forever(), name="oauth-prune")

    async def stop(self) -> None:
        task, self._prune_task = self._prune_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.revocations.stop()

    # --- clients ------------------------------------------------------------------------

    async def create_client(
        self, tenant: str, spec: ClientSpec, *, held_roles: Collection[str] | None = None
    ) -> tuple[OAuthClient, str]:
        """A new client in ``tenant`` and its secret (returned only here). ``held_roles``
        are the roles of the caller making it, which must allow handing out the client's
        roles (``ROLE_NOT_HELD`` otherwise, see ``identity.delegation``); None only when
        the platform itself makes a client."""
        if held_roles is not None:
            require_roles_held(held_roles, spec.roles, "an OAuth client")
        secret = new_client_secret()
        client = await self.clients.create(tenant, spec, await self._hasher.hash(secret))
        log.info("oauth client created", client_id=client.client_id, tenant=tenant)
        return client, secret

    async def rotate_client_secret(
        self, tenant: str, client_id: str, *, held_roles: Collection[str] | None = None
    ) -> tuple[OAuthClient, str]:
        """A new secret for a client of ``tenant``; the old one stops working at once. The
        new secret goes to the caller, so its ``held_roles`` must allow the client's roles,
        as for making the client."""
        if held_roles is not None:
            client = await self.clients.get(tenant, client_id)
            require_roles_held(held_roles, client.roles, "an OAuth client")
        secret = new_client_secret()
        client = await self.clients.set_secret(tenant, client_id, await self._hasher.hash(secret))
        log.info("oauth client secret rotated", client_id=client_id, tenant=tenant)
        return client, secret

    async def delete_client(self, tenant: str, client_id: str) -> None:
        """Delete a client of ``tenant``; its tokens stop working."""
        self.revocations.add(await self.clients.delete(tenant, client_id))
        log.info("oauth client deleted", client_id=client_id, tenant=tenant)

    async def authenticate_client(
        self, client_id: str, secret: str, *, audit_as: str = "", client_address: str = ""
    ) -> OAuthClient:
        """The client whose id and secret these are; INVALID_CLIENT otherwise (taking as
        long for an unknown client as for a wrong secret). With ``audit_as`` (the gRPC
        method of the endpoint asking, such as ``trail.REVOKE_METHOD``) a failure is
        recorded on the audit trail."""
        try:
            return await self._authenticated_client(client_id, secret)
        except Unauthenticated as refused:
            if audit_as:
                action = "token." + audit_as.rsplit("/", 1)[1].removesuffix("Token").lower()
                await self.trail.refused(
                    action,
                    audit_as,
                    refused.reason,
                    client=None,
                    client_id=client_id,
                    client_address=client_address,
                )
            raise

    async def _authenticated_client(self, client_id: str, secret: str) -> OAuthClient:
        found = await self.clients.credentials(client_id) if client_id else None
        stored_hash = found[1] if found is not None else None
        if not await self._hasher.check(stored_hash, secret) or found is None:
            shown = client_id if found is not None else "<unknown>"
            log.info("oauth client authentication failed", client_id=shown)
            raise invalid_client()
        client, stored = found
        if self._hasher.needs_rehash(stored):
            await self.clients.rehash_secret(client_id, stored, await self._hasher.hash(secret))
        return client

    # --- the token endpoint -------------------------------------------------------------

    async def issue(self, request: TokenRequest, *, client_address: str = "") -> TokenGrant:
        """Answer a token request (RFC 6749 sections 4.4 and 6). Granted or refused, it is
        recorded on the audit trail (``token.issue``; refused: DENY with the reason)."""
        client: OAuthClient | None = None
        try:
            _check_token_request(request)  # before the (costly) client authentication
            client = await self._authenticated_client(request.client_id, request.client_secret)
            grant = await self._grant(client, request)
        except DatapunkError as refused:
            await self.trail.refused(
                "token.issue",
                ISSUE_METHOD,
                refused.reason,
                client=client,
                client_id=request.client_id,
                client_address=client_address,
            )
            raise
        await self.trail.issued(client, grant.access.jti, client_address)
        return grant

    async def _grant(self, client: OAuthClient, request: TokenRequest) -> TokenGrant:
        if request.grant_type == "client_credentials":
            grant = await self._client_credentials(client, request)
        else:
            grant = await self._refresh(client, request)
        log.info(
            "oauth token issued",
            grant_type=request.grant_type,
            client_id=client.client_id,
            tenant=client.tenant,
            jti=grant.access.jti,
            refresh=bool(grant.refresh_token),
        )
        return grant

    async def _client_credentials(self, client: OAuthClient, request: TokenRequest) -> TokenGrant:
        scopes = _granted_scopes(request.scopes, client.allowed_scopes)
        audience = self._audience(client, request.audience)
        access = self.minter.mint(client, scopes, audience)
        issued = IssuedAccess(access.jti, access.expires_at)
        if not client.allow_refresh_tokens:
            async with connection(self._pool) as conn:
                await record_access(conn, issued, client.client_id, client.tenant, None)
            return TokenGrant(access)
        refresh = await self.refresh_tokens.start_family(
            client.client_id, client.tenant, scopes, audience, issued
        )
        return TokenGrant(access, refresh)

    async def _refresh(self, client: OAuthClient, request: TokenRequest) -> TokenGrant:
        if not client.allow_refresh_tokens:
            raise invalid_grant("the client may not use refresh tokens")

        def scopes_for(grant: RefreshGrant) -> tuple[str, ...]:
            """Refused before anything changes: another audience, or scopes beyond the
            original grant (or beyond what the client may still have)."""
            if request.audience and request.audience != grant.audience:
                raise _bad_request(
                    "INVALID_TARGET",
                    "audience",
                    "a refreshed token keeps the audience of its original grant",
                )
            allowed = tuple(s for s in grant.scopes if s in client.allowed_scopes)
            return _granted_scopes(request.scopes, allowed)

        minted: list[AccessToken] = []

        async def mint(grant: RefreshGrant) -> IssuedAccess:
            minted.append(self.minter.mint(client, scopes_for(grant), grant.audience))
            return IssuedAccess(minted[0].jti, minted[0].expires_at)

        _, _, successor = await self.refresh_tokens.rotate(
            client.client_id, request.refresh_token, scopes_for, mint
        )
        return TokenGrant(minted[0], successor)

    def _audience(self, client: OAuthClient, asked: str) -> str:
        if not asked or asked == self.settings.audience:
            return self.settings.audience
        if asked not in client.allowed_audiences:
            raise _bad_request(
                "INVALID_TARGET", "audience", "the client may not ask for that audience"
            )
        return asked

    # --- revocation and introspection --------------------------------------------------

    async def revoke(
        self,
        token: str,
        hint: str = "",
        *,
        client: OAuthClient | None = None,
        tenant: str | None = None,
        client_address: str = "",
    ) -> None:
        """Revoke ``token`` if it is one of ``client``'s (or, without a client, of
        ``tenant``'s); anything else is quietly ignored (RFC 7009 section 2.2). ``hint``
        (RFC 7009's ``token_type_hint``) is accepted and not needed."""
        if client is None and tenant is None:
            raise ValueError("revoke needs the client or the tenant it acts for")
        if client is not None:
            await self.trail.revoked(client, client_address)
        # Our two kinds of token cannot be confused (a refresh token has its prefix, an
        # access token is a JWT), so the hint is not needed to find either.
        del hint
        if looks_like_refresh_token(token):
            done = await self.refresh_tokens.revoke(
                token, client.client_id if client else None, None if client else tenant
            )
            if done:
                log.info("oauth refresh token family revoked", by=_by(client, tenant))
            return
        try:
            claims, identity = await self._verified(token, check_revoked=False)
        except Unauthenticated:
            return  # not a valid access token of ours: nothing to revoke
        owner_ok = (
            claims.get("client_id") == client.client_id
            if client is not None
            else identity.tenant == tenant
        )
        if not owner_ok:
            return
        await self.revocations.revoke(identity.credential_id, float(claims["exp"]))
        log.info("oauth access token revoked", jti=identity.credential_id, by=_by(client, tenant))

    async def introspect(self, token: str, *, tenant: str) -> Introspection:
        """Whether ``token`` is an active access token of ``tenant``, with its claims
        (RFC 7662). Refresh tokens, ID tokens and anything else are inactive."""
        if looks_like_refresh_token(token):
            return INACTIVE
        try:
            claims, identity = await self._verified(token, check_revoked=True)
        except Unauthenticated:
            return INACTIVE
        if identity.tenant != tenant:
            return INACTIVE
        return Introspection(active=True, claims=claims, identity=identity)

    async def verify(self, token: str) -> Identity:
        """The identity a client's access token from this server proves, with every check
        of ``TokenVerifier`` including revocation. Service tokens and other issuers'
        tokens are refused: an edge verifies those with ``build_verifier`` (see the
        package's docstring)."""
        _, identity = await self._verified(token, check_revoked=True)
        return identity

    async def _verified(
        self, token: str, *, check_revoked: bool
    ) -> tuple[dict[str, Any], Identity]:
        # Nexus issues tokens for its default audience and for the audiences clients may
        # ask for; whichever the token names is fine here (the resource server that
        # introspects checks the audience itself, RFC 7662 section 4).
        captured: dict[str, Any] = {}

        def mapper(claims: Mapping[str, Any]) -> Identity:
            captured.update(claims)
            return datapunk_claims(claims)

        policy = IssuerPolicy(
            issuer=self.issuer,
            audiences=_unverified_audiences(token) or frozenset({self.settings.audience}),
            algorithms=_ALGORITHMS,
            mapper=mapper,
        )
        verifier = TokenVerifier(
            [policy],
            self.keys,
            is_revoked=self.revocations.is_revoked if check_revoked else None,
        )
        identity = await verifier.verify(token)
        if identity.kind != "client":
            raise Unauthenticated("not a client's access token", reason="WRONG_TOKEN_TYPE")
        return captured, identity

    # --- metadata -----------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """The authorization server metadata (RFC 8414)."""
        auth_methods = ["client_secret_basic", "client_secret_post"]
        return {
            "issuer": self.issuer,
            "token_endpoint": f"{self.issuer}/oauth/token",
            "jwks_uri": f"{self.issuer}/.well-known/jwks.json",
            "revocation_endpoint": f"{self.issuer}/oauth/revoke",
            "introspection_endpoint": f"{self.issuer}/oauth/introspect",
            "grant_types_supported": list(GRANT_TYPES),
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint_auth_methods_supported": auth_methods,
            "introspection_endpoint_auth_methods_supported": auth_methods,
            "access_token_signing_alg_values_supported": sorted(_ALGORITHMS),
        }

    async def rotate_signing_key(self) -> KeyInfo:
        """Make a new active signing key (the old one stays published for the overlap)."""
        key = await self.ring.rotate()
        self.keys.invalidate()
        return key

    async def delete_signing_key(self, kid: str) -> None:
        """Delete a retired signing key; tokens it signed are refused from now on."""
        await self.ring.delete(kid)
        self.keys.invalidate()

    async def jwks(self) -> Mapping[str, Any]:
        """The JWKS document of the keys tokens may be signed with now."""
        return await self.ring.jwks()

    # --- housekeeping -------------------------------------------------------------------

    async def prune(self) -> None:
        """Delete what can no longer matter: revocations and access-token records of
        expired tokens, and refresh-token families past their absolute lifetime."""
        async with connection(self._pool) as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM nexus.oauth_revoked_tokens"
                " WHERE expire_time < now() - interval '10 minutes'"
            )
            await conn.execute(
                "DELETE FROM nexus.oauth_access_tokens"
                " WHERE expire_time < now() - interval '10 minutes'"
            )
            await conn.execute("DELETE FROM nexus.oauth_refresh_families WHERE expire_time < now()")

    async def _prune_forever(self) -> None:
        while True:
            await asyncio.sleep(_PRUNE_INTERVAL)
            try:
                await self.prune()
            except DatapunkError as exc:
                log.warning("cannot prune expired OAuth records", error=exc.message)


def _by(client: OAuthClient | None, tenant: str | None) -> str:
    return client.subject if client is not None else f"tenant:{tenant}"


def _granted_scopes(asked: Sequence[str] | None, allowed: Sequence[str]) -> tuple[str, ...]:
    """The scopes to grant: all ``allowed`` when none were asked for, else those asked
    (each once, in order), which must all be allowed."""
    if not asked:
        return tuple(allowed)
    granted = tuple(dict.fromkeys(asked))
    if not set(granted) <= set(allowed):
        raise _bad_request(
            "INVALID_SCOPE", "scope", "a scope asked for is not allowed for this client"
        )
    return granted


def _check_token_request(request: TokenRequest) -> None:
    if request.grant_type not in GRANT_TYPES:
        raise _bad_request(
            "UNSUPPORTED_GRANT_TYPE",
            "grant_type",
            "the grant type is not supported; use client_credentials or refresh_token",
        )
    if request.grant_type == "refresh_token" and not request.refresh_token:
        raise _bad_request(
            "INVALID_REQUEST", "refresh_token", "the refresh_token grant needs refresh_token"
        )


def _unverified_audiences(token: str) -> frozenset[str]:
    """The ``aud`` a token claims, read before verification only to pick the policy."""
    if len(token) > DEFAULT_MAX_TOKEN_BYTES:
        return frozenset()  # the verifier refuses it for its size
    parts = token.split(".")
    if len(parts) != 3:
        return frozenset()
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        return frozenset()
    aud = payload.get("aud") if isinstance(payload, dict) else None
    if isinstance(aud, str) and aud:
        return frozenset({aud})
    if isinstance(aud, list) and aud and all(isinstance(a, str) and a for a in aud):
        return frozenset(aud)
    return frozenset()


def build_authorization_server(
    settings: Settings,
    pool: AsyncConnectionPool,
    key_ring: KeyRing,
    *,
    audit: Recorder | None = None,
) -> AuthorizationServer:
    """The authorization server of ``settings.nexus.auth.oauth`` on ``pool`` (Nexus's
    PostgreSQL, migrations applied by the service) signing with ``key_ring`` and
    recording token requests with ``audit`` (``AuditLog.record``). Call
    ``await server.start()`` before serving and ``await server.stop()`` at shutdown."""
    oauth = settings.nexus.auth.oauth
    issuer = oauth.issuer or settings.auth.issuer
    revocations = RevocationList(
        pool,
        settings.engines.postgres.url,
        poll_interval=oauth.revocation_poll_interval,
        max_staleness=oauth.revocation_max_staleness,
    )
    return AuthorizationServer(
        oauth,
        pool,
        issuer=issuer,
        clients=ClientStore(pool),
        refresh_tokens=RefreshTokenStore(
            pool,
            token_ttl=oauth.refresh_token_ttl,
            family_lifetime=oauth.refresh_family_lifetime,
            on_revoked=revocations.add,
        ),
        revocations=revocations,
        minter=AccessTokenMinter(key_ring.active_signer, issuer=issuer, ttl=oauth.access_token_ttl),
        hasher=SecretHasher(oauth),
        ring=key_ring,
        trail=TokenTrail(audit),
    )
