"""What the authorization server needs of the signing key ring
(``datapunk_nexus.identity.signing.SigningKeyRing``), and the ``KeySource`` that verifies
Nexus's own tokens against the keys the ring publishes right now."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from datapunk_shared.auth.keys import import_public_keys
from datapunk_shared.auth.tokens import refuse
from joserfc.jwk import Key

from datapunk_nexus.identity.signing import Signer

__all__ = ["KeyInfo", "KeyRing", "RingKeySource"]


class KeyInfo(Protocol):
    """One signing key as the ring records it (public material only)."""

    @property
    def kid(self) -> str: ...
    @property
    def alg(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def public_jwk(self) -> Mapping[str, str]: ...


class KeyRing(Protocol):
    """The signing key ring's operations the authorization server uses."""

    def active_signer(self) -> Signer: ...
    async def jwks(self) -> Mapping[str, Any]: ...
    async def keys(self) -> Sequence[KeyInfo]: ...
    async def rotate(self) -> KeyInfo: ...
    async def delete(self, kid: str) -> None: ...


class RingKeySource:
    """The public keys of ``issuer`` as the ring publishes them, for verifying Nexus's
    own tokens without HTTP.

    The key set is read from the ring (PostgreSQL) at most every ``max_age`` seconds, and
    again when a token names a ``kid`` not in it (a rotation on another instance), at most
    every ``refetch_interval`` seconds, so forged ``kid`` values cannot flood PostgreSQL.
    Changes made through this instance call ``invalidate``, and those another instance
    announces reach ``keys_changed``: both take effect at once. ``max_age`` bounds the
    rest (an announcement lost while Redis was down)."""

    def __init__(
        self,
        ring: KeyRing,
        issuer: str,
        *,
        max_age: float = 5.0,
        refetch_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ring = ring
        self._issuer = issuer
        self._max_age = max_age
        self._refetch_interval = refetch_interval
        self._clock = clock
        self._keys: dict[str, Key] | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        """Forget the key set: the next verification reads it again."""
        self._keys = None

    async def keys_changed(self, issuer: str | None, removed: Collection[str]) -> None:
        """Another instance changed ``issuer``'s keys (``datapunk_shared.key_events``):
        read them again before the next verification."""
        if issuer is None or issuer == self._issuer:
            self.invalidate()

    async def key(self, issuer: str, kid: str) -> Key:
        if issuer != self._issuer:
            raise refuse("UNTRUSTED_ISSUER", "the token's issuer is not trusted")
        keys = self._keys
        if keys is None or self._stale(kid):
            async with self._lock:  # concurrent lookups share one read
                if self._keys is None or self._stale(kid):
                    fetched_at = self._clock()
                    self._keys = import_public_keys(await self._ring.jwks())
                    self._fetched_at = fetched_at
            keys = self._keys
        key = keys.get(kid) if keys is not None else None
        if key is None:
            raise refuse(
                "UNKNOWN_KEY", "the token is signed with a key the issuer does not publish"
            )
        return key

    def _stale(self, kid: str) -> bool:
        age = self._clock() - self._fetched_at
        known = self._keys is not None and kid in self._keys
        return age > self._max_age or (not known and age >= self._refetch_interval)
