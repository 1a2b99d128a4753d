"""Nexus's signing keys on a real PKCS#11 token (SoftHSM2, made by the fixture in a
temporary directory) with the ring's state in a private PostgreSQL database: keys are
generated on the token and cannot leave it, the token signs JWSs that a library we did
not write verifies with the published JWK, rotation keeps the old key published,
deletion removes it everywhere, and a new ring (a restart, a second instance) sees the
same keys."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from datapunk_nexus.identity.signing import (
    Pkcs11Keys,
    Pkcs11Signer,
    Pkcs11Token,
    Signer,
    SigningKeyRing,
    build_key_ring,
)
from datapunk_shared.config import Settings
from datapunk_shared.errors import FailedPrecondition, InvalidArgument, NotFound
from datapunk_shared.key_events import key_event_subscriber
from datapunk_shared.secrets import FileSecretProvider
from joserfc import jws
from joserfc.errors import BadSignatureError
from joserfc.jwk import ECKey
from psycopg_pool import AsyncConnectionPool

from tests.signing_support import (
    SOFTHSM_MODULE,
    inspect_key,
    nexus_database,
    open_pool,
    softhsm_token,
)

LABEL = "dp-test-signing"
PIN = "user-pin-4821"
SO_PIN = "so-pin-9375"


@pytest.fixture(scope="module")
def token_conf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with softhsm_token(
        tmp_path_factory.mktemp("softhsm"), label=LABEL, pin=PIN, so_pin=SO_PIN
    ) as conf:
        yield conf


@pytest.fixture
def secrets(tmp_path: Path) -> FileSecretProvider:
    directory = tmp_path / "secrets"
    (directory / "nexus").mkdir(parents=True, mode=0o700)
    for name, value in (("nexus/signing-token-pin", PIN), ("nexus/wrong-pin", "0000-bad")):
        path = directory / name
        path.write_text(value + "\n")
        os.chmod(path, 0o600)
    return FileSecretProvider(directory)


@pytest.fixture
async def pool(settings: Settings, token_conf: Path) -> AsyncIterator[AsyncConnectionPool]:
    async with nexus_database(settings.engines.postgres.url) as url:
        pool = await open_pool(url)
        try:
            yield pool
        finally:
            await pool.close()


def _settings(**signing: object) -> Settings:
    values: dict[str, object] = {"backend": "pkcs11", "token_label": LABEL, **signing}
    return Settings(nexus={"auth": {"signing": values}})  # type: ignore[arg-type]


async def _ring(
    pool: AsyncConnectionPool, secrets: FileSecretProvider, **signing: object
) -> SigningKeyRing:
    return await build_key_ring(_settings(**signing), pool, secrets, refresh=False)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _sign_jws(signer: Signer, claims: dict[str, object]) -> str:
    header = {"alg": signer.alg, "kid": signer.kid, "typ": "at+jwt"}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(signer.sign(signing_input.encode()))}"


def _verify(token: str, jwks: dict[str, list[dict[str, str]]]) -> dict[str, object]:
    """Verify like a relying party: pick the published key by the token's kid."""
    kid = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["kid"]
    matches = [key for key in jwks["keys"] if key["kid"] == kid]
    if not matches:
        raise LookupError(f"kid {kid} is not published")
    jwk: dict[str, str | list[str]] = {**matches[0]}
    payload: dict[str, object] = json.loads(
        jws.deserialize_compact(token, ECKey.import_key(jwk), algorithms=["ES256"]).payload
    )
    return payload


def _key_on_token(conf: Path, key_id: str | None) -> list[dict[str, object]]:
    assert key_id is not None
    return inspect_key(conf, label=LABEL, pin=PIN, key_id=key_id)


async def test_keys_are_generated_on_the_token_and_never_leave_it(
    pool: AsyncConnectionPool, secrets: FileSecretProvider, token_conf: Path
) -> None:
    ring = await _ring(pool, secrets)
    try:
        (info,) = await ring.keys()
        assert (info.backend, info.token_label, info.state) == ("pkcs11", LABEL, "active")
        found = {str(o["class"]): o for o in _key_on_token(token_conf, info.token_key_id)}
        assert set(found) == {"PRIVATE_KEY", "PUBLIC_KEY"}
        private = found["PRIVATE_KEY"]
        assert private["LOCAL"] is True  # generated on the token, not imported
        assert private["EXTRACTABLE"] is False
        assert private["NEVER_EXTRACTABLE"] is True
        assert private["SENSITIVE"] is True
        assert private["ALWAYS_SENSITIVE"] is True
        assert private["PRIVATE"] is True
        assert private["TOKEN"] is True
        assert private["value_readable"] is False
        assert private["label"] == f"datapunk {info.kid}"
        signer = ring.active_signer()
        assert isinstance(signer, Pkcs11Signer)
        assert signer.kid == info.kid
        assert signer.public_jwk() == info.public_jwk
    finally:
        await ring.aclose()


