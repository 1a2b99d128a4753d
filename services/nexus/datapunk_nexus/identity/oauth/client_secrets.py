"""Client secrets: made at random, shown once, kept only as argon2id hashes.

argon2id (not a keyed hash) because the token endpoint is not a hot path: a client
authenticates once per access token, every few minutes, so tens of milliseconds per
check cost nothing and a stolen table stays expensive to attack. Hashing runs in a worker
thread (argon2-cffi releases the GIL) so that it never stalls the event loop."""

from __future__ import annotations

import asyncio
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from datapunk_shared.config import OAuthSettings

__all__ = ["SECRET_PREFIX", "SecretHasher", "new_client_secret"]

SECRET_PREFIX = "dpcs_"
"""Client secrets start with this, so that secret scanners and people recognize them."""

_SECRET_BYTES = 32


def new_client_secret() -> str:
    """A new client secret: the prefix and 256 random bits, base64url."""
    return SECRET_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)


class SecretHasher:
    """argon2id hashing and checking of client secrets with the configured cost."""

    def __init__(self, settings: OAuthSettings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.secret_time_cost,
            memory_cost=settings.secret_memory_kib,
            parallelism=settings.secret_parallelism,
        )
        # Checked against when a client id is unknown, so that the answer takes as long
        # as for a known client with a wrong secret (no timing oracle for client ids).
        self._decoy = self._hasher.hash(secrets.token_urlsafe(_SECRET_BYTES))

    async def hash(self, secret: str) -> str:
        """The argon2id hash (PHC string, with its parameters and salt) of ``secret``."""
        return await asyncio.to_thread(self._hasher.hash, secret)

    async def check(self, stored_hash: str | None, secret: str) -> bool:
        """Whether ``secret`` matches ``stored_hash``; ``None`` (no such client) takes as
        long and is never a match."""
        return await asyncio.to_thread(self._check, stored_hash, secret)

    def needs_rehash(self, stored_hash: str) -> bool:
        """Whether ``stored_hash`` was made with other parameters than the configured."""
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True

    def _check(self, stored_hash: str | None, secret: str) -> bool:
        if not secret.startswith(SECRET_PREFIX):
            # Still spend the time, then refuse: nothing we issued looks like this.
            self._verify(self._decoy, secret)
            return False
        if stored_hash is None:
            self._verify(self._decoy, secret)
            return False
        return self._verify(stored_hash, secret)

    def _verify(self, stored_hash: str, secret: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, secret)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
