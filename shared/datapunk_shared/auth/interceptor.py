"""The service side of authentication: every call a Datapunk service serves must carry a
valid bearer token, checked here before the handler runs (the shared server edge in
``datapunk_shared.rpc.interceptor`` calls ``CallerAuthenticator.authenticate``).

A call Nexus forwards on a caller's behalf carries Nexus's own service token plus the
caller's identity as the edge authenticated it, in ``x-datapunk-on-behalf-of``. That
header is believed only when the token itself belongs to a trusted delegate (a service
identity such as ``service:nexus``); anyone else sending it is refused, so nobody can
claim to be somebody else by writing a header."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterable
from types import MappingProxyType
from typing import Any, Protocol

from datapunk_shared.auth.identity import Identity
from datapunk_shared.auth.remembered import RememberedTokens
from datapunk_shared.errors import Unauthenticated

__all__ = [
    "AUTHORIZATION_KEY",
    "ON_BEHALF_KEY",
    "PUBLIC_SERVICES",
    "CallerAuthenticator",
    "TokenChecker",
    "decode_on_behalf",
    "encode_on_behalf",
    "is_public_method",
]

AUTHORIZATION_KEY = "authorization"
ON_BEHALF_KEY = "x-datapunk-on-behalf-of"
_MAX_ON_BEHALF_BYTES = 4096

PUBLIC_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
"""Services anyone may call: liveness and discovery say nothing about anyone's data."""


def is_public_method(method: str) -> bool:
    """Whether ``/package.Service/Method`` is served without credentials: health,
    reflection and each package's ``StatusService`` (the engines' reachability)."""
    service = method[1:].split("/", 1)[0]
    return service in PUBLIC_SERVICES or (
        service.startswith("datapunk.") and service.endswith(".StatusService")
    )


class TokenChecker(Protocol):
    """What verifies a bearer token (``datapunk_shared.auth.tokens.TokenVerifier``)."""

    async def verify(self, token: str) -> Identity: ...


def encode_on_behalf(identity: Identity) -> str:
    """The ``x-datapunk-on-behalf-of`` value for ``identity`` (compact JSON; ids only,
    never a credential)."""
    document: dict[str, Any] = {
        "sub": identity.subject,
        "tenant": identity.tenant,
        "kind": identity.kind,
        "roles": sorted(identity.roles),
        "scopes": sorted(identity.scopes),
        "iss": identity.issuer,
        "cid": identity.credential_id,
    }
    if identity.attributes:
        document["attrs"] = dict(identity.attributes)
    return json.dumps(document, separators=(",", ":"), sort_keys=True)


