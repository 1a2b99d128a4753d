"""The API-key objects the store, the manager, the authenticator and the servicer pass
around, and the errors they share. No grpc, no SQL."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from datapunk_shared.errors import NotFound

from datapunk_nexus.identity.api_keys.key_format import public_prefix

__all__ = [
    "ApiKey",
    "ApiKeyPage",
    "IssuedApiKey",
    "KeyState",
    "StoredKey",
    "api_key_not_found",
]


class KeyState(enum.Enum):
    """Whether a key can be used now."""

    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One key's metadata; never its secret."""

    id: str
    tenant: str
    name: str
    roles: tuple[str, ...]
    scopes: tuple[str, ...]
    created_by: str
    create_time: datetime
    expire_time: datetime | None = None
    revoke_time: datetime | None = None
    rotate_time: datetime | None = None
    last_used_time: datetime | None = None

    @property
    def prefix(self) -> str:
        return public_prefix(self.id)

    def state(self, now: datetime) -> KeyState:
        if self.revoke_time is not None:
            return KeyState.REVOKED
        if self.expire_time is not None and self.expire_time <= now:
            return KeyState.EXPIRED
        return KeyState.ACTIVE


@dataclass(frozen=True, slots=True)
class IssuedApiKey:
    """A key with its full text, returned once by create and rotate. ``key`` is left out
    of ``repr`` so that it never reaches a log line or a traceback."""

    api_key: ApiKey
    key: str = field(repr=False)
    previous_key_expire_time: datetime | None = None
    """After a rotation with a grace period: until when the replaced secret works."""


@dataclass(frozen=True, slots=True)
class StoredKey:
    """What authentication needs of a key: its metadata and the hashes it accepts."""

    api_key: ApiKey
    secret_hash: bytes = field(repr=False)
    previous_secret_hash: bytes | None = field(default=None, repr=False)
    previous_secret_expire_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class ApiKeyPage:
    items: list[ApiKey]
    next_page_token: str


def api_key_not_found(key_id: str) -> NotFound:
    """NOT_FOUND for a key the tenant does not have (whether another tenant has it or
    nobody does: the answer is the same)."""
    return NotFound(
        f"API key {key_id} does not exist",
        reason="API_KEY_NOT_FOUND",
        metadata={"api_key": key_id},
    )
