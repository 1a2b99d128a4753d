"""The development signer: ES256 JWS signatures that a library we did not write
(joserfc) verifies with the published JWK, RFC 7638 key ids, and refusal of keys that
cannot sign ES256 without quoting them."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from datapunk_nexus.identity.signing import Signer, SoftwareSigner
from datapunk_shared.errors import FailedPrecondition, NotFound
from datapunk_shared.secrets import EnvSecretProvider, FileSecretProvider
from joserfc import jws
from joserfc.errors import BadSignatureError
from joserfc.jwk import ECKey


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _compact_jws(signer: Signer, claims: dict[str, object]) -> str:
    header = {"alg": signer.alg, "kid": signer.kid, "typ": "at+jwt"}
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    return signing_input + "." + _b64(signer.sign(signing_input.encode()))


def _verifier(signer: Signer) -> ECKey:
    """The public key joserfc builds from the signer's published JWK."""
    jwk: dict[str, str | list[str]] = {**signer.public_jwk()}
    return ECKey.import_key(jwk)


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_a_signature_verifies_with_the_published_jwk() -> None:
    signer = SoftwareSigner.generate()
    assert isinstance(signer, Signer)
    token = _compact_jws(signer, {"sub": "client:a", "aud": "lake"})
    verified = jws.deserialize_compact(token, _verifier(signer))
    assert json.loads(verified.payload) == {"sub": "client:a", "aud": "lake"}
    assert verified.headers()["kid"] == signer.kid


def test_signatures_are_raw_r_and_s_and_bound_to_the_key() -> None:
    signer, other = SoftwareSigner.generate(), SoftwareSigner.generate()
    assert len(signer.sign(b"x.y")) == 64
    token = _compact_jws(signer, {"sub": "a"})
    with pytest.raises(BadSignatureError):
        jws.deserialize_compact(token, _verifier(other))
    header, _payload, signature = token.split(".")
    edited = _b64(json.dumps({"sub": "b"}).encode())
    with pytest.raises(BadSignatureError):
        jws.deserialize_compact(f"{header}.{edited}.{signature}", _verifier(signer))


def test_public_jwk_is_public_and_its_kid_is_the_rfc7638_thumbprint() -> None:
    signer = SoftwareSigner.generate()
    jwk = signer.public_jwk()
    assert set(jwk) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", "P-256", "ES256", "sig")
    assert jwk["kid"] == signer.kid == _verifier(signer).thumbprint()
    jwk["kid"] = "changed"
    assert signer.public_jwk()["kid"] == signer.kid  # a copy, not the signer's own


def test_the_same_pem_key_gives_the_same_kid() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    assert SoftwareSigner.from_pem(_pem(key)).kid == SoftwareSigner(key).kid
    assert SoftwareSigner.generate().kid != SoftwareSigner(key).kid


@pytest.mark.parametrize(
    "pem",
    [
        b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
        b"",
        _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        _pem(ec.generate_private_key(ec.SECP384R1())),
    ],
    ids=["garbage", "empty", "rsa", "p384"],
)
def test_keys_that_cannot_sign_es256_are_refused_without_quoting_them(pem: bytes) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        SoftwareSigner.from_pem(pem)
    assert caught.value.reason == "INVALID_SIGNING_KEY"
    assert "not a key" not in caught.value.message
    assert "PRIVATE" not in caught.value.message


async def test_key_from_the_environment_secret_provider(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    monkeypatch.setenv("DATAPUNK_SECRET_SIGNING_KEY", _pem(key).decode())
    signer = await SoftwareSigner.from_secret(EnvSecretProvider(), "signing_key")
    assert signer.kid == SoftwareSigner(key).kid


async def test_key_from_the_file_secret_provider(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "signing_key"
    path.write_bytes(_pem(key))
    os.chmod(path, stat.S_IRUSR)
    signer = await SoftwareSigner.from_secret(FileSecretProvider(tmp_path), "signing_key")
    assert signer.kid == SoftwareSigner(key).kid
    with pytest.raises(NotFound):
        await SoftwareSigner.from_secret(FileSecretProvider(tmp_path), "other_key")
