"""Turns a presented API key into the caller's ``Identity``.

The order of the checks is what keeps guessing useless:

1. the shape and checksum (no I/O): anything malformed is INVALID_API_KEY;
2. the key's row by id, and a constant-time comparison of the keyed hash of the presented
   secret with the stored hash (and, during a rotation's grace period, the previous one).
   An unknown id is compared against a dummy hash, so it costs the same and fails the same
   way as a wrong secret: INVALID_API_KEY, one message, nothing to tell them apart;
3. only a caller who proved the secret learns more: API_KEY_REVOKED or API_KEY_EXPIRED.

Verified keys are remembered for ``cache_seconds`` (by the hash of the presented key, so
the cache holds no secret), which spares PostgreSQL on repeated calls. Expiry and the end
of a grace period are checked on every call, cached or not. Revocation and rotation are
honoured **at once in this process** (the manager tells the authenticator to forget the
key) and **within ``cache_seconds`` in every other Nexus instance**, whose cached entry
lives at most that long.

The last-used time is written in the background, at most once per
``last_used_interval`` per key from this process, and the store's conditional update
skips the write when any instance recorded a use within that interval: a busy key costs
one row write a minute, not one per call."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from datapunk_shared.auth.identity import Identity
from datapunk_shared.errors import DatapunkError, Unauthenticated
from datapunk_shared.logging import get_logger

from datapunk_nexus.identity.api_keys.domain import StoredKey
from datapunk_nexus.identity.api_keys.hashing import SecretHasher
from datapunk_nexus.identity.api_keys.key_format import invalid_api_key, parse_api_key
from datapunk_nexus.identity.api_keys.manager import utc_now
from datapunk_nexus.identity.api_keys.metrics import API_KEY_AUTHENTICATIONS
from datapunk_nexus.identity.api_keys.store import PostgresApiKeyStore

__all__ = ["API_KEY_ISSUER", "ApiKeyAuthenticator"]

API_KEY_ISSUER = "datapunk:api-key"
"""The ``Identity.issuer`` of every identity an API key vouches for."""

log = get_logger("datapunk.nexus.api_keys")
_DUMMY_HASH = bytes(32)
_AUTHENTICATED = API_KEY_AUTHENTICATIONS.labels("ok")


@dataclass(frozen=True, slots=True)
class _Verified:
    identity: Identity
    key_id: str
    expire_time: datetime | None
    """The key's expiry."""
    grace_end: datetime | None
    """When the presented secret was replaced by a rotation: the end of its grace period."""
    verified_at: datetime


def _expired(key_id: str) -> Unauthenticated:
    return Unauthenticated(
        "the API key has expired", reason="API_KEY_EXPIRED", metadata={"api_key": key_id}
    )


def _earliest(*moments: datetime | None) -> datetime | None:
    present = [m for m in moments if m is not None]
    return min(present) if present else None


