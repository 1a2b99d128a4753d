"""How a key's secret is stored: HMAC-SHA-256 keyed with a server secret (the pepper).

Why not argon2id? A slow, memory-hard hash protects *passwords*: low-entropy secrets
people choose, which an attacker holding the hashes can guess offline. An API key's
secret is 256 random bits; no amount of offline guessing finds it, so slowness buys
nothing and costs every authenticated call. Measured by ``bench/api_keys.py``
(``bench/results/api_keys.json``; 2 shared cores, load average about 2), one verification:

==========================================  ======  ======  ====================
hash                                        p50     p99     verifications/s/core
==========================================  ======  ======  ====================
HMAC-SHA-256 under the pepper (this one)    5.0 us  20 us   189,000
argon2id, OWASP minimum (19 MiB, t=2, p=1)  37 ms   49 ms   28
argon2id, RFC 9106 (64 MiB, t=3, p=4)       227 ms  619 ms  4.3
==========================================  ======  ======  ====================

With argon2id a Nexus core could check a few dozen keys a second: every cache miss would
hold a core for tens of milliseconds, and a flood of well-formed guesses would be a
denial of service by itself. With the keyed hash, a whole authentication on a cache miss
(parse, checksum, hash, the PostgreSQL lookup) took 313 us at p50 beside 142 us for the
bare lookup over a raw connection, and 8.4 us on a cache hit.

What the pepper adds: it is not in the database but comes from the secret provider
(``api_keys.pepper_secret``), so a stolen dump of ``nexus.api_keys`` alone cannot confirm
a single guess, and an insider who can write the table cannot plant a hash for a key of
their own choosing. The key id is part of the MAC input, so a hash copied to another row
does not match there. Comparisons are constant-time (``hmac.compare_digest``)."""

from __future__ import annotations

import hmac

from datapunk_shared.errors import ConfigError

__all__ = ["MIN_PEPPER_BYTES", "SecretHasher"]

MIN_PEPPER_BYTES = 32
_DOMAIN = b"datapunk api key v1\x00"


class SecretHasher:
    """Hashes and checks key secrets with HMAC-SHA-256 under one pepper."""

    __slots__ = ("_pepper",)

    def __init__(self, pepper: bytes) -> None:
        if not isinstance(pepper, bytes) or len(pepper) < MIN_PEPPER_BYTES:
            raise ConfigError(
                f"the API-key pepper must be at least {MIN_PEPPER_BYTES} bytes of secret",
                keys=["nexus.auth.api_keys.pepper_secret"],
            )
        self._pepper = pepper

    def __repr__(self) -> str:
        return "SecretHasher(pepper=<hidden>)"

    def digest(self, key_id: str, secret: str) -> bytes:
        """The 32-byte hash stored for the key ``key_id`` with ``secret``."""
        message = _DOMAIN + key_id.encode("ascii") + b"\x00" + secret.encode("ascii")
        return hmac.digest(self._pepper, message, "sha256")  # one call into OpenSSL

    @staticmethod
    def same(digest: bytes, stored: bytes) -> bool:
        """Whether two hashes are equal, in time that does not depend on where they
        differ."""
        return hmac.compare_digest(digest, stored)
