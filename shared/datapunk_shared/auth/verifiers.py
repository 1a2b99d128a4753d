"""Building the token verifier a service or an edge uses from its configuration.

A service trusts Nexus's tokens for its own audience (``datapunk:<service>``); Nexus's
edges also trust the configured external OpenID Connect providers. Keys come from the
issuers' JWKS over HTTP (``JwksKeySource``) unless the caller knows an issuer's keys
first-hand (Nexus passes its own signing keys as ``nexus_keys``).

::

    verifier = build_verifier(settings.auth, service="lake")
    identity = await verifier.verify(bearer_token)
    ...
    await verifier.aclose()
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

import httpx
from joserfc.jwk import Key

from datapunk_shared.auth.claims import OidcClaims, datapunk_claims
from datapunk_shared.auth.jwks import JwksCachePolicy, JwksKeySource
from datapunk_shared.auth.tokens import (
    IssuerPolicy,
    KeySource,
    RevocationCheck,
    TokenVerifier,
    refuse,
)
from datapunk_shared.config import (
    AuthSettings,
    JwksCacheSettings,
    OidcProviderSettings,
    OidcSettings,
)

__all__ = [
    "IssuerKeys",
    "build_verifier",
    "jwks_cache_policy",
    "nexus_policy",
    "provider_policy",
]


class IssuerKeys:
    """A ``KeySource`` that asks each issuer's own source (one JWKS cache for the
    providers, Nexus's keys for Nexus)."""

    def __init__(self, sources: Mapping[str, KeySource]) -> None:
        self._sources = dict(sources)

    async def key(self, issuer: str, kid: str) -> Key:
        source = self._sources.get(issuer)
        if source is None:
            raise refuse("UNTRUSTED_ISSUER", "the token's issuer is not trusted")
        return await source.key(issuer, kid)

    async def keys_changed(self, issuer: str | None, removed: Collection[str]) -> None:
        """Pass an announced key change on to every source that caches keys (the JWKS
        cache, Nexus's view of its own key ring), each once."""
        told: set[int] = set()
        for source in self._sources.values():
            changed = getattr(source, "keys_changed", None)
            if changed is not None and id(source) not in told:
                told.add(id(source))
                await changed(issuer, removed)

    async def aclose(self) -> None:
        """Close every source that holds connections (each once)."""
        for source in self._fetching():
            await source.aclose()

    def _fetching(self) -> list[JwksKeySource]:
        """Each JWKS cache once (one serves every fetched issuer)."""
        found: dict[int, JwksKeySource] = {}
        for source in self._sources.values():
            if isinstance(source, JwksKeySource):
                found.setdefault(id(source), source)
        return list(found.values())


def jwks_cache_policy(settings: JwksCacheSettings) -> JwksCachePolicy:
    return JwksCachePolicy(
        min_ttl=settings.min_ttl,
        max_ttl=settings.max_ttl,
        default_ttl=settings.default_ttl,
        max_stale=settings.max_stale,
        refetch_interval=settings.refetch_interval,
        timeout=settings.timeout,
        max_document_bytes=settings.max_document_bytes,
    )


def nexus_policy(auth: AuthSettings, audiences: Iterable[str]) -> IssuerPolicy:
    """The policy for Nexus's own access and service tokens (its claim vocabulary)."""
    return IssuerPolicy(
        issuer=auth.issuer,
        audiences=frozenset(audiences),
        algorithms=frozenset(auth.algorithms),
        mapper=datapunk_claims,
        leeway=auth.leeway,
        max_token_bytes=auth.max_token_bytes,
    )


def provider_policy(provider: OidcProviderSettings, auth: AuthSettings) -> IssuerPolicy:
    """The policy for one external OpenID Connect provider's access tokens."""
    return IssuerPolicy(
        issuer=provider.issuer,
        audiences=frozenset(provider.audiences),
        algorithms=frozenset(provider.algorithms),
        mapper=OidcClaims(
            tenant=provider.tenant or "",
            tenant_claim=provider.tenant_claim or "",
            roles_claim=provider.roles_claim or "",
            role_map=dict(provider.role_map),
            attribute_claims=dict(provider.attribute_claims),
        ),
        token_types=frozenset(provider.token_types),
        leeway=auth.leeway if provider.leeway is None else provider.leeway,
        max_token_bytes=provider.max_token_bytes or auth.max_token_bytes,
    )


def build_verifier(
    auth: AuthSettings,
    *,
    service: str,
    extra_audiences: Iterable[str] = (),
    oidc: OidcSettings | None = None,
    nexus_keys: KeySource | None = None,
    is_revoked: RevocationCheck | None = None,
    http: httpx.AsyncClient | None = None,
) -> TokenVerifier:
    """The verifier for ``service`` (``lake``, ``stream``, ``nexus``): Nexus's tokens
    whose ``aud`` is ``datapunk:<service>`` or one of ``extra_audiences`` and, with
    ``oidc``, the access tokens of its providers. ``nexus_keys`` replaces fetching
    Nexus's JWKS; ``is_revoked`` is consulted for every otherwise valid token; ``http``
    is shared by the JWKS caches (otherwise they make their own, closed by
    ``TokenVerifier.aclose``)."""
    providers = oidc.providers if oidc is not None else []
    policies = [nexus_policy(auth, [auth.audience(service), *extra_audiences])]
    policies += [provider_policy(provider, auth) for provider in providers]
    fetched: dict[str, str | None] = {p.issuer: p.jwks_url for p in providers}
    if auth.issuer in fetched:
        raise ValueError("an OIDC provider may not use Nexus's issuer URL")
    if nexus_keys is None:
        fetched[auth.issuer] = auth.jwks_url
    sources: dict[str, KeySource] = {}
    if fetched:
        jwks = JwksKeySource(fetched, policy=jwks_cache_policy(auth.jwks), http=http)
        sources = dict.fromkeys(fetched, jwks)
    if nexus_keys is not None:
        sources[auth.issuer] = nexus_keys
    return TokenVerifier(policies, IssuerKeys(sources), is_revoked=is_revoked)
