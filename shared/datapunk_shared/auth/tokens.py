"""Strict verification of JWT access tokens (RFC 9068) from the issuers Datapunk trusts.

One ``TokenVerifier`` holds an ``IssuerPolicy`` per trusted issuer and a ``KeySource``
that hands out the issuers' public keys. ``verify`` accepts a token only when all of
these hold, and otherwise raises ``Unauthenticated`` with the reason of the first check
that failed (docs/identity.md):

=====================================================  ==========================
check                                                  reason
=====================================================  ==========================
at most ``max_token_bytes`` (before any parsing)       ``TOKEN_TOO_LARGE``
three base64url segments of JSON objects, no           ``MALFORMED_TOKEN``
duplicate members
``alg`` asymmetric and allowed for the issuer          ``UNSUPPORTED_ALGORITHM``
(never ``none``, never ``HS*``)
no ``jku``/``x5u``/``jwk``/``x5c``/``crit`` header     ``FORBIDDEN_HEADER``
``iss`` is a configured issuer                         ``UNTRUSTED_ISSUER``
``typ`` is ``at+jwt`` (so never an ID token)           ``WRONG_TOKEN_TYPE``
``kid`` is a plain key id the issuer publishes         ``UNKNOWN_KEY``
the signature verifies with that key                   ``BAD_SIGNATURE``
``sub``, ``jti``, ``iat``, ``exp``, ``nbf`` present    ``MALFORMED_TOKEN``
``exp`` not passed, ``nbf``/``iat`` not ahead          ``TOKEN_EXPIRED`` /
(both with the issuer's leeway)                        ``TOKEN_NOT_YET_VALID``
``aud`` names an audience the issuer's policy accepts  ``WRONG_AUDIENCE``
the ``jti`` is not revoked (optional hook)             ``TOKEN_REVOKED``
=====================================================  ==========================

Keys come only from the ``KeySource``: header members that point at keys (``jku``,
``x5u``, ``jwk``, ``x5c``) are refused, never followed, and a ``kid`` is only ever a
dictionary key. No message or metadata carries the token or any part of a key.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from joserfc.errors import JoseError
from joserfc.jwk import Key
from joserfc.jws import JWSRegistry

from datapunk_shared.auth.identity import Identity
from datapunk_shared.auth.keys import KID_PATTERN, import_public_keys
from datapunk_shared.errors import Unauthenticated

__all__ = [
    "ACCESS_TOKEN_TYPES",
    "ASYMMETRIC_ALGORITHMS",
    "DEFAULT_MAX_TOKEN_BYTES",
    "FORBIDDEN_HEADERS",
    "ClaimsMapper",
    "IssuerPolicy",
    "KeySource",
    "RevocationCheck",
    "StaticKeySource",
    "TokenVerifier",
    "refuse",
]

ASYMMETRIC_ALGORITHMS = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    | {"EdDSA", "Ed25519"}
)
"""Every algorithm an issuer policy may allow. Symmetric (``HS*``) and ``none`` are not
here: a verifier that holds only public keys must never accept a MAC."""

ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
"""The ``typ`` of a JWT access token (RFC 9068 section 2.1)."""

FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c", "crit")
"""Header members that would let a token choose its own verification key or demand
extensions we do not implement."""

DEFAULT_MAX_TOKEN_BYTES = 8192

_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


def refuse(reason: str, message: str, **metadata: str) -> Unauthenticated:
    """The ``Unauthenticated`` error for one failed check (never quoting the token)."""
    return Unauthenticated(message, reason=reason, metadata=metadata or None)


class KeySource(Protocol):
    """Where the public keys of the trusted issuers come from."""

    async def key(self, issuer: str, kid: str) -> Key:
        """The issuer's signing key with this ``kid``.

        Raises ``Unauthenticated`` (``UNKNOWN_KEY``) when the issuer publishes no such
        key, ``Unavailable`` (``ISSUER_UNAVAILABLE``) when its keys cannot be had now."""
        ...


ClaimsMapper = Callable[[Mapping[str, Any]], Identity]
"""Turns the verified claims of one issuer's token into an ``Identity``; raises
``Unauthenticated`` (``MALFORMED_TOKEN``) when a claim it needs is missing or wrong."""

RevocationCheck = Callable[[str], Awaitable[bool]]
"""``await is_revoked(jti)``: whether the token with this id has been revoked. Its own
errors propagate, so a revocation list that cannot be read fails closed."""


@dataclass(frozen=True, slots=True)
class IssuerPolicy:
    """What one trusted issuer's access tokens must look like to be accepted."""

    issuer: str
    """The exact ``iss`` value (compared as a string, no normalisation)."""
    audiences: frozenset[str]
    """A token is accepted when its ``aud`` names at least one of these."""
    algorithms: frozenset[str]
    """The signature algorithms this issuer uses; a subset of ``ASYMMETRIC_ALGORITHMS``."""
    mapper: ClaimsMapper
    """How this issuer's claims become an ``Identity``."""
    token_types: frozenset[str] = ACCESS_TOKEN_TYPES
    """Accepted ``typ`` header values, compared case-insensitively."""
    leeway: float = 30.0
    """Seconds of clock skew allowed around ``exp``, ``nbf`` and ``iat``."""
    max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES
    """Longer tokens from this issuer are refused with ``TOKEN_TOO_LARGE``."""

    def __post_init__(self) -> None:
        if not self.issuer:
            raise ValueError("an issuer policy needs the issuer")
        if not self.audiences or not all(self.audiences):
            raise ValueError(f"the policy of {self.issuer} needs at least one audience")
        unsafe = sorted(set(self.algorithms) - ASYMMETRIC_ALGORITHMS)
        if not self.algorithms or unsafe:
            raise ValueError(
                f"the policy of {self.issuer} allows {unsafe or 'no algorithms'}; "
                f"choose from {sorted(ASYMMETRIC_ALGORITHMS)}"
            )
        if not self.token_types:
            raise ValueError(f"the policy of {self.issuer} accepts no token type")
        if not 0 <= self.leeway <= 300:
            raise ValueError("leeway must be between 0 and 300 seconds")
        if not 256 <= self.max_token_bytes <= 64 * 1024:
            raise ValueError("max_token_bytes must be between 256 and 65536")
        object.__setattr__(self, "token_types", frozenset(t.lower() for t in self.token_types))