def _strings(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    return frozenset(value)


def decode_on_behalf(value: str) -> Identity:
    """The identity an ``x-datapunk-on-behalf-of`` value describes; Unauthenticated
    (``INVALID_DELEGATION``) when it is not one."""
    if len(value) > _MAX_ON_BEHALF_BYTES:
        raise _invalid_delegation("the on-behalf-of identity is too large")
    try:
        document = json.loads(value)
        if not isinstance(document, dict):
            raise ValueError("not an object")
        kind = document["kind"]
        if kind not in ("client", "user", "api_key", "service"):
            raise ValueError("unknown kind")
        attributes = document.get("attrs", {})
        if not isinstance(attributes, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
        ):
            raise ValueError("attributes must map strings to strings")
        fields = {name: document[name] for name in ("sub", "tenant", "iss", "cid")}
        if not all(isinstance(v, str) for v in fields.values()) or not fields["sub"]:
            raise ValueError("sub, tenant, iss and cid must be strings")
        return Identity(
            subject=fields["sub"],
            tenant=fields["tenant"],
            kind=kind,
            roles=_strings(document.get("roles", [])),
            scopes=_strings(document.get("scopes", [])),
            issuer=fields["iss"],
            credential_id=fields["cid"],
            attributes=MappingProxyType(dict(attributes)),
        )
    except (ValueError, KeyError, TypeError):
        raise _invalid_delegation("the on-behalf-of identity is malformed") from None


def _invalid_delegation(message: str) -> Unauthenticated:
    return Unauthenticated(message, reason="INVALID_DELEGATION")


class CallerAuthenticator:
    """Turns a call's metadata into its verified ``Identity``.

    Verified tokens are remembered (bounded, at most ``cache_seconds`` and never past
    their expiry), because a caller such as Nexus presents the same service token on
    thousands of calls and an ES256 verification costs far more than a lookup. In front
    of that, the identity a call's exact credential headers (``authorization`` and
    ``x-datapunk-on-behalf-of``, byte for byte) resolved to is remembered too, under
    the same bounds and until ``EXPIRY_MARGIN`` seconds before the token expires: a
    repeated call then costs one dictionary lookup instead of parsing the header and
    the on-behalf-of JSON again. Only identities that passed every check are kept.

    When the issuer's signing keys change (``keys_changed``, called by the service's
    ``datapunk_shared.key_events`` subscriber), both memories are emptied and the key
    source drops the removed keys, so a deleted key's tokens are refused at once."""

    EXPIRY_MARGIN = 1.0

    def __init__(
        self,
        verifier: TokenChecker,
        *,
        delegates: Iterable[str] = ("service:nexus",),
        kinds: Iterable[str] = ("service",),
        cache_size: int = 4096,
        cache_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._verifier = verifier
        self._delegates = frozenset(delegates)
        self._kinds = frozenset(kinds)
        self._tokens = RememberedTokens(
            verifier.verify, size=cache_size, seconds=cache_seconds, clock=clock
        )
        self._clock = clock
        self._size = cache_size
        self._seconds = cache_seconds
        self._known: dict[tuple[str, str | None], tuple[Identity, float]] = {}
        self._generation = 0

    async def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> Identity:
        token: str | None = None
        on_behalf: str | None = None
        for key, value in metadata:
            if key == AUTHORIZATION_KEY and isinstance(value, str):
                token = value
            elif key == ON_BEHALF_KEY and isinstance(value, str):
                on_behalf = value
        if token is None:
            raise Unauthenticated(
                "this call needs credentials: an 'authorization: Bearer <token>' header",
                reason="MISSING_CREDENTIALS",
            )
        headers = (token, on_behalf)
        now = self._clock()
        known = self._known.get(headers)
        if known is not None:
            if now < known[1]:
                return known[0]
            del self._known[headers]
        generation = self._generation
        identity = await self._resolve(token, on_behalf)
        until = now + self._seconds
        if identity.expires_at is not None:
            until = min(until, identity.expires_at - self.EXPIRY_MARGIN)
        # Not kept when the keys changed while it was being verified (it may have been
        # verified with a key that is gone now).
        if now < until and generation == self._generation:
            known_calls = self._known
            known_calls[headers] = (identity, until)
            if len(known_calls) > self._size:
                del known_calls[next(iter(known_calls))]  # the oldest entry
        return identity

    def forget(self) -> None:
        """Forget every remembered identity and verified token."""
        self._known.clear()
        self._tokens.clear()
        self._generation += 1

    async def keys_changed(self, issuer: str | None, removed: Collection[str]) -> None:
        """``issuer``'s signing keys changed (None: unknown which issuer or keys): forget
        what was remembered, have the verifier drop ``removed`` and fetch the keys again,
        and forget once more what was verified meanwhile with the old keys."""
        self.forget()
        changed = getattr(self._verifier, "keys_changed", None)
        if changed is not None:
            try:
                await changed(issuer, removed)
            finally:
                self.forget()

    async def _resolve(self, token: str, on_behalf: str | None) -> Identity:
        """The identity ``token`` (an ``authorization`` value) and ``on_behalf`` give,
        after every check."""
        scheme, _, credential = token.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise Unauthenticated(
                "the authorization header must be 'Bearer <token>'", reason="MALFORMED_TOKEN"
            )
        caller = await self._tokens.identity(credential.strip())
        if caller.kind not in self._kinds:
            # End users reach services through Nexus, which checks their permissions;
            # a direct call must come from a Datapunk service.
            raise Unauthenticated(
                "this port serves Datapunk services only; call through the Nexus entry",
                reason="WRONG_PRINCIPAL_KIND",
                metadata={"kind": caller.kind},
            )
        if on_behalf is None:
            return caller
        if caller.kind != "service" or caller.subject not in self._delegates:
            raise Unauthenticated(
                "only a trusted Datapunk service may act on another caller's behalf",
                reason="UNTRUSTED_DELEGATION",
            )
        return Identity(
            subject=caller.subject,
            tenant=caller.tenant,
            kind=caller.kind,
            roles=caller.roles,
            scopes=caller.scopes,
            issuer=caller.issuer,
            credential_id=caller.credential_id,
            expires_at=caller.expires_at,
            attributes=caller.attributes,
            on_behalf_of=decode_on_behalf(on_behalf),
        )