class ApiKeyAuthenticator:
    """``authenticate(presented) -> Identity`` for ``x-api-key`` values."""

    def __init__(
        self,
        store: PostgresApiKeyStore,
        hasher: SecretHasher,
        *,
        cache_seconds: float = 5.0,
        cache_size: int = 10_000,
        last_used_interval: float = 60.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._cache_ttl = timedelta(seconds=cache_seconds)
        self._cache_size = cache_size
        self._cache: OrderedDict[bytes, _Verified] = OrderedDict()
        # Bumped by forget(): a verification that read the row before a revocation in
        # this process is not cached after it.
        self._epoch = 0
        self._touch_interval = timedelta(seconds=last_used_interval)
        self._touched: dict[str, datetime] = {}
        self._touches: set[asyncio.Task[None]] = set()
        self._clock = clock

    async def authenticate(self, presented: str) -> Identity:
        """The identity of the key's holder. Unauthenticated with reason
        ``INVALID_API_KEY`` (malformed, unknown, wrong secret), ``API_KEY_REVOKED`` or
        ``API_KEY_EXPIRED``; Unavailable when PostgreSQL cannot be asked."""
        try:
            identity = await self._authenticate(presented)
        except Unauthenticated as refusal:
            API_KEY_AUTHENTICATIONS.labels(refusal.reason).inc()
            raise
        _AUTHENTICATED.inc()
        return identity

    async def _authenticate(self, presented: str) -> Identity:
        parsed = parse_api_key(presented)
        digest = self._hasher.digest(parsed.key_id, parsed.secret)
        now = self._clock()
        verified = self._cached(digest, now)
        if verified is None:
            epoch = self._epoch
            stored = await self._store.lookup(parsed.key_id)
            verified = self._verify(parsed.key_id, digest, stored, now)
            if epoch == self._epoch:  # nothing was revoked or rotated meanwhile
                self._remember(digest, verified)
        if verified.expire_time is not None and verified.expire_time <= now:
            self._cache.pop(digest, None)
            raise _expired(parsed.key_id)
        if verified.grace_end is not None and verified.grace_end <= now:
            # The replaced secret's grace period is over: it is no longer the key's.
            self._cache.pop(digest, None)
            raise invalid_api_key()
        self._note_use(parsed.key_id, now)
        return verified.identity

    def forget(self, key_id: str) -> None:
        """Drop every cached verification of ``key_id`` (it was revoked or rotated)."""
        self._epoch += 1
        for digest in [d for d, v in self._cache.items() if v.key_id == key_id]:
            del self._cache[digest]

    async def close(self) -> None:
        """Wait for the last-used writes still in flight."""
        if self._touches:
            await asyncio.gather(*self._touches, return_exceptions=True)

    # -- verification ------------------------------------------------------------------

    def _cached(self, digest: bytes, now: datetime) -> _Verified | None:
        verified = self._cache.get(digest)
        if verified is None:
            return None
        age = now - verified.verified_at
        if not timedelta(0) <= age < self._cache_ttl:
            del self._cache[digest]
            return None
        self._cache.move_to_end(digest)
        return verified

    def _remember(self, digest: bytes, verified: _Verified) -> None:
        if self._cache_ttl <= timedelta(0):
            return
        self._cache[digest] = verified
        self._cache.move_to_end(digest)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _verify(
        self, key_id: str, digest: bytes, stored: StoredKey | None, now: datetime
    ) -> _Verified:
        if stored is None:
            SecretHasher.same(digest, _DUMMY_HASH)  # the same work as for a known key
            raise invalid_api_key()
        current = SecretHasher.same(digest, stored.secret_hash)
        previous = stored.previous_secret_hash is not None and SecretHasher.same(
            digest, stored.previous_secret_hash
        )
        grace_end = stored.previous_secret_expire_time
        if not current and not (previous and grace_end is not None and now < grace_end):
            raise invalid_api_key()
        key = stored.api_key
        if key.revoke_time is not None:
            raise Unauthenticated(
                "the API key was revoked", reason="API_KEY_REVOKED", metadata={"api_key": key_id}
            )
        if key.expire_time is not None and key.expire_time <= now:
            raise _expired(key_id)
        grace_end = None if current else grace_end
        valid_until = _earliest(key.expire_time, grace_end)
        identity = Identity(
            subject=f"key:{key.id}",
            tenant=key.tenant,
            kind="api_key",
            roles=frozenset(key.roles),
            scopes=frozenset(key.scopes),
            issuer=API_KEY_ISSUER,
            credential_id=key.id,
            expires_at=valid_until.timestamp() if valid_until is not None else None,
        )
        return _Verified(identity, key.id, key.expire_time, grace_end, now)

    # -- last-used time ----------------------------------------------------------------

    def _note_use(self, key_id: str, now: datetime) -> None:
        last = self._touched.get(key_id)
        if last is not None and timedelta(0) <= now - last < self._touch_interval:
            return
        self._touched[key_id] = now
        if len(self._touched) > 2 * self._cache_size:
            cutoff = now - self._touch_interval
            self._touched = {k: t for k, t in self._touched.items() if t > cutoff}
        task = asyncio.get_running_loop().create_task(self._touch(key_id, now))
        self._touches.add(task)
        task.add_done_callback(self._touches.discard)

    async def _touch(self, key_id: str, now: datetime) -> None:
        try:
            await self._store.touch(key_id, now, self._touch_interval)
        except DatapunkError as exc:
            # The call was authenticated; only the bookkeeping failed. Try again next use.
            self._touched.pop(key_id, None)
            log.warning("could not record an API key's last use", api_key=key_id, reason=exc.reason)
