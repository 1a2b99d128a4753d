"""The deny list of revoked access tokens: PostgreSQL is the truth, every instance keeps
it in memory so that checking a token costs a dictionary lookup.

How fast a revocation reaches another instance: the revoking transaction sends a
``NOTIFY`` that every instance's listener applies as soon as it arrives (milliseconds,
measured by ``tests/integration/test_oauth_revocation.py``). Should the listener miss it
(its connection dropped), each instance also reloads the whole list every
``revocation_poll_interval`` seconds, so a revoked token passes elsewhere for at most that
long. When the list could not be reloaded for ``revocation_max_staleness`` seconds,
``is_revoked`` raises UNAVAILABLE: the verifier then refuses tokens rather than risk
believing a revoked one.

Revocation is never undone, so reloads only add entries; an entry leaves memory (and, by
``prune``, the table) once the token it names has expired anyway."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import psycopg
from datapunk_shared.errors import DatapunkError, engine_unavailable
from datapunk_shared.logging import get_logger
from psycopg_pool import AsyncConnectionPool

from datapunk_nexus.identity.oauth._pg import connection

__all__ = [
    "CHANNEL",
    "REVOKE_CLIENT_TOKENS",
    "REVOKE_FAMILY_TOKENS",
    "RevocationList",
    "notify_revoked",
]

log = get_logger("datapunk.nexus.oauth")

CHANNEL = "datapunk_oauth_revoked"
"""The PostgreSQL notification channel; each payload is ``<jti> <exp>``."""

_KEEP_AFTER_EXPIRY = 300.0
"""Seconds an entry outlives its token's ``exp``: more than any verifier's leeway."""

REVOKE_CLIENT_TOKENS = """
INSERT INTO nexus.oauth_revoked_tokens (jti, expire_time)
SELECT jti, expire_time FROM nexus.oauth_access_tokens
WHERE client_id = %s AND expire_time > now()
ON CONFLICT (jti) DO NOTHING
RETURNING jti, expire_time
"""
"""Revoke every unexpired access token issued to a client (with ``notify_revoked``)."""

REVOKE_FAMILY_TOKENS = """
INSERT INTO nexus.oauth_revoked_tokens (jti, expire_time)
SELECT jti, expire_time FROM nexus.oauth_access_tokens
WHERE family_id = %s AND expire_time > now()
ON CONFLICT (jti) DO NOTHING
RETURNING jti, expire_time
"""
"""Revoke every unexpired access token issued with a refresh-token family."""

_REVOKE_ONE = """
INSERT INTO nexus.oauth_revoked_tokens (jti, expire_time) VALUES (%s, to_timestamp(%s))
ON CONFLICT (jti) DO NOTHING
RETURNING jti, expire_time
"""


async def notify_revoked(
    conn: psycopg.AsyncConnection[Any], rows: Iterable[tuple[Any, ...]]
) -> list[tuple[str, float]]:
    """Tell every instance, when the current transaction commits, about the revoked
    ``(jti, expire_time)`` rows; returns them as ``(jti, exp seconds)``."""
    revoked = [(str(jti), _epoch(expires)) for jti, expires, *_ in rows]
    for jti, exp in revoked:
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{jti} {exp:.0f}"))
    return revoked


def _epoch(value: datetime | float) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


class RevocationList:
    """The revoked access tokens, in memory, kept current from PostgreSQL (``conninfo``
    is the database of ``pool``, for the listener's own connection)."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        conninfo: str,
        *,
        poll_interval: float = 5.0,
        max_staleness: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self._conninfo = conninfo
        self._poll_interval = poll_interval
        self._max_staleness = max_staleness
        self._clock = clock
        self._revoked: dict[str, float] = {}
        self._loaded_at: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.listening = asyncio.Event()
        """Set while the listener is subscribed (tests wait for it)."""

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Load the list (if PostgreSQL answers now) and keep it current in the background."""
        with contextlib.suppress(DatapunkError):
            await self.reload()
        self._tasks = [
            asyncio.create_task(self._listen(), name="oauth-revocation-listener"),
            asyncio.create_task(self._poll(), name="oauth-revocation-poller"),
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- the verifier's hook ------------------------------------------------------------

    async def is_revoked(self, jti: str) -> bool:
        """Whether the access token ``jti`` was revoked (``TokenVerifier``'s
        ``is_revoked`` hook). UNAVAILABLE when the list is too old to be trusted."""
        loaded = self._loaded_at
        if loaded is None or self._clock() - loaded > self._max_staleness:
            raise engine_unavailable(
                "postgres",
                "the list of revoked tokens cannot be read now; tokens are refused until it can",
                reason="REVOCATION_LIST_UNAVAILABLE",
                retry_after=self._poll_interval,
            )
        return jti in self._revoked

    # --- changes ------------------------------------------------------------------------

    async def revoke(self, jti: str, expires_at: float) -> None:
        """Put the access token ``jti`` (valid until ``expires_at``) on the deny list of
        every instance."""
        async with connection(self._pool) as conn, conn.transaction():
            cursor = await conn.execute(_REVOKE_ONE, (jti, expires_at))
            revoked = await notify_revoked(conn, await cursor.fetchall())
        self.add(revoked)

    def add(self, revoked: Iterable[tuple[str, float]]) -> None:
        """Record revocations this instance made (without waiting for its own NOTIFY)."""
        for jti, exp in revoked:
            self._revoked[jti] = exp

    async def reload(self) -> None:
        """Read every unexpired revocation from PostgreSQL."""
        started = self._clock()
        async with connection(self._pool) as conn:
            cursor = await conn.execute(
                "SELECT jti, expire_time FROM nexus.oauth_revoked_tokens"
                " WHERE expire_time > now() - make_interval(secs => %s)",
                (_KEEP_AFTER_EXPIRY,),
            )
            rows = await cursor.fetchall()
        self.add((str(jti), _epoch(expires)) for jti, expires in rows)
        horizon = self._clock() - _KEEP_AFTER_EXPIRY
        self._revoked = {jti: exp for jti, exp in self._revoked.items() if exp > horizon}
        self._loaded_at = started

    def _apply(self, payload: str) -> None:
        jti, _, exp = payload.partition(" ")
        try:
            self._revoked[jti] = float(exp)
        except ValueError:
            log.warning("ignored a malformed revocation notification")

    # --- background ---------------------------------------------------------------------

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                await self.reload()
            except DatapunkError as exc:
                log.warning("cannot reload the revoked tokens", error=exc.message)

    async def _listen(self) -> None:
        backoff = 0.2
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, application_name="datapunk-nexus-revocations"
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    # Whatever was revoked while nobody listened is in the table.
                    await self.reload()
                    self.listening.set()
                    backoff = 0.2
                    async for note in conn.notifies():
                        self._apply(note.payload)
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError, DatapunkError) as exc:
                log.warning("revocation listener lost PostgreSQL", error=type(exc).__name__)
            self.listening.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._poll_interval)
