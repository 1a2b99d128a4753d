"""ES256 building blocks shared by every signer: the public JWK of a P-256 key, its
RFC 7638 thumbprint (the ``kid``), and the DER-to-JWS signature conversion."""

from __future__ import annotations

import base64
import hashlib
import json

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

__all__ = [
    "ALG",
    "COORDINATE_BYTES",
    "b64url",
    "der_to_jws_signature",
    "p256_public_jwk",
    "public_jwk_of",
    "thumbprint",
]

ALG = "ES256"
"""The one JWS algorithm Nexus signs with: ECDSA on P-256 with SHA-256."""

COORDINATE_BYTES = 32
"""The size of a P-256 coordinate, and of each of r and s in a JWS signature."""


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515, section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(x: str, y: str) -> str:
    """The RFC 7638 SHA-256 thumbprint of the P-256 public key with coordinates ``x``,
    ``y`` (base64url): the same key always gets the same ``kid``, on every instance."""
    canonical = json.dumps(
        {"crv": "P-256", "kty": "EC", "x": x, "y": y}, separators=(",", ":"), sort_keys=True
    )
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def p256_public_jwk(x: bytes, y: bytes) -> dict[str, str]:
    """The public JWK (with ``kid``, ``alg`` and ``use``) of the P-256 point ``(x, y)``
    given as big-endian coordinates."""
    if len(x) != COORDINATE_BYTES or len(y) != COORDINATE_BYTES:
        raise ValueError("a P-256 coordinate has 32 bytes")
    ex, ey = b64url(x), b64url(y)
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": ex,
        "y": ey,
        "kid": thumbprint(ex, ey),
        "alg": ALG,
        "use": "sig",
    }


def public_jwk_of(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public JWK of a P-256 public key from ``cryptography``."""
    if not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"ES256 needs a P-256 key, not {key.curve.name}")
    numbers = key.public_numbers()
    return p256_public_jwk(
        numbers.x.to_bytes(COORDINATE_BYTES, "big"), numbers.y.to_bytes(COORDINATE_BYTES, "big")
    )


def der_to_jws_signature(der: bytes) -> bytes:
    """An ECDSA signature in DER (``cryptography``'s form) as JWS wants it: r || s, each
    32 bytes big-endian (RFC 7518, section 3.4)."""
    r, s = decode_dss_signature(der)
    return r.to_bytes(COORDINATE_BYTES, "big") + s.to_bytes(COORDINATE_BYTES, "big")
