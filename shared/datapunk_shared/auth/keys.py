"""Turning a JSON Web Key Set into the public keys a token may be verified with.

Only asymmetric signing keys survive: symmetric (``oct``) keys, encryption keys, RSA keys
shorter than 2048 bits and entries that do not parse are dropped, and private parts are
never kept. A key set is trusted data from a configured issuer, but a bad entry in it
must not stop the good ones from working.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

__all__ = ["KID_PATTERN", "MAX_KEYS_PER_SET", "import_public_keys"]

KID_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._:-]{0,127}")
"""What a key id may look like: base64url thumbprints, UUIDs and names like
``nexus-2025.1``. Anything else (slashes, quotes, spaces, ``..`` first) is never looked
up anywhere; a token carrying it names an unknown key."""

MAX_KEYS_PER_SET = 64
"""More keys than this in one set is refused: no real issuer publishes that many."""

_KEY_CLASSES: dict[str, type[RSAKey] | type[ECKey] | type[OKPKey]] = {
    "RSA": RSAKey,
    "EC": ECKey,
    "OKP": OKPKey,
}
_PUBLIC_MEMBERS = {
    "RSA": ("n", "e"),
    "EC": ("crv", "x", "y"),
    "OKP": ("crv", "x"),
}
_MIN_RSA_BITS = 2048


def import_public_keys(jwks: Mapping[str, Any]) -> dict[str, Key]:
    """The usable public signing keys of a JWKS document, by ``kid``.

    Raises ``ValueError`` when the document itself is not a key set (no ``keys`` list,
    too many keys); entries that cannot be used are skipped."""
    entries = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(entries, list):
        raise ValueError("a JWKS document needs a 'keys' list")
    if len(entries) > MAX_KEYS_PER_SET:
        raise ValueError(f"a JWKS document may hold at most {MAX_KEYS_PER_SET} keys")
    keys: dict[str, Key] = {}
    for entry in entries:
        key = _public_signing_key(entry)
        if key is not None and key.kid is not None and key.kid not in keys:
            keys[key.kid] = key
    return keys


def _public_signing_key(entry: object) -> Key | None:
    if not isinstance(entry, Mapping):
        return None
    kty, kid = entry.get("kty"), entry.get("kid")
    if not isinstance(kty, str) or kty not in _KEY_CLASSES:
        return None  # "oct" (symmetric) keys and unknown types never verify a token
    if not isinstance(kid, str) or KID_PATTERN.fullmatch(kid) is None:
        return None
    if entry.get("use", "sig") != "sig":
        return None
    key_ops = entry.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return None
    public: dict[str, Any] = {"kty": kty, "kid": kid}
    for member in _PUBLIC_MEMBERS[kty]:
        value = entry.get(member)
        if not isinstance(value, str):
            return None
        public[member] = value
    if kty == "RSA" and _rsa_bits(public["n"]) < _MIN_RSA_BITS:
        return None
    alg = entry.get("alg")
    if alg is not None:
        if not isinstance(alg, str):
            return None
        public["alg"] = alg
    try:
        key = _KEY_CLASSES[kty].import_key(public)
    except (JoseError, ValueError, TypeError):
        return None
    return key


def _rsa_bits(modulus: str) -> int:
    """The size of an RSA modulus, read before import (joserfc warns on short keys)."""
    try:
        raw = base64.urlsafe_b64decode(modulus + "=" * (-len(modulus) % 4))
    except (ValueError, binascii.Error):
        return 0
    return int.from_bytes(raw, "big").bit_length()