async def test_a_jws_signed_on_the_token_verifies_with_the_published_jwk(
    pool: AsyncConnectionPool, secrets: FileSecretProvider
) -> None:
    ring = await _ring(pool, secrets)
    try:
        signer = ring.active_signer()
        token = _sign_jws(signer, {"sub": "client:ingest", "aud": "lake"})
        jwks = await ring.jwks()
        assert jwks["keys"] == [signer.public_jwk()]
        assert {"kid", "alg", "use"} <= set(jwks["keys"][0])
        assert (jwks["keys"][0]["alg"], jwks["keys"][0]["use"]) == ("ES256", "sig")
        assert _verify(token, jwks) == {"sub": "client:ingest", "aud": "lake"}
        # cryptography, on the raw signature, agrees.
        signing_input, signature = token.rsplit(".", 1)
        raw = base64.urlsafe_b64decode(signature + "==")
        public = ECKey.import_key({**jwks["keys"][0]}).public_key
        assert isinstance(public, ec.EllipticCurvePublicKey)
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        public.verify(der, signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        with pytest.raises(InvalidSignature):
            public.verify(der, signing_input.encode() + b"x", ec.ECDSA(hashes.SHA256()))
        header, _claims, sig = token.split(".")
        forged = f"{header}.{_b64(json.dumps({'sub': 'client:admin'}).encode())}.{sig}"
        with pytest.raises(BadSignatureError):
            _verify(forged, jwks)
    finally:
        await ring.aclose()


async def test_rotation_keeps_the_old_key_published_and_deletion_removes_it(
    pool: AsyncConnectionPool, secrets: FileSecretProvider, token_conf: Path
) -> None:
    ring = await _ring(pool, secrets, rotation_overlap=3600)
    try:
        old = ring.active_signer()
        old_token = _sign_jws(old, {"sub": "before"})
        started = time.time()
        new_info = await ring.rotate()
        new = ring.active_signer()
        assert new.kid == new_info.kid != old.kid
        jwks = await ring.jwks()
        assert [key["kid"] for key in jwks["keys"]] == [new.kid, old.kid]
        assert _verify(old_token, jwks) == {"sub": "before"}
        assert _verify(_sign_jws(new, {"sub": "after"}), jwks) == {"sub": "after"}
        retired = next(k for k in await ring.keys() if k.kid == old.kid)
        assert retired.state == "retired"
        assert retired.retired_at is not None
        assert retired.publish_until is not None
        overlap = retired.publish_until - retired.retired_at
        assert overlap == timedelta(seconds=3600)
        assert abs(retired.retired_at.timestamp() - started) < 60
        assert len(_key_on_token(token_conf, retired.token_key_id)) == 2

        with pytest.raises(FailedPrecondition) as active:
            await ring.delete(new.kid)
        assert active.value.reason == "SIGNING_KEY_ACTIVE"
        await ring.delete(old.kid)
        jwks = await ring.jwks()
        assert [key["kid"] for key in jwks["keys"]] == [new.kid]
        with pytest.raises(LookupError):
            _verify(old_token, jwks)
        assert _key_on_token(token_conf, retired.token_key_id) == []
        assert [k.kid for k in await ring.keys()] == [new.kid]
        with pytest.raises(NotFound) as gone:
            await ring.delete(old.kid)
        assert gone.value.reason == "SIGNING_KEY_NOT_FOUND"
        with pytest.raises(InvalidArgument) as bad:
            await ring.delete("../../dev/null")
        assert bad.value.reason == "INVALID_KID"
    finally:
        await ring.aclose()


async def test_a_new_ring_over_the_same_database_sees_the_same_keys(
    pool: AsyncConnectionPool, secrets: FileSecretProvider
) -> None:
    first = await _ring(pool, secrets)
    await first.rotate()
    before = await first.keys()
    jwks = await first.jwks()
    active = first.active_signer().kid
    await first.aclose()

    restarted = await _ring(pool, secrets)
    try:
        assert await restarted.keys() == before
        assert await restarted.jwks() == jwks
        assert restarted.active_signer().kid == active
        assert _verify(_sign_jws(restarted.active_signer(), {"n": 1}), jwks) == {"n": 1}
    finally:
        await restarted.aclose()


async def test_a_second_instance_follows_a_rotation_and_rotations_never_race(
    pool: AsyncConnectionPool, secrets: FileSecretProvider
) -> None:
    one = await _ring(pool, secrets)
    two = await build_key_ring(_settings(refresh_interval=0.2), pool, secrets, refresh=True)
    try:
        assert two.active_signer().kid == one.active_signer().kid
        rotated = await one.rotate()
        deadline = time.monotonic() + 10
        while two.active_signer().kid != rotated.kid:
            assert time.monotonic() < deadline, "the second instance never saw the rotation"
            await asyncio.sleep(0.05)
        # Signed by the other instance with the same token key: verifies with one's JWKS.
        assert _verify(_sign_jws(two.active_signer(), {"by": "two"}), await one.jwks())

        results = await asyncio.gather(one.rotate(), two.rotate())
        keys = await one.keys()
        assert [k.state for k in keys].count("active") == 1
        assert {r.kid for r in results} <= {k.kid for k in keys}
        assert len(keys) == 4
        assert len((await one.jwks())["keys"]) == 4  # every retired key is in its overlap
    finally:
        await two.aclose()
        await one.aclose()


async def test_a_second_instance_signs_with_the_new_key_once_a_rotation_is_announced(
    settings: Settings, pool: AsyncConnectionPool, secrets: FileSecretProvider
) -> None:
    # Its periodic refresh is ten minutes away: only the announcement (on the stack's
    # Redis) can move it to the new key.
    stack = _settings(refresh_interval=600).model_copy(update={"engines": settings.engines})
    one = await build_key_ring(stack, pool, secrets, refresh=False)
    two = await build_key_ring(stack, pool, secrets, refresh=True)
    listener = key_event_subscriber(stack, two.keys_changed)
    assert listener is not None
    listener.start()
    try:
        assert await listener.wait_subscribed(10)
        retired = two.active_signer().kid
        rotated = await one.rotate()
        deadline = time.monotonic() + 5
        while two.active_signer().kid == retired:
            assert time.monotonic() < deadline, "the rotation's announcement was not heard"
            await asyncio.sleep(0.05)
        assert two.active_signer().kid == rotated.kid
        assert _verify(_sign_jws(two.active_signer(), {"by": "two"}), await one.jwks())
    finally:
        await listener.stop()
        await two.aclose()
        await one.aclose()


async def test_prune_deletes_keys_whose_overlap_ended(
    pool: AsyncConnectionPool, secrets: FileSecretProvider, token_conf: Path
) -> None:
    token = await asyncio.to_thread(
        Pkcs11Token.open, Path(SOFTHSM_MODULE), LABEL, PIN.encode(), pin_secret="pin"
    )
    ring = SigningKeyRing(pool, Pkcs11Keys(token), overlap=0.5)
    try:
        first = await ring.start()
        second = await ring.rotate()
        assert len((await ring.jwks())["keys"]) == 2
        assert await ring.prune() == []  # still in its overlap
        await asyncio.sleep(0.7)
        assert [k["kid"] for k in (await ring.jwks())["keys"]] == [second.kid]
        assert await ring.prune() == [first.kid]
        assert _key_on_token(token_conf, first.token_key_id) == []
        assert [k.kid for k in await ring.keys()] == [second.kid]
    finally:
        await ring.aclose()


async def test_a_key_lost_from_the_token_is_replaced_at_start(
    pool: AsyncConnectionPool, secrets: FileSecretProvider, token_conf: Path
) -> None:
    first = await _ring(pool, secrets)
    (lost,) = await first.keys()
    await first.aclose()
    token = await asyncio.to_thread(
        Pkcs11Token.open, Path(SOFTHSM_MODULE), LABEL, PIN.encode(), pin_secret="pin"
    )
    assert lost.token_key_id is not None
    assert token.destroy(bytes.fromhex(lost.token_key_id))
    token.close()

    ring = await _ring(pool, secrets)
    try:
        assert ring.active_signer().kid != lost.kid
        kept = next(k for k in await ring.keys() if k.kid == lost.kid)
        assert kept.state == "retired"  # still published: tokens it signed verify
        assert lost.kid in [k["kid"] for k in (await ring.jwks())["keys"]]
    finally:
        await ring.aclose()


async def test_a_wrong_pin_or_token_is_refused_without_showing_the_pin(
    pool: AsyncConnectionPool, secrets: FileSecretProvider
) -> None:
    with pytest.raises(FailedPrecondition) as wrong:
        await _ring(pool, secrets, pin_secret="nexus/wrong-pin")
    assert wrong.value.reason == "SIGNING_TOKEN_LOGIN_FAILED"
    assert wrong.value.metadata == {"token": LABEL, "secret": "nexus/wrong-pin"}
    assert "0000-bad" not in wrong.value.message
    with pytest.raises(FailedPrecondition) as missing:
        await _ring(pool, secrets, token_label="no-such-token")
    assert missing.value.reason == "SIGNING_TOKEN_UNAVAILABLE"
    with pytest.raises(NotFound) as no_pin:
        await _ring(pool, secrets, pin_secret="nexus/no-such-pin")
    assert no_pin.value.reason == "SECRET_NOT_FOUND"
    with pytest.raises(FailedPrecondition) as no_module:
        await _ring(pool, secrets, pkcs11_module="/nonexistent/libpkcs11.so")
    assert no_module.value.reason == "SIGNING_TOKEN_UNAVAILABLE"

    ring = await _ring(pool, secrets)
    try:
        # This process is logged in already; a wrong PIN must still be refused.
        with pytest.raises(FailedPrecondition) as while_open:
            await _ring(pool, secrets, pin_secret="nexus/wrong-pin")
        assert while_open.value.reason == "SIGNING_TOKEN_LOGIN_FAILED"
        assert ring.active_signer().sign(b"still.works")
    finally:
        await ring.aclose()
    assert [k.state for k in await ring.keys()] == ["active"]
