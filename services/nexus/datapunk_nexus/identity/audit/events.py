"""What an audit record says, and the questions asked of the trail.

An ``AuditEvent`` has a field for every fact the trail keeps and none for a secret: a
credential appears only by its public id (a token's ``jti``, an API key's id). Text
fields are cut to a fixed length and cleaned of what PostgreSQL cannot store, so that no
input (a made-up method name, a huge path) can make a record fail to be written, which
would refuse the call."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime

from datapunk_shared.auth.identity import Identity

__all__ = [
    "FIELD_LIMITS",
    "GENESIS_HASH",
    "AuditEvent",
    "AuditQuery",
    "Order",
    "Outcome",
    "RecordedEvent",
    "clean_event",
]

GENESIS_HASH = bytes(32)
"""The ``prev_hash`` of the first record of a chain."""


class Outcome(enum.StrEnum):
    """How the audited call or decision ended."""

    ALLOW = "allow"
    DENY = "deny"
    ERROR = "error"


class Order(enum.Enum):
    """The order records are read in (by sequence number)."""

    NEWEST_FIRST = "newest"
    OLDEST_FIRST = "oldest"


FIELD_LIMITS: dict[str, int] = {
    "tenant": 256,
    "principal": 512,
    "principal_kind": 32,
    "credential_id": 256,
    "action": 128,
    "method": 256,
    "resource": 1024,
    "reason": 128,
    "client_address": 128,
    "request_id": 128,
}
"""The longest each text field is stored; longer values are cut (and end in ``…``)."""


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One thing to record. ``time`` is set by the log when left out."""

    action: str
    """What was done: ``authenticate``, ``authorize``, ``data.read``, ``admin.role.put``."""
    outcome: Outcome
    tenant: str = ""
    """The trail the record goes to; empty for the platform's trail."""
    principal: str = ""
    """The acting principal's subject; empty when nobody was authenticated."""
    principal_kind: str = ""
    credential_id: str = ""
    """A token's ``jti`` or an API key's id; never the credential."""
    method: str = ""
    """The full gRPC method of the call."""
    resource: str = ""
    reason: str = ""
    """The ``ErrorInfo`` reason of a refusal or failure."""
    client_address: str = ""
    request_id: str = ""
    time: datetime | None = None

    @classmethod
    def of(
        cls,
        identity: Identity | None,
        action: str,
        outcome: Outcome,
        *,
        method: str = "",
        resource: str = "",
        reason: str = "",
        client_address: str = "",
        request_id: str = "",
    ) -> AuditEvent:
        """An event about ``identity``, in its tenant: the caller whose permissions apply
        (for a call a service makes on someone's behalf, that someone). With no identity
        the event goes to the platform's trail."""
        caller = identity.effective if identity is not None else None
        return cls(
            action=action,
            outcome=outcome,
            tenant=caller.tenant if caller is not None else "",
            principal=caller.subject if caller is not None else "",
            principal_kind=caller.kind if caller is not None else "",
            credential_id=caller.credential_id if caller is not None else "",
            method=method,
            resource=resource,
            reason=reason,
            client_address=client_address,
            request_id=request_id,
        )


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """A record as the trail holds it: the event, its place in its tenant's chain and
    its hashes."""

    event: AuditEvent
    sequence: int
    prev_hash: bytes
    hash: bytes

    @property
    def time(self) -> datetime:
        assert self.event.time is not None  # every stored record has one
        return self.event.time


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Which records of one trail a search or an export wants; every field set must
    match."""

    tenant: str
    principal: str = ""
    action: str = ""
    resource_prefix: str = ""
    outcome: Outcome | None = None
    start_time: datetime | None = None
    """Inclusive."""
    end_time: datetime | None = None
    """Exclusive."""


def _clean(value: str, limit: int) -> str:
    if len(value) <= limit and value.isascii() and "\x00" not in value:
        return value  # the usual case, checked cheaply: the edge records every call
    # PostgreSQL text holds neither NUL nor lone surrogates; replace rather than refuse.
    value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return value


def _now() -> datetime:
    return datetime.now(UTC)


def clean_event(event: AuditEvent, now: datetime | None = None) -> AuditEvent:
    """``event`` as it will be stored: fields cut and cleaned (``FIELD_LIMITS``), the
    time set (UTC; PostgreSQL keeps microseconds, as datetime does) when it had none."""
    time = event.time or now or _now()
    if time.tzinfo is None:
        raise ValueError("an audit event's time must be timezone-aware")
    limits = FIELD_LIMITS
    return AuditEvent(
        action=_clean(event.action, limits["action"]),
        outcome=Outcome(event.outcome),
        tenant=_clean(event.tenant, limits["tenant"]),
        principal=_clean(event.principal, limits["principal"]),
        principal_kind=_clean(event.principal_kind, limits["principal_kind"]),
        credential_id=_clean(event.credential_id, limits["credential_id"]),
        method=_clean(event.method, limits["method"]),
        resource=_clean(event.resource, limits["resource"]),
        reason=_clean(event.reason, limits["reason"]),
        client_address=_clean(event.client_address, limits["client_address"]),
        request_id=_clean(event.request_id, limits["request_id"]),
        time=time if time.tzinfo is UTC else time.astimezone(UTC),
    )