class StaticKeySource:
    """Fixed public keys per issuer, from JWKS documents (tests, fixed configuration,
    or a process that knows an issuer's keys first-hand, such as Nexus's own)."""

    def __init__(self, jwks_by_issuer: Mapping[str, Mapping[str, Any]]) -> None:
        self._keys: dict[str, dict[str, Key]] = {}
        for issuer, jwks in jwks_by_issuer.items():
            self.set_jwks(issuer, jwks)

    def set_jwks(self, issuer: str, jwks: Mapping[str, Any]) -> None:
        """Replace the issuer's keys (after a rotation); raises ``ValueError`` when the
        document is not a key set."""
        self._keys[issuer] = import_public_keys(jwks)

    async def key(self, issuer: str, kid: str) -> Key:
        key = self._keys.get(issuer, {}).get(kid)
        if key is None:
            raise refuse(
                "UNKNOWN_KEY", "the token is signed with a key the issuer does not publish"
            )
        return key


class TokenVerifier:
    """Verifies access tokens from the issuers of ``policies`` with keys from ``keys``."""

    def __init__(
        self,
        policies: Iterable[IssuerPolicy],
        keys: KeySource,
        *,
        is_revoked: RevocationCheck | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._policies = {policy.issuer: policy for policy in policies}
        if not self._policies:
            raise ValueError("a token verifier needs at least one trusted issuer")
        self._keys = keys
        self._is_revoked = is_revoked
        self._clock = clock
        self._max_bytes = max(p.max_token_bytes for p in self._policies.values())

    async def aclose(self) -> None:
        """Release what the key source holds (HTTP connections of JWKS caches)."""
        close = getattr(self._keys, "aclose", None)
        if close is not None:
            await close()

    async def keys_changed(self, issuer: str | None, removed: Collection[str]) -> None:
        """An issuer's signing keys changed (``datapunk_shared.key_events``): tell the key
        source, when it caches keys, to drop ``removed`` and fetch them again."""
        changed = getattr(self._keys, "keys_changed", None)
        if changed is not None:
            await changed(issuer, removed)

    @property
    def issuers(self) -> frozenset[str]:
        """The issuers whose tokens this verifier accepts."""
        return frozenset(self._policies)

    async def verify(self, token: str) -> Identity:
        """The identity ``token`` proves, or ``Unauthenticated`` with the reason why not
        (``Unavailable`` when the issuer's keys cannot be had now)."""
        if not isinstance(token, str) or not token:
            raise refuse("MALFORMED_TOKEN", "the access token is empty")
        # The size check comes first, so an oversized token costs nothing to refuse.
        if len(token) > self._max_bytes:
            raise refuse(
                "TOKEN_TOO_LARGE",
                f"the access token is longer than {self._max_bytes} bytes",
                max_bytes=str(self._max_bytes),
            )
        header_b64, payload_b64, signature_b64 = _split(token)
        header = _json_segment(header_b64, "header")
        claims = _json_segment(payload_b64, "payload")

        alg = _check_header(header)
        policy = self._policy_for(claims)
        if len(token) > policy.max_token_bytes:
            raise refuse(
                "TOKEN_TOO_LARGE",
                f"the access token is longer than {policy.max_token_bytes} bytes",
                max_bytes=str(policy.max_token_bytes),
            )
        if alg not in policy.algorithms:
            raise refuse(
                "UNSUPPORTED_ALGORITHM",
                f"the issuer's tokens are signed with {', '.join(sorted(policy.algorithms))}",
                alg=alg,
            )
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in policy.token_types:
            raise refuse(
                "WRONG_TOKEN_TYPE",
                "the token is not an access token (typ must be at+jwt)",
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or KID_PATTERN.fullmatch(kid) is None:
            raise refuse("UNKNOWN_KEY", "the token does not name a valid key id")

        key = await self._keys.key(policy.issuer, kid)
        _check_signature(alg, key, f"{header_b64}.{payload_b64}", signature_b64)
        self._check_claims(policy, claims)
        if self._is_revoked is not None and await self._is_revoked(claims["jti"]):
            raise refuse("TOKEN_REVOKED", "the access token has been revoked")
        return policy.mapper(claims)

    def _policy_for(self, claims: Mapping[str, Any]) -> IssuerPolicy:
        issuer = claims.get("iss")
        policy = self._policies.get(issuer) if isinstance(issuer, str) else None
        if policy is None:
            raise refuse("UNTRUSTED_ISSUER", "the token's issuer is not trusted")
        return policy

    def _check_claims(self, policy: IssuerPolicy, claims: Mapping[str, Any]) -> None:
        for name in ("sub", "jti"):
            value = claims.get(name)
            if not isinstance(value, str) or not value or len(value) > 1024:
                raise refuse(
                    "MALFORMED_TOKEN", f"the token has no valid '{name}' claim", claim=name
                )
        exp, nbf, iat = (_numeric_date(claims, name) for name in ("exp", "nbf", "iat"))
        now = self._clock()
        if exp <= now - policy.leeway:
            raise refuse("TOKEN_EXPIRED", "the access token has expired")
        if nbf > now + policy.leeway or iat > now + policy.leeway:
            raise refuse("TOKEN_NOT_YET_VALID", "the access token is not valid yet")
        if _audiences(claims).isdisjoint(policy.audiences):
            raise refuse(
                "WRONG_AUDIENCE",
                "the access token is not meant for this service",
                expected=" ".join(sorted(policy.audiences)),
            )


def _split(token: str) -> tuple[str, str, str]:
    parts = token.split(".")
    if len(parts) != 3:
        raise refuse(
            "MALFORMED_TOKEN",
            "the access token is not a signed JWT (three base64url segments)",
        )
    # An empty signature is well-formed here, so that ``alg: none`` tokens are refused
    # for their algorithm and unsigned ES256 ones for their signature.
    header, payload, signature = parts
    if not (_SEGMENT.fullmatch(header) and _SEGMENT.fullmatch(payload)) or (
        signature and not _SEGMENT.fullmatch(signature)
    ):
        raise refuse("MALFORMED_TOKEN", "the access token has a segment that is not base64url")
    return header, payload, signature


def _b64decode(segment: str) -> bytes:
    if len(segment) % 4 == 1:
        raise ValueError("impossible base64 length")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member")  # {"alg":"ES256","alg":"none"} is ambiguous
    return result


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_segment(segment: str, part: str) -> dict[str, Any]:
    try:
        value = json.loads(
            _b64decode(segment),
            object_pairs_hook=_no_duplicates,
            parse_constant=_refuse_constant,
        )
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise refuse("MALFORMED_TOKEN", f"the token's {part} is not a JSON object") from None
    if not isinstance(value, dict):
        raise refuse("MALFORMED_TOKEN", f"the token's {part} is not a JSON object")
    return value


def _check_header(header: Mapping[str, Any]) -> str:
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise refuse("MALFORMED_TOKEN", "the token's header names no algorithm")
    if alg not in ASYMMETRIC_ALGORITHMS:
        raise refuse(
            "UNSUPPORTED_ALGORITHM",
            "the token's algorithm is not accepted (asymmetric signatures only)",
            alg=alg if alg in JWSRegistry.algorithms else "other",
        )
    for name in FORBIDDEN_HEADERS:
        if name in header:
            raise refuse(
                "FORBIDDEN_HEADER",
                f"the token's header may not carry '{name}'",
                header=name,
            )
    return alg


def _check_signature(alg: str, key: Key, signing_input: str, signature_b64: str) -> None:
    model = JWSRegistry.algorithms[alg]
    try:
        model.check_key(key)
        valid = model.verify(signing_input.encode("ascii"), _b64decode(signature_b64), key)
    except (JoseError, ValueError, TypeError, binascii.Error):
        valid = False
    if not valid:
        raise refuse("BAD_SIGNATURE", "the access token's signature does not verify")


def _numeric_date(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    # The range check also refuses NaN, infinities and integers too big for a float.
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1e12:
        raise refuse(
            "MALFORMED_TOKEN",
            f"the token has no valid '{name}' claim (seconds since the epoch)",
            claim=name,
        )
    return float(value)


def _audiences(claims: Mapping[str, Any]) -> frozenset[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return frozenset({aud})
    if isinstance(aud, list) and aud and all(isinstance(item, str) for item in aud):
        return frozenset(aud)
    raise refuse("MALFORMED_TOKEN", "the token has no valid 'aud' claim", claim="aud")
