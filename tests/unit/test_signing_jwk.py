"""ES256 building blocks and the signing/secrets settings: RFC 7638 thumbprints, the
PKCS#11 EC point in both encodings tokens use, DER-to-JWS signatures, and refusal of
settings that would put a secret name out of bounds."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from datapunk_nexus.identity.signing._jwk import (
    b64url,
    der_to_jws_signature,
    p256_public_jwk,
    public_jwk_of,
    thumbprint,
)
from datapunk_nexus.identity.signing._pkcs11 import _ec_point_coordinates
from datapunk_shared.config import SecretsSettings, SigningSettings
from joserfc.jwk import ECKey
from pydantic import ValidationError


def _point(key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    numbers = key.public_key().public_numbers()
    return numbers.x.to_bytes(32, "big"), numbers.y.to_bytes(32, "big")


def test_thumbprint_matches_joserfc_for_many_keys() -> None:
    for _ in range(20):
        key = ec.generate_private_key(ec.SECP256R1())
        jwk = public_jwk_of(key.public_key())
        assert jwk["kid"] == thumbprint(jwk["x"], jwk["y"])
        assert jwk["kid"] == ECKey.import_key(key.public_key()).thumbprint()


def test_coordinates_keep_their_leading_zero_bytes() -> None:
    x, y = b"\x00" * 31 + b"\x01", b"\x00\x7f" + b"\x11" * 30
    jwk = p256_public_jwk(x, y)
    assert (jwk["x"], jwk["y"]) == (b64url(x), b64url(y))
    assert len(jwk["x"]) == len(jwk["y"]) == 43
    with pytest.raises(ValueError, match="32 bytes"):
        p256_public_jwk(x[1:], y)


def test_public_jwk_refuses_other_curves() -> None:
    with pytest.raises(ValueError, match="P-256"):
        public_jwk_of(ec.generate_private_key(ec.SECP384R1()).public_key())


def test_der_signatures_become_64_bytes_r_then_s() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    for _ in range(50):  # some r or s are shorter than 32 bytes and must be padded
        raw = der_to_jws_signature(key.sign(b"m", ec.ECDSA(hashes.SHA256())))
        assert len(raw) == 64


def test_ec_point_in_der_or_bare_and_garbage_refused() -> None:
    x, y = _point(ec.generate_private_key(ec.SECP256R1()))
    bare = b"\x04" + x + y
    assert _ec_point_coordinates(bare) == (x, y)
    assert _ec_point_coordinates(b"\x04\x41" + bare) == (x, y)
    for bad in (
        b"",
        b"\x02" + x,
        b"\x04\x41" + b"\x02" + x + y,
        b"\x04\x40" + bare[:-1],
        bare + b"\x00",
    ):
        with pytest.raises(ValueError, match="P-256 point"):
            _ec_point_coordinates(bad)


@pytest.mark.parametrize(
    "values",
    [
        {"pin_secret": "../pin"},
        {"pin_secret": "nexus//pin"},
        {"pin_secret": "Nexus/Pin"},
        {"software_key_secret": ""},
        {"backend": "hsm"},
        {"rotation_overlap": 10},
        {"token_label": "x" * 33},
        {"refresh_interval": 0},
    ],
)
def test_signing_settings_refuse_bad_values(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SigningSettings(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "values",
    [
        {"provider": "vault"},
        {"url": "ftp://vault"},
        {"url": "https://vault:8200/?x=1"},
        {"mount": "../sys"},
        {"path_prefix": "a/../b"},
        {"token_env": "vault token"},
        {"timeout": 0},
    ],
)
def test_secrets_settings_refuse_bad_values(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SecretsSettings(**values)  # type: ignore[arg-type]


def test_defaults_sign_on_softhsm_with_a_pin_from_the_secrets() -> None:
    signing = SigningSettings()
    assert (signing.backend, signing.token_label) == ("pkcs11", "datapunk")
    assert str(signing.pkcs11_module) == "/usr/lib/softhsm/libsofthsm2.so"
    assert signing.pin_secret == "nexus/signing-token-pin"
    assert SecretsSettings().provider == "env"
