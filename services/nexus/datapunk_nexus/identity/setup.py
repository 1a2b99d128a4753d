"""Wiring identity and access into the Nexus process: the signing keys, the OAuth
authorization server, API keys, the policy, the audit trail and the ``AccessGuard`` both
entries enforce with (docs/identity.md)."""

from __future__ import annotations

from dataclasses import dataclass

from datapunk_shared.auth.verifiers import build_verifier
from datapunk_shared.errors import NotFound
from datapunk_shared.health import Prerequisite
from datapunk_shared.logging import get_logger
from datapunk_shared.rpc.server import ServiceContext
from datapunk_shared.secrets import SecretProvider
from psycopg_pool import AsyncConnectionPool

from datapunk_nexus.contracts import load_contracts
from datapunk_nexus.identity.api_keys import ApiKeys, add_api_key_service, load_api_keys
from datapunk_nexus.identity.audit import AuditLog
from datapunk_nexus.identity.audit.servicer import add_audit_service
from datapunk_nexus.identity.enforce import AccessGuard, EdgeAuthenticator
from datapunk_nexus.identity.oauth import (
    AuthorizationServer,
    add_auth_service,
    build_authorization_server,
)
from datapunk_nexus.identity.policy import Requirements, add_policy_service
from datapunk_nexus.identity.service_tokens import ServiceTokens
from datapunk_nexus.identity.signing import DeferredKeyRing, build_key_ring

__all__ = ["AccessControl", "build_access_control"]

log = get_logger("datapunk.nexus.identity")


@dataclass(frozen=True, slots=True)
class AccessControl:
    """What the entries need: the guard, and the OAuth server for its HTTP endpoints."""

    guard: AccessGuard
    oauth: AuthorizationServer
    api_keys: ApiKeys
    audit: AuditLog
    """The trail the guard records in (also Envoy's listener's refusals)."""


async def _optional_secret(secrets: SecretProvider, name: str) -> bytes | None:
    if not name:
        return None
    try:
        return await secrets.get(name)
    except NotFound:
        return None


async def build_access_control(
    context: ServiceContext, pool: AsyncConnectionPool, secrets: SecretProvider
) -> AccessControl:
    """Register AuthService, ApiKeyService, PolicyService and AuditService on the Nexus
    server and build the guard. The signing keys need the migrations applied, so they
    are loaded by a readiness prerequisite after them; until then, signing and serving
    the JWKS fail with UNAVAILABLE (retryable) and the service is NOT_SERVING."""
    settings = context.settings
    auth = settings.nexus.auth
    ring = DeferredKeyRing()

    async def load_signing_keys() -> None:
        if not ring.ready:
            ring.set(await build_key_ring(settings, pool, secrets))

    context.monitor_prerequisites.append(
        Prerequisite("signing keys", "postgres", load_signing_keys)
    )
    context.cleanups.append(ring.aclose)
    # A rotation or deletion through another instance: sign with the new active key at once.
    context.key_change_handlers.append(ring.keys_changed)

    # The trail first: the token endpoints record every token request in it.
    # A configured chain key that is missing stops the start (SECRET_NOT_FOUND): a trail
    # must never silently fall back to an unkeyed chain.
    chain_key = (
        await secrets.get(auth.audit.chain_key_secret) if auth.audit.chain_key_secret else None
    )
    audit = await add_audit_service(context, chain_key=chain_key)
    oauth = build_authorization_server(settings, pool, ring, audit=audit.record)
    await oauth.start()
    context.cleanups.append(oauth.stop)
    add_auth_service(context, oauth)

    api_keys = await load_api_keys(auth.api_keys, pool, secrets)
    add_api_key_service(context, api_keys)
    bootstrap = auth.api_keys.bootstrap_secret

    async def ensure_bootstrap_key() -> None:
        presented = await _optional_secret(secrets, bootstrap or "")
        if presented is not None:
            created = await api_keys.manager.ensure_bootstrap_key(
                presented.decode().strip(),
                tenant=settings.auth.default_tenant,
                roles=("admin",),
            )
            if created:
                log.info("bootstrap admin key created", tenant=settings.auth.default_tenant)

    context.monitor_prerequisites.append(
        Prerequisite("bootstrap admin key", "postgres", ensure_bootstrap_key)
    )
    authorizer = await add_policy_service(context, pool)

    verifier = build_verifier(
        settings.auth,
        service="nexus",
        extra_audiences=[auth.oauth.audience],
        oidc=auth.oidc,
        nexus_keys=oauth.keys,
        is_revoked=oauth.revocations.is_revoked,
    )
    context.cleanups.append(verifier.aclose)
    # Another instance's key changes reach the edges' verifier (and through it this
    # instance's view of the key ring) at once, as they reach the service port.
    context.key_change_handlers.append(verifier.keys_changed)
    guard = AccessGuard(
        EdgeAuthenticator(
            verifier,
            api_keys.authenticator,
            is_revoked=oauth.revocations.is_revoked,
            own_keys=oauth.keys,
            own_issuer=oauth.issuer,
        ),
        authorizer,
        Requirements(settings.nexus.descriptor_set),
        audit,
        ServiceTokens(oauth.minter, settings.auth.audience),
        load_contracts(settings.nexus.descriptor_set).pool,
    )
    return AccessControl(guard=guard, oauth=oauth, api_keys=api_keys, audit=audit)
