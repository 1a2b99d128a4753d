"""Access control at Nexus's two entries (the REST edge and the gRPC entry): who is
calling, whether they may make this call, and the audit record of both — one
``AccessGuard`` shared by both entries, so a caller meets the same rules either way.

Order for each call: authenticate (a bearer token or an API key; none at all is fine only
for public calls), pass the rate limits (which count per principal), work out what the
call needs from its request (``Requirements``), decide with the policy, write the audit
record — and only then answer from the cache or forward to the backend. The record is
committed before the call is forwarded: auditing fails closed, and a write is never made
that the trail does not show. Refusals are audited too (in the caller's tenant, or the
platform's trail when nobody was authenticated) and then raised to the entry, which
answers with their status.

What travels on to the backend is Nexus's own service token and the caller's identity
(``x-datapunk-on-behalf-of``); the caller's credential never leaves Nexus."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from datapunk_shared.auth.identity import Identity
from datapunk_shared.auth.interceptor import (
    AUTHORIZATION_KEY,
    ON_BEHALF_KEY,
    encode_on_behalf,
)
from datapunk_shared.auth.remembered import RememberedTokens
from datapunk_shared.auth.tokens import KeySource, RevocationCheck, TokenVerifier
from datapunk_shared.errors import DatapunkError, InvalidArgument, Unauthenticated
from datapunk_shared.logging import get_logger
from google.protobuf import descriptor_pool, empty_pb2, message_factory
from google.protobuf.message import DecodeError, Message

from datapunk_nexus.identity.api_keys import ApiKeyAuthenticator
from datapunk_nexus.identity.api_keys.key_format import key_id_of
from datapunk_nexus.identity.audit import AuditEvent, AuditLog, Outcome
from datapunk_nexus.identity.policy import PolicyAuthorizer, Requirement, Requirements
from datapunk_nexus.identity.policy.resources import AUTHENTICATED
from datapunk_nexus.identity.service_tokens import ServiceTokens
from datapunk_nexus.policy import CallInfo, RequestGate

__all__ = [
    "API_KEY_HEADER",
    "AccessGuard",
    "Caller",
    "EdgeAuthenticator",
    "StreamPermissions",
    "call_info",
    "credentials_of",
]

log = get_logger("datapunk.nexus.access")

API_KEY_HEADER = "x-api-key"
# Headers a caller may not pass on: its own credentials stay at the edge, and only Nexus
# says on whose behalf it calls.
STRIPPED = frozenset({AUTHORIZATION_KEY, API_KEY_HEADER, ON_BEHALF_KEY})
# Entries of the per-identity memos (identities come from bounded credential caches).
_MAX_REMEMBERED = 10_000
# Requests up to this size have their requirement remembered (bounding the memo's size).
_MAX_REMEMBERED_REQUEST = 256


@dataclass(frozen=True, slots=True)
class Caller:
    """The facts about one call the guard needs besides its request."""

    method: str
    client_ip: str
    request_id: str
    authorization: str | None = None
    api_key: str | None = None


def call_info(caller: Caller, identity: Identity | None, request: bytes) -> CallInfo:
    """The call as the rate limits and the cache see it: keyed by the caller's principal,
    tenant and API key once it is authenticated."""
    if identity is None:
        return CallInfo(caller.method, caller.client_ip, request=request)
    effective = identity.effective
    return CallInfo(
        caller.method,
        caller.client_ip,
        principal=effective.subject,
        tenant=effective.tenant or None,
        api_key_id=effective.credential_id if effective.kind == "api_key" else None,
        request=request,
    )


def credentials_of(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The ``authorization`` and ``x-api-key`` values of lower-cased headers."""
    return headers.get(AUTHORIZATION_KEY), headers.get(API_KEY_HEADER)


