"""The ``Signer`` interface the token issuer signs with, and ``SoftwareSigner``, its
development backend: a P-256 key held in this process (from a secret, or generated)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from datapunk_shared.errors import FailedPrecondition
from datapunk_shared.secrets import SecretProvider

from datapunk_nexus.identity.signing._jwk import ALG, der_to_jws_signature, public_jwk_of

__all__ = ["Signer", "SoftwareSigner"]


@runtime_checkable
class Signer(Protocol):
    """One signing key. ``sign`` returns the raw JWS signature of ``signing_input``
    (``BASE64URL(header) || '.' || BASE64URL(payload)``): for ES256 the 64 bytes r || s.
    ``public_jwk`` is the key's public half as a JWK carrying ``kid``, ``alg`` and
    ``use: sig``, ready for the JWKS document."""

    kid: str
    alg: str  # "ES256"

    def sign(self, signing_input: bytes) -> bytes: ...

    def public_jwk(self) -> dict[str, str]: ...


class SoftwareSigner:
    """An ES256 signer whose private key is in this process's memory (development; use
    the PKCS#11 backend in production). The ``kid`` is the key's RFC 7638 thumbprint."""

    alg: str = ALG

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise FailedPrecondition(
                f"an ES256 signing key must be on curve P-256, not {private_key.curve.name}",
                reason="INVALID_SIGNING_KEY",
            )
        self._key = private_key
        self._jwk = public_jwk_of(private_key.public_key())
        self.kid: str = self._jwk["kid"]

    @classmethod
    def generate(cls) -> SoftwareSigner:
        """A signer with a new random P-256 key."""
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_pem(cls, pem: bytes) -> SoftwareSigner:
        """A signer for an unencrypted PEM private key (PKCS#8 or SEC 1). A key that
        cannot be read is refused without quoting any of it."""
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            raise FailedPrecondition(
                "the signing key is not an unencrypted PEM private key",
                reason="INVALID_SIGNING_KEY",
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise FailedPrecondition(
                "the signing key is not an elliptic-curve (P-256) key",
                reason="INVALID_SIGNING_KEY",
            )
        return cls(key)

    @classmethod
    async def from_secret(cls, secrets: SecretProvider, name: str) -> SoftwareSigner:
        """A signer for the PEM private key kept as secret ``name``."""
        return cls.from_pem(await secrets.get(name))

    def sign(self, signing_input: bytes) -> bytes:
        return der_to_jws_signature(self._key.sign(signing_input, ec.ECDSA(hashes.SHA256())))

    def public_jwk(self) -> dict[str, str]:
        return dict(self._jwk)

    def __repr__(self) -> str:
        return f"SoftwareSigner(kid={self.kid!r})"
