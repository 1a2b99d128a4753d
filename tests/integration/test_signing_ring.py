"""The key ring's rules on the real PostgreSQL with the development (software) backend:
which key is active after a start, the overlap in which a retired key stays published,
retire and delete, keys another process holds, and the JWKS while PostgreSQL is down."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from datapunk_nexus.identity.signing import SigningKeyRing, SoftwareKeys, build_key_ring
from datapunk_shared.config import Settings
from datapunk_shared.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from datapunk_shared.secrets import FileSecretProvider
from psycopg_pool import AsyncConnectionPool

from tests.signing_support import allow_connections, nexus_database, open_pool

KEY_SECRET = "nexus/signing-key"


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[str]:
    async with nexus_database(settings.engines.postgres.url) as url:
        yield url


@pytest.fixture
async def pool(database: str) -> AsyncIterator[AsyncConnectionPool]:
    pool = await open_pool(database)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def secrets(tmp_path: Path) -> FileSecretProvider:
    (tmp_path / "nexus").mkdir(mode=0o700)
    return FileSecretProvider(tmp_path)


def _set_pem_secret(secrets: FileSecretProvider) -> None:
    """Store a new P-256 PEM key as the signing-key secret."""
    key = ec.generate_private_key(ec.SECP256R1())
    path = secrets.path(KEY_SECRET)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(path, 0o600)


def _ring(
    pool: AsyncConnectionPool, secrets: FileSecretProvider, **kwargs: float
) -> SigningKeyRing:
    options = {"overlap": 3600.0, **kwargs}
    return SigningKeyRing(
        pool,
        SoftwareKeys(secrets, KEY_SECRET),
        overlap=options["overlap"],
        pool_timeout=options.get("pool_timeout", 5.0),
    )


async def _kids(ring: SigningKeyRing) -> list[str]:
    return [key["kid"] for key in (await ring.jwks())["keys"]]


async def test_without_a_pem_secret_each_start_rotates_to_a_new_key(
    pool: AsyncConnectionPool, secrets: FileSecretProvider
) -> None:
    first = _ring(pool, secrets)
    one = await first.start()
    assert (one.state, one.backend, one.token_label) == ("active", "software", None)
    assert first.active_signer().kid == one.kid
    await first.aclose()

    # A new process cannot sign with the key the last one generated: it rotates, and the
    # old key stays published for the overlap.
    second = _ring(pool, secrets)
    two = await second.start()
    try:
        assert two.kid != one.kid
        assert await _kids(second) == [two.kid, one.kid]
        retired = next(k for k in await second.keys() if k.kid == one.kid)
        assert retired.state == "retired"
    finally:
        await second.aclose()


async def test_a_pem_secret_keeps_its_kid_across_starts_and_comes_back(
    pool: AsyncConnectionPool, secrets: FileSecretProvider
) -> None:
    _set_pem_secret(secrets)
    ring = _ring(pool, secrets)
    pem_key = await ring.start()
    await ring.aclose()
    ring = _ring(pool, secrets)
    assert (await ring.start()).kid == pem_key.kid
    assert len(await ring.keys()) == 1
    await ring.aclose()

    _set_pem_secret(secrets)  # the operator changes the key: it becomes active
    ring = _ring(pool, secrets)
    changed = await ring.start()
    assert changed.kid != pem_key.kid
    assert await _kids(ring) == [changed.kid, pem_key.kid]
    await ring.aclose()


async def test_a_rotated_away_pem_key_is_reactivated_with_its_history(
    pool: AsyncConnectionPool, secrets: FileSecretProvider
) -> None:
    _set_pem_secret(secrets)
    ring = _ring(pool, secrets)
    pem_key = await ring.start()
    rotated = await ring.rotate()
    assert ring.active_signer().kid == rotated.kid
    await ring.aclose()
    ring = _ring(pool, secrets)
    try:
        back = await ring.start()
        assert back.kid == pem_key.kid
        assert back.created_at == pem_key.created_at
        assert (back.retired_at, back.publish_until) == (None, None)
        states = {k.kid: k.state for k in await ring.keys()}
        assert states == {pem_key.kid: "active", rotated.kid: "retired"}
    finally:
        await ring.aclose()


async def test_a_retired_key_leaves_the_jwks_when_its_overlap_ends(
    pool: AsyncConnectionPool, secrets: FileSecretProvider
) -> None:
    ring = _ring(pool, secrets, overlap=0.5)
    try:
        old = await ring.start()
        new = await ring.rotate()
        assert await _kids(ring) == [new.kid, old.kid]
        await asyncio.sleep(0.7)
        assert await _kids(ring) == [new.kid]
        # Out of the JWKS, but recorded until deleted or pruned.
        assert {k.kid for k in await ring.keys()} == {old.kid, new.kid}
        assert await ring.prune() == [old.kid]
    finally:
        await ring.aclose()


async def test_retire_ends_the_overlap_now_and_refuses_the_active_key(
    pool: AsyncConnectionPool, secrets: FileSecretProvider
) -> None:
    ring = _ring(pool, secrets)
    try:
        old = await ring.start()
        new = await ring.rotate()
        retired = await ring.retire(old.kid)
        assert retired.publish_until is not None
        assert retired.retired_at is not None
        assert retired.publish_until >= retired.retired_at
        assert await _kids(ring) == [new.kid]
        with pytest.raises(FailedPrecondition) as active:
            await ring.retire(new.kid)
        assert active.value.reason == "SIGNING_KEY_ACTIVE"
        assert active.value.metadata == {"kid": new.kid}
        with pytest.raises(NotFound):
            await ring.retire("AAAA")
        for bad in ("", "a'b", "../x", "k" * 129):
            with pytest.raises(InvalidArgument):
                await ring.retire(bad)
        await ring.delete(old.kid)
        assert [k.kid for k in await ring.keys()] == [new.kid]
    finally:
        await ring.aclose()


async def test_another_process_software_key_cannot_be_signed_with_here(
    pool: AsyncConnectionPool, secrets: FileSecretProvider
) -> None:
    here = _ring(pool, secrets)
    there = _ring(pool, secrets)
    try:
        await here.start()
        await there.start()  # rotates: it cannot use here's key
        await here.refresh()
        with pytest.raises(FailedPrecondition) as caught:
            here.active_signer()
        assert caught.value.reason == "SIGNING_KEY_NOT_HELD"
        assert caught.value.metadata == {"kid": there.active_signer().kid}
    finally:
        await here.aclose()
        await there.aclose()


async def test_jwks_is_served_from_memory_while_postgres_is_down(
    database: str, pool: AsyncConnectionPool, secrets: FileSecretProvider
) -> None:
    ring = _ring(pool, secrets, pool_timeout=1.0)
    fresh = _ring(pool, secrets, pool_timeout=1.0)
    try:
        await ring.start()
        known = await ring.jwks()
        signer = ring.active_signer()
        await allow_connections(database, False)
        try:
            assert await ring.jwks() == known
            assert ring.active_signer() is signer  # signing needs no database
            with pytest.raises(Unavailable) as down:
                await fresh.jwks()  # nothing read yet: nothing to serve
            assert down.value.reason == "ENGINE_UNAVAILABLE"
            assert down.value.metadata == {"engine": "postgres"}
            with pytest.raises(Unavailable):
                await ring.rotate()
        finally:
            await allow_connections(database, True)
        assert await ring.jwks() == known
    finally:
        await ring.aclose()
        await fresh.aclose()


async def test_build_key_ring_with_the_software_backend(
    pool: AsyncConnectionPool, secrets: FileSecretProvider
) -> None:
    _set_pem_secret(secrets)
    settings = Settings(nexus={"auth": {"signing": {"backend": "software"}}})  # type: ignore[arg-type]
    ring = await build_key_ring(settings, pool, secrets)
    try:
        assert ring.backend == "software"
        (info,) = await ring.keys()
        assert ring.active_signer().kid == info.kid
    finally:
        await ring.aclose()