class EdgeAuthenticator:
    """Turns a caller's credential into its ``Identity``: a bearer token (Nexus's own or
    a trusted OpenID Connect provider's) or an API key; None when it sent neither.

    Verified tokens are remembered (bounded, at most ``cache_seconds``, never past
    their expiry) because a client presents the same token on many calls and an ES256
    verification costs far more than a lookup; a remembered token is still checked
    against the revocation list on every call and, when it is Nexus's own
    (``own_issuer``), against the published signing keys (``own_keys``): deleting a key
    ends its tokens at once, remembered or not."""

    def __init__(
        self,
        tokens: TokenVerifier,
        api_keys: ApiKeyAuthenticator | None,
        *,
        is_revoked: RevocationCheck | None = None,
        own_keys: KeySource | None = None,
        own_issuer: str = "",
        cache_size: int = 10_000,
        cache_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tokens = RememberedTokens(
            tokens.verify, size=cache_size, seconds=cache_seconds, clock=clock
        )
        self._api_keys = api_keys
        self._is_revoked = is_revoked
        self._own_keys = own_keys
        self._own_issuer = own_issuer

    async def authenticate(self, authorization: str | None, api_key: str | None) -> Identity | None:
        if authorization is not None and api_key is not None:
            raise Unauthenticated(
                "send one credential: a bearer token or an API key, not both",
                reason="MALFORMED_TOKEN",
            )
        if api_key is not None:
            if self._api_keys is None:
                raise Unauthenticated("API keys are not accepted here", reason="INVALID_API_KEY")
            return await self._api_keys.authenticate(api_key)
        if authorization is None:
            return None
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated(
                "the authorization header must be 'Bearer <token>'", reason="MALFORMED_TOKEN"
            )
        return await self._verified(token)

    async def _verified(self, token: str) -> Identity:
        identity = await self._tokens.identity(token)
        # A remembered token is still checked against the revocation list every time.
        if self._is_revoked is not None and await self._is_revoked(identity.credential_id):
            self._tokens.forget(token)
            raise Unauthenticated("the token has been revoked", reason="TOKEN_REVOKED")
        # ...and, when Nexus signed it, against the keys it publishes (a lookup in memory).
        if self._own_keys is not None and identity.issuer == self._own_issuer:
            try:
                await self._own_keys.key(self._own_issuer, _kid_of(token))
            except Unauthenticated:  # UNKNOWN_KEY: its key was deleted since
                self._tokens.forget(token)
                raise
        return identity


def _kid_of(token: str) -> str:
    """The ``kid`` of a token already verified (so its header is sound JSON)."""
    segment = token.partition(".")[0]
    header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return str(header.get("kid", ""))


def _action_of(requirement: Requirement) -> str:
    """The audit action of an allowed call: ``data.read``, ``data.write``, ``admin`` or
    ``call`` (an authenticated call about the caller itself)."""
    if requirement.action in ("read", "write"):
        return f"data.{requirement.action}"
    return requirement.action or "call"


@dataclass
class StreamPermissions:
    """The permissions of one client stream: every message is checked (each may name
    another resource), each distinct resource is decided and audited once."""

    guard: AccessGuard
    caller: Caller
    identity: Identity | None
    _allowed: set[str] = field(default_factory=set)

    async def check(self, message: Message | bytes) -> None:
        requirement = self.guard.requirement_of(self.caller.method, message)
        key = f"{requirement.action}|{requirement.resource}|{'|'.join(requirement.also)}"
        if key in self._allowed:
            return
        await self.guard.authorize(self.caller, self.identity, requirement)
        self._allowed.add(key)


class AccessGuard:
    """Authentication, permission and audit for every call at Nexus's entries."""

    def __init__(
        self,
        authenticator: EdgeAuthenticator,
        authorizer: PolicyAuthorizer,
        requirements: Requirements,
        audit: AuditLog,
        service_tokens: ServiceTokens,
        pool: descriptor_pool.DescriptorPool,
    ) -> None:
        self._authenticator = authenticator
        self._authorizer = authorizer
        self._requirements = requirements
        self._audit = audit
        self._service_tokens = service_tokens
        self._pool = pool
        self._request_types: dict[str, type[Message] | None] = {}
        self._on_behalf_values: dict[int, tuple[Identity, str]] = {}
        self._requirements_seen: dict[tuple[str, bytes], Requirement] = {}

    # --- the steps ----------------------------------------------------------------------

    async def authenticate(
        self, caller: Caller, gate: RequestGate | None = None
    ) -> Identity | None:
        """The caller's identity (None: it sent no credential); a bad credential is
        audited on the platform's trail and raised.

        With ``gate``, a refused credential also counts against the rate limits as a call
        of nobody from the caller's address, so guessing API keys or tokens meets the
        limits keyed by client IP (or by caller): over them the refusal becomes
        RESOURCE_EXHAUSTED (429). Under a rule keyed by client IP a right guess from that
        address is refused the same way by the entry's own limit check, so the answers
        tell a guesser nothing."""
        try:
            return await self._authenticator.authenticate(caller.authorization, caller.api_key)
        except Unauthenticated as refused:
            credential = key_id_of(caller.api_key) if caller.api_key is not None else None
            await self._record(
                caller,
                None,
                "authenticate",
                Outcome.DENY,
                reason=refused.reason,
                credential_id=credential or "",
            )
            if gate is not None:
                await gate.check_rate(call_info(caller, None, b""))
            raise

    def is_public(self, method: str) -> bool:
        """Whether anyone may call ``method`` without a credential (status, health, the
        token endpoints); a method no rule maps is not."""
        try:
            return self.requirement_of(method, b"").public
        except DatapunkError:
            return False

    def is_client_stream(self, method: str) -> bool:
        """Whether ``method`` (a method of the contracts) takes a stream of messages."""
        service, _, name = method.lstrip("/").partition("/")
        try:
            descriptor = self._pool.FindServiceByName(service).FindMethodByName(name)
        except KeyError:
            return False
        return descriptor is not None and bool(descriptor.client_streaming)

    def requirement_of(self, method: str, request: Message | bytes) -> Requirement:
        """What a call of ``method`` with ``request`` (decoded or serialized) needs.

        A requirement depends on nothing but the method and the request, so those of
        small serialized requests are remembered (a busy client repeats the same reads);
        refusals (unmapped, undecodable) are not."""
        if not isinstance(request, bytes):
            return self._requirements.of(method, request)
        if len(request) > _MAX_REMEMBERED_REQUEST:
            return self._requirements.of(method, self._decode(method, request))
        key = (method, request)
        found = self._requirements_seen.get(key)
        if found is None:
            found = self._requirements.of(method, self._decode(method, request))
            if len(self._requirements_seen) >= _MAX_REMEMBERED:
                self._requirements_seen.clear()
            self._requirements_seen[key] = found
        return found

    async def authorize(
        self, caller: Caller, identity: Identity | None, requirement: Requirement
    ) -> None:
        """Decide and audit; raises the refusal (PERMISSION_DENIED, UNAUTHENTICATED,
        UNAVAILABLE) after recording it. Public calls are neither decided nor audited."""
        if requirement.public:
            return
        try:
            await self._authorizer.authorize(identity, requirement)
        except DatapunkError as refused:
            await self._record(
                caller,
                identity,
                "authorize",
                Outcome.DENY if refused.code != "UNAVAILABLE" else Outcome.ERROR,
                resource=requirement.resource,
                reason=refused.reason,
            )
            raise
        await self._record(
            caller, identity, _action_of(requirement), Outcome.ALLOW, resource=requirement.resource
        )

    async def authorize_request(
        self, caller: Caller, identity: Identity | None, request: Message | bytes
    ) -> None:
        """``authorize`` what a call with ``request`` (decoded or serialized) needs."""
        await self.authorize(caller, identity, self.requirement_of(caller.method, request))

    def stream(self, caller: Caller, identity: Identity | None) -> StreamPermissions:
        """The per-message checks of a client stream (its messages come later)."""
        return StreamPermissions(self, caller, identity)

    async def open_stream(self, caller: Caller, identity: Identity | None) -> StreamPermissions:
        """``stream``, once the caller may open one at all: a client stream's messages are
        checked as they come, so one that sent none would reach the backend with no
        decision made; an anonymous caller of a method that is not public is refused
        (and audited) before that."""
        if identity is None and not self.is_public(caller.method):
            await self.authorize(caller, None, AUTHENTICATED)  # raises MISSING_CREDENTIALS
        return self.stream(caller, identity)

    async def refused_by_owner(
        self, caller: Caller, identity: Identity | None, request: bytes, error: DatapunkError
    ) -> None:
        """Record a call the policy allowed but its owner refused for lack of permission
        (PERMISSION_DENIED from the backend, such as ROLE_NOT_HELD for a role the caller
        may not hand out), so that the trail shows the refusal after the allow. Other
        failures are not decisions about the caller and are not recorded. The owner has
        refused already: a record that cannot be written is logged, never made the
        caller's answer."""
        if error.code != "PERMISSION_DENIED":
            return
        try:
            resource = self.requirement_of(caller.method, request).resource
        except DatapunkError:
            resource = ""
        try:
            await self._record(
                caller, identity, "authorize", Outcome.DENY, resource=resource, reason=error.reason
            )
        except DatapunkError as failed:
            log.warning(
                "audit record of a refusal by the owner failed",
                method=caller.method,
                reason=error.reason,
                error=failed.reason,
            )

    def backend_metadata(self, owner: str, identity: Identity | None) -> list[tuple[str, str]]:
        """Nexus's credentials for a call to ``owner`` made for ``identity``."""
        found = [(AUTHORIZATION_KEY, self._service_tokens.authorization(owner))]
        if identity is not None:
            found.append((ON_BEHALF_KEY, self._on_behalf(identity)))
        return found

    def _on_behalf(self, identity: Identity) -> str:
        """``encode_on_behalf(identity)``, remembered per identity object: remembered
        credentials give a busy caller the same object on every call. The entry holds
        the object itself, so its id cannot be reused while it is remembered."""
        cached = self._on_behalf_values.get(id(identity))
        if cached is not None and cached[0] is identity:
            return cached[1]
        value = encode_on_behalf(identity)
        if len(self._on_behalf_values) >= _MAX_REMEMBERED:
            self._on_behalf_values.clear()
        self._on_behalf_values[id(identity)] = (identity, value)
        return value

    # --- helpers ------------------------------------------------------------------------

    def _decode(self, method: str, payload: bytes) -> Message:
        message_type = self._request_type(method)
        if message_type is None:
            # Not a method of the contracts: Requirements refuses it as unmapped.
            return empty_pb2.Empty()
        try:
            return message_type.FromString(payload)
        except DecodeError:
            raise InvalidArgument(
                "the request message cannot be decoded", reason="MALFORMED_MESSAGE"
            ) from None

    def _request_type(self, method: str) -> type[Message] | None:
        if method in self._request_types:
            return self._request_types[method]
        service, _, name = method.lstrip("/").partition("/")
        found: type[Message] | None = None
        try:
            descriptor = self._pool.FindServiceByName(service).FindMethodByName(name)
        except KeyError:
            descriptor = None
        if descriptor is not None:
            found = message_factory.GetMessageClass(descriptor.input_type)
        if len(self._request_types) < 10_000:  # method names come from callers
            self._request_types[method] = found
        return found

    async def _record(
        self,
        caller: Caller,
        identity: Identity | None,
        action: str,
        outcome: Outcome,
        *,
        resource: str = "",
        reason: str = "",
        credential_id: str = "",
    ) -> None:
        event = AuditEvent.of(
            identity,
            action,
            outcome,
            method=caller.method,
            resource=resource,
            reason=reason,
            client_address=caller.client_ip,
            request_id=caller.request_id,
        )
        if credential_id and not event.credential_id:
            event = replace(event, credential_id=credential_id)
        await self._audit.record(event)
