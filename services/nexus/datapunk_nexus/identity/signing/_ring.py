"""The signing key ring: which key signs now, which public keys are published, and
rotation with overlap, shared by every Nexus instance through PostgreSQL
(``nexus.signing_keys``).

A key is ``active`` (it signs, and is published) or ``retired`` (it no longer signs, and
stays published until ``publish_until``, so tokens it signed keep verifying for the
rotation overlap). Changes take a PostgreSQL advisory lock, so two instances rotating at
once make two clean rotations, never two active keys; each instance rereads the active
key every ``refresh_interval`` seconds, and at once when a change is announced.

Every change is announced once committed (``events``, ``datapunk_shared.key_events``):
the services then drop a deleted or retired key and fetch the JWKS again at once,
instead of accepting its tokens until their key cache expires."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from datapunk_shared.db import postgres_errors
from datapunk_shared.errors import (
    DatapunkError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from datapunk_shared.key_events import KeyEventPublisher
from datapunk_shared.logging import get_logger
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from datapunk_nexus.identity.signing._backends import BackendName, KeyBackend, NewKey, StoredKey
from datapunk_nexus.identity.signing._signer import Signer

__all__ = ["KeyState", "SigningKeyInfo", "SigningKeyRing"]

log = get_logger("datapunk.nexus.signing")

KeyState = Literal["active", "retired"]

# One advisory-lock key for "the signing key ring", taken by every change.
_LOCK_KEY = 0x7369676E_6B657973  # "signkeys"
_KID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_COLUMNS = (
    "kid, alg, backend, token_label, token_key_id, public_jwk, state, created_at,"
    " retired_at, publish_until"
)


@dataclass(frozen=True, slots=True)
class SigningKeyInfo:
    """What PostgreSQL records about one signing key (never its private half)."""

    kid: str
    alg: str
    backend: BackendName
    token_label: str | None
    token_key_id: str | None
    public_jwk: dict[str, str]
    state: KeyState
    created_at: datetime
    retired_at: datetime | None
    publish_until: datetime | None

    @property
    def stored(self) -> StoredKey:
        return StoredKey(self.kid, self.backend, self.token_label, self.token_key_id)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SigningKeyInfo:
        return cls(
            kid=row["kid"],
            alg=row["alg"],
            backend=row["backend"],
            token_label=row["token_label"],
            token_key_id=row["token_key_id"],
            public_jwk={str(k): str(v) for k, v in row["public_jwk"].items()},
            state=row["state"],
            created_at=row["created_at"],
            retired_at=row["retired_at"],
            publish_until=row["publish_until"],
        )


class SigningKeyRing:
    """Nexus's signing keys. ``active_signer()`` is the key to sign with now; ``jwks()``
    the document verifiers fetch; ``rotate``, ``retire``, ``delete`` and ``prune``
    manage the keys. Call ``start()`` once before use (``build_key_ring`` does)."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        backend: KeyBackend,
        *,
        overlap: float,
        refresh_interval: float = 10.0,
        pool_timeout: float = 5.0,
        events: KeyEventPublisher | None = None,
    ) -> None:
        self._pool = pool
        self._events = events
        self._backend = backend
        self._overlap = overlap
        self._refresh_interval = refresh_interval
        self._pool_timeout = pool_timeout
        self._signers: dict[str, Signer] = {}
        self._active_kid: str | None = None
        self._last_jwks: dict[str, list[dict[str, str]]] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._announcing: set[asyncio.Task[bool]] = set()

    @property
    def backend(self) -> BackendName:
        return self._backend.name

    # --- signing ----------------------------------------------------------------------

    def active_signer(self) -> Signer:
        """The key to sign with now. FailedPrecondition (``SIGNING_KEY_NOT_HELD``) when
        the active key is one this process cannot use (a software key made by another
        instance)."""
        kid = self._active_kid
        signer = self._signers.get(kid) if kid is not None else None
        if signer is None:
            raise FailedPrecondition(
                f"this instance cannot sign with the active signing key {kid}: it is a "
                f"{self.backend} key it does not hold (software keys are not shared "
                "between instances; use the pkcs11 backend or one PEM secret for all)",
                reason="SIGNING_KEY_NOT_HELD",
                metadata={"kid": kid or ""},
            )
        return signer

    async def start(self) -> SigningKeyInfo:
        """Make sure a key this process can sign with is active: keep the active key if
        it can, else (first start, another backend configured, the configured PEM key
        changed, a software key from a process that is gone) make a new one active and
        retire the old one with the usual overlap."""
        configured = await self._backend.configured()
        activated: SigningKeyInfo | None = None
        async with self._changing() as conn:
            active = await _active_row(conn)
            if active is not None and (configured is None or configured.signer.kid == active.kid):
                signer = await self._backend.signer(active.stored)
                if signer is not None:
                    self._remember(active.kid, signer)
                    return active
                log.warning(
                    "signing_key_replaced_at_start",
                    kid=active.kid,
                    backend=active.backend,
                    why="this process cannot sign with the active key",
                )
            if configured is not None:
                activated = await self._activate(conn, configured)
        if activated is not None:
            self._announce("rotated")
            return activated
        return await self.rotate()

    async def refresh(self) -> None:
        """Reread which key is active (another instance may have rotated) and forget
        keys that were deleted."""
        async with self._connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(f"SELECT {_COLUMNS} FROM nexus.signing_keys")
            rows = [SigningKeyInfo.from_row(row) for row in await cursor.fetchall()]
        for kid in set(self._signers) - {row.kid for row in rows}:
            del self._signers[kid]
        active = next((row for row in rows if row.state == "active"), None)
        if active is None:
            self._active_kid = None
            return
        if active.kid not in self._signers:
            signer = await self._backend.signer(active.stored)
            if signer is not None:
                self._signers[active.kid] = signer
        self._active_kid = active.kid

    async def keys_changed(self, issuer: str | None, removed: Collection[str]) -> None:
        """A key change was announced (``datapunk_shared.key_events``), perhaps by another
        instance: reread the active key now rather than at the next periodic refresh, so
        this instance stops signing with a key another one retired or deleted at once. A
        failed read keeps the keys known so far and is logged; the periodic refresh
        tries again."""
        await self._try_refresh()

    def start_refreshing(self) -> None:
        """Refresh every ``refresh_interval`` seconds in the background until
        ``aclose``; a failed refresh keeps the keys known so far and is logged."""
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_interval)
            await self._try_refresh()

    async def _try_refresh(self) -> None:
        """``refresh``; when it fails, the keys known so far stay and the failure is
        logged."""
        try:
            await self.refresh()
        except DatapunkError as exc:
            log.warning("signing_keys_refresh_failed", reason=exc.reason, error=exc.message)

    # --- publishing -------------------------------------------------------------------

    async def keys(self) -> list[SigningKeyInfo]:
        """Every recorded key, newest first."""
        async with self._connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                f"SELECT {_COLUMNS} FROM nexus.signing_keys ORDER BY created_at DESC, kid"
            )
            return [SigningKeyInfo.from_row(row) for row in await cursor.fetchall()]

    async def published_keys(self) -> list[dict[str, str]]:
        """The public JWKs verifiers must accept now: the active key and every retired
        key still in its overlap, newest first."""
        async with self._connection() as conn:
            cursor = await conn.execute(
                "SELECT public_jwk FROM nexus.signing_keys"
                " WHERE state = 'active' OR publish_until > now()"
                " ORDER BY created_at DESC, kid"
            )
            return [{str(k): str(v) for k, v in row[0].items()} for row in await cursor.fetchall()]

    async def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWKS document (RFC 7517) of ``published_keys``. While PostgreSQL cannot
        answer, the last document read is served (it is public and changes rarely)."""
        try:
            document = {"keys": await self.published_keys()}
        except DatapunkError:
            if self._last_jwks is None:
                raise
            log.warning("jwks_served_from_memory", why="PostgreSQL is unavailable")
            return self._last_jwks
        self._last_jwks = document
        return document

    # --- changes ----------------------------------------------------------------------

    async def rotate(self) -> SigningKeyInfo:
        """Make a new key active; the key it replaces is retired and stays published for
        the rotation overlap."""
        new = await self._backend.generate()
        try:
            async with self._changing() as conn:
                activated = await self._activate(conn, new)
        except BaseException:
            # Not recorded, so nobody would ever find it again: destroy it.
            with contextlib.suppress(DatapunkError):
                await self._backend.destroy(
                    StoredKey(new.signer.kid, self._backend.name, new.token_label, new.token_key_id)
                )
            raise
        self._announce("rotated")
        return activated

    async def retire(self, kid: str) -> SigningKeyInfo:
        """End a retired key's overlap now: it leaves the JWKS at once and tokens it
        signed stop verifying. The active key cannot be retired (rotate first)."""
        async with self._changing() as conn:
            key = await self._retired_key(conn, kid)
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                "UPDATE nexus.signing_keys SET publish_until = least(publish_until, now())"
                f" WHERE kid = %s RETURNING {_COLUMNS}",
                (key.kid,),
            )
            row = await cursor.fetchone()
            assert row is not None  # locked by _changing; the key was just read
        log.info("signing_key_retired", kid=kid)
        self._announce("retired", [kid])
        return SigningKeyInfo.from_row(row)

    async def delete(self, kid: str) -> None:
        """Remove a retired key everywhere: from the JWKS, from PostgreSQL and from the
        token. The active key cannot be deleted (rotate first)."""
        async with self._changing() as conn:
            key = await self._retired_key(conn, kid)
            await conn.execute("DELETE FROM nexus.signing_keys WHERE kid = %s", (kid,))
            # Destroyed before the commit: if the token refuses, the row stays.
            await self._backend.destroy(key.stored)
        self._signers.pop(kid, None)
        log.info("signing_key_deleted", kid=kid)
        self._announce("deleted", [kid])

    async def prune(self) -> list[str]:
        """Delete every retired key whose overlap has ended; returns their kids."""
        async with self._changing() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                f"DELETE FROM nexus.signing_keys WHERE state = 'retired'"
                f" AND publish_until <= now() RETURNING {_COLUMNS}"
            )
            gone = [SigningKeyInfo.from_row(row) for row in await cursor.fetchall()]
            for key in gone:
                await self._backend.destroy(key.stored)
        for key in gone:
            self._signers.pop(key.kid, None)
            log.info("signing_key_deleted", kid=key.kid, why="overlap ended")
        if gone:
            self._announce("deleted", [key.kid for key in gone])
        return [key.kid for key in gone]

    async def aclose(self) -> None:
        """Stop refreshing and let go of the token."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        self._signers.clear()
        self._active_kid = None
        try:
            await self._backend.aclose()
        finally:
            if self._events is not None:
                # Announcements under way finish (each bounded by its timeout) first.
                await asyncio.gather(*self._announcing, return_exceptions=True)
                await self._events.aclose()

    # --- internals --------------------------------------------------------------------

    def _announce(self, change: str, removed: list[str] | None = None) -> None:
        """Tell every verifier about a committed change, in the background: a slow Redis
        holds up neither the caller nor this instance's own refusal of a removed key. A
        failure is logged, never raised: the change stands, and the verifiers' key
        caches bound it."""
        if self._events is not None:
            task = asyncio.create_task(self._events.publish(change, removed or ()))
            self._announcing.add(task)
            task.add_done_callback(self._announcing.discard)

    async def _activate(self, conn: psycopg.AsyncConnection[Any], new: NewKey) -> SigningKeyInfo:
        """Within ``_changing``: retire the active key and make ``new`` active."""
        signer = new.signer
        await conn.execute(
            "UPDATE nexus.signing_keys SET state = 'retired', retired_at = now(),"
            " publish_until = now() + make_interval(secs => %s)"
            " WHERE state = 'active' AND kid <> %s",
            (self._overlap, signer.kid),
        )
        cursor = conn.cursor(row_factory=dict_row)
        # A configured key that was active before comes back with its history.
        await cursor.execute(
            "INSERT INTO nexus.signing_keys (kid, alg, backend, token_label, token_key_id,"
            " public_jwk, state) VALUES (%s, %s, %s, %s, %s, %s, 'active')"
            " ON CONFLICT (kid) DO UPDATE SET state = 'active', retired_at = NULL,"
            f" publish_until = NULL RETURNING {_COLUMNS}",
            (
                signer.kid,
                signer.alg,
                self._backend.name,
                new.token_label,
                new.token_key_id,
                Jsonb(signer.public_jwk()),
            ),
        )
        row = await cursor.fetchone()
        assert row is not None  # INSERT ... RETURNING always returns the row
        info = SigningKeyInfo.from_row(row)
        self._remember(info.kid, signer)
        log.info("signing_key_activated", kid=info.kid, backend=info.backend)
        return info

    def _remember(self, kid: str, signer: Signer) -> None:
        self._signers[kid] = signer
        self._active_kid = kid

    async def _retired_key(self, conn: psycopg.AsyncConnection[Any], kid: str) -> SigningKeyInfo:
        if not _KID.match(kid):
            raise InvalidArgument(
                "a signing key id is 1 to 128 base64url characters",
                reason="INVALID_KID",
            )
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(f"SELECT {_COLUMNS} FROM nexus.signing_keys WHERE kid = %s", (kid,))
        row = await cursor.fetchone()
        if row is None:
            raise NotFound(
                f"no signing key has kid {kid}",
                reason="SIGNING_KEY_NOT_FOUND",
                metadata={"kid": kid},
            )
        key = SigningKeyInfo.from_row(row)
        if key.state == "active":
            raise FailedPrecondition(
                f"signing key {kid} is the active key; rotate first",
                reason="SIGNING_KEY_ACTIVE",
                metadata={"kid": kid},
            )
        return key

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        with postgres_errors("the signing key store"):
            async with self._pool.connection(timeout=self._pool_timeout) as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def _changing(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A transaction holding the ring's advisory lock."""
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            yield conn


async def _active_row(conn: psycopg.AsyncConnection[Any]) -> SigningKeyInfo | None:
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(f"SELECT {_COLUMNS} FROM nexus.signing_keys WHERE state = 'active'")
    row = await cursor.fetchone()
    return None if row is None else SigningKeyInfo.from_row(row)
