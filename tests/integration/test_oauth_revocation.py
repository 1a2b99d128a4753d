"""The revocation list across instances, on a real PostgreSQL: a revocation reaches
another instance through LISTEN/NOTIFY long before its poll would, the poll alone
catches up when notifications cannot arrive, and a list that cannot be read fails
closed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from datapunk_nexus.identity.oauth import RevocationList
from datapunk_shared.config import Settings
from datapunk_shared.errors import Unavailable
from psycopg_pool import AsyncConnectionPool

from tests.integration.test_oauth_support import OAuthHarness, oauth_harness
from tests.support import free_port


@pytest.fixture(scope="module")
async def oauth(settings: Settings) -> AsyncIterator[OAuthHarness]:
    async with oauth_harness(settings) as harness:
        yield harness


async def _until_revoked(revocations: RevocationList, jti: str, timeout: float) -> float:
    started = time.perf_counter()
    while not await revocations.is_revoked(jti):
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"{jti} not seen as revoked within {timeout} s")
        await asyncio.sleep(0.005)
    return time.perf_counter() - started


async def _other_instance(
    oauth: OAuthHarness, *, listen_url: str, poll_interval: float
) -> tuple[AsyncConnectionPool, RevocationList]:
    pool = AsyncConnectionPool(oauth.database_url, min_size=1, max_size=2, open=False)
    await pool.open()
    revocations = RevocationList(pool, listen_url, poll_interval=poll_interval)
    await revocations.start()
    return pool, revocations


async def test_a_revocation_reaches_another_instance_by_notification(oauth: OAuthHarness) -> None:
    # The other instance polls only every 60 s: seeing the revocation sooner proves the
    # notification path.
    pool, other = await _other_instance(oauth, listen_url=oauth.database_url, poll_interval=60)
    try:
        await asyncio.wait_for(other.listening.wait(), 10)
        delays = []
        for i in range(5):
            jti = f"notified-{i}-{time.time_ns()}"
            assert not await other.is_revoked(jti)
            await oauth.server.revocations.revoke(jti, time.time() + 300)
            assert await oauth.server.revocations.is_revoked(jti)  # at once where revoked
            delays.append(await _until_revoked(other, jti, timeout=10))
        print(f"revocation reached the other instance in {max(delays) * 1000:.1f} ms at most")
    finally:
        await other.stop()
        await pool.close()


async def test_polling_catches_up_without_notifications(oauth: OAuthHarness) -> None:
    # The listener of this instance can never connect (nothing listens on that port).
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    pool, other = await _other_instance(oauth, listen_url=dead, poll_interval=0.3)
    try:
        jti = f"polled-{time.time_ns()}"
        await oauth.server.revocations.revoke(jti, time.time() + 300)
        await _until_revoked(other, jti, timeout=10)
        assert not other.listening.is_set()
    finally:
        await other.stop()
        await pool.close()


async def test_a_list_that_cannot_be_read_fails_closed(oauth: OAuthHarness) -> None:
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    pool = AsyncConnectionPool(down, min_size=0, max_size=1, open=False)
    await pool.open(wait=False)
    never_loaded = RevocationList(pool, down, poll_interval=60)
    try:
        await never_loaded.start()
        with pytest.raises(Unavailable) as caught:
            await never_loaded.is_revoked("anything")
        assert caught.value.reason == "REVOCATION_LIST_UNAVAILABLE"
    finally:
        await never_loaded.stop()
        await pool.close()

    # A list that was loaded but has not been refreshed for too long fails closed too.
    now = [1000.0]
    good = AsyncConnectionPool(oauth.database_url, min_size=1, max_size=1, open=False)
    await good.open()
    stale = RevocationList(
        good, oauth.database_url, poll_interval=60, max_staleness=30, clock=lambda: now[0]
    )
    try:
        await stale.reload()
        assert not await stale.is_revoked("anything")
        now[0] += 31
        with pytest.raises(Unavailable):
            await stale.is_revoked("anything")
        await stale.reload()
        assert not await stale.is_revoked("anything")
    finally:
        await good.close()


async def test_expired_revocations_are_pruned(oauth: OAuthHarness) -> None:
    jti = f"long-gone-{time.time_ns()}"
    await oauth.server.revocations.revoke(jti, time.time() - 3600)
    async with oauth.pool.connection() as conn:
        await oauth.server.prune()
        cursor = await conn.execute(
            "SELECT count(*) FROM nexus.oauth_revoked_tokens WHERE jti = %s", (jti,)
        )
        row = await cursor.fetchone()
    assert row == (0,)
    await oauth.server.revocations.reload()
    assert not await oauth.server.revocations.is_revoked(jti)
