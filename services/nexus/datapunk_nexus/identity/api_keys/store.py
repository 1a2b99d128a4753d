"""API keys in PostgreSQL (``nexus.api_keys``, migration 0004).

Every statement is a single one, run in autocommit mode: each is atomic on its own and
needs no BEGIN/COMMIT round trips. Reads and changes of a tenant's keys always name the
tenant, so a key of another tenant is indistinguishable from a missing one; only
``lookup`` (authentication) goes by id alone, because a presented key decides its own
tenant."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, LiteralString

import psycopg
from datapunk_shared.db import postgres_errors
from datapunk_shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
)
from datapunk_shared.paging import decode_page_token, encode_page_token, invalid_page_token
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool

from datapunk_nexus.identity.api_keys.domain import (
    ApiKey,
    ApiKeyPage,
    KeyState,
    StoredKey,
    api_key_not_found,
)

__all__ = ["DEFAULT_PAGE_SIZE", "PostgresApiKeyStore"]

DEFAULT_PAGE_SIZE = 100

_COLUMNS: LiteralString = (
    "id, tenant, name, roles, scopes, created_by, create_time, expire_time, revoke_time,"
    " rotate_time, last_used_time"
)
_SECRET_COLUMNS: LiteralString = "secret_hash, previous_secret_hash, previous_secret_expire_time"

# Static SQL per state filter (a ``now`` parameter is bound with each).
_STATE_FILTERS: dict[KeyState | None, LiteralString] = {
    None: "TRUE",
    KeyState.ACTIVE: "revoke_time IS NULL AND (expire_time IS NULL OR expire_time > %(now)s)",
    KeyState.REVOKED: "revoke_time IS NOT NULL",
    KeyState.EXPIRED: "revoke_time IS NULL AND expire_time <= %(now)s",
}


def _api_key(row: Sequence[Any]) -> ApiKey:
    return ApiKey(
        id=row[0],
        tenant=row[1],
        name=row[2],
        roles=tuple(row[3]),
        scopes=tuple(row[4]),
        created_by=row[5],
        create_time=row[6],
        expire_time=row[7],
        revoke_time=row[8],
        rotate_time=row[9],
        last_used_time=row[10],
    )


def _micros(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _from_micros(micros: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)


def _encode_token(state: KeyState | None, last: ApiKey) -> str:
    position = [_micros(last.create_time), last.id]
    text = json.dumps({"s": state.value if state else "", "p": position}, separators=(",", ":"))
    return encode_page_token(text)


def _decode_token(token: str, state: KeyState | None) -> tuple[datetime, str] | None:
    """The (create_time, id) the page starts after; None for the first page."""
    if not token:
        return None
    try:
        value = json.loads(decode_page_token(token))
    except ValueError:
        raise invalid_page_token(
            "invalid page_token: not a token this service issued",
            "not a token this service issued",
        ) from None
    position = value.get("p") if isinstance(value, dict) else None
    if (
        not isinstance(position, list)
        or len(position) != 2
        or type(position[0]) is not int
        or not isinstance(position[1], str)
    ):
        raise invalid_page_token(
            "invalid page_token: not a token this service issued",
            "not a token this service issued",
        )
    if value.get("s") != (state.value if state else ""):
        raise invalid_page_token(
            "invalid page_token: the token belongs to a list with another state filter",
            "the token belongs to a list with another state filter; repeat its state",
        )
    try:
        return _from_micros(position[0]), position[1]
    except OverflowError:
        raise invalid_page_token(
            "invalid page_token: not a token this service issued",
            "not a token this service issued",
        ) from None


class PostgresApiKeyStore:
    """The ``nexus.api_keys`` table behind a small interface. Hashes are computed by the
    caller (``SecretHasher``); this class never sees a secret."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        pool_timeout: float = 2.0,
        max_page_size: int = 1000,
    ) -> None:
        self._pool = pool
        self._pool_timeout = pool_timeout
        self._max_page_size = max_page_size

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection in autocommit mode while it is lent (every statement here
        is a single one); the pool's own mode is restored before it goes back."""
        async with self._pool.connection(timeout=self._pool_timeout) as conn:
            await conn.set_autocommit(True)
            try:
                yield conn
            finally:
                await conn.set_autocommit(False)

    async def _one(self, query: LiteralString, params: Any) -> tuple[Any, ...] | None:
        with postgres_errors("the API-key store"):
            async with self._connection() as conn:
                cursor = await conn.execute(query, params)
                return await cursor.fetchone()

    async def insert(self, key: ApiKey, secret_hash: bytes) -> None:
        """Store a new key; AlreadyExists (``API_KEY_ID_TAKEN``) when its id is taken."""
        try:
            await self._one(
                "INSERT INTO nexus.api_keys (id, tenant, name, secret_hash, roles, scopes,"
                " created_by, create_time, expire_time)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (
                    key.id,
                    key.tenant,
                    key.name,
                    secret_hash,
                    list(key.roles),
                    list(key.scopes),
                    key.created_by,
                    key.create_time,
                    key.expire_time,
                ),
            )
        except pg_errors.UniqueViolation:
            raise AlreadyExists(
                "an API key with this id exists", reason="API_KEY_ID_TAKEN"
            ) from None

    async def get(self, tenant: str, key_id: str) -> ApiKey:
        """The tenant's key ``key_id``; NotFound when the tenant has no such key."""
        row = await self._one(
            f"SELECT {_COLUMNS} FROM nexus.api_keys WHERE tenant = %s AND id = %s",
            (tenant, key_id),
        )
        if row is None:
            raise api_key_not_found(key_id)
        return _api_key(row)

    async def list(
        self,
        tenant: str,
        *,
        state: KeyState | None,
        page_size: int,
        page_token: str,
        now: datetime,
    ) -> ApiKeyPage:
        """One page of the tenant's keys in ``state`` (every state: None), newest first."""
        if page_size < 0:
            raise InvalidArgument("page_size must not be negative", reason="INVALID_PAGE_SIZE")
        limit = min(page_size or DEFAULT_PAGE_SIZE, self._max_page_size)
        after = _decode_token(page_token, state)
        query: LiteralString = (
            f"SELECT {_COLUMNS} FROM nexus.api_keys WHERE tenant = %(tenant)s"
            f" AND {_STATE_FILTERS[state]}"
            " AND (%(after_time)s::timestamptz IS NULL"
            "      OR (create_time, id) < (%(after_time)s, %(after_id)s::text))"
            " ORDER BY create_time DESC, id DESC LIMIT %(limit)s"
        )
        params = {
            "tenant": tenant,
            "now": now,
            "after_time": after[0] if after else None,
            "after_id": after[1] if after else None,
            "limit": limit + 1,
        }
        with postgres_errors("the API-key store"):
            async with self._connection() as conn:
                cursor = await conn.execute(query, params)
                rows = await cursor.fetchall()
        items = [_api_key(row) for row in rows[:limit]]
        more = len(rows) > limit
        return ApiKeyPage(items, _encode_token(state, items[-1]) if more else "")

    async def revoke(self, tenant: str, key_id: str, now: datetime) -> ApiKey:
        """Revoke the tenant's key, every secret of it (again: unchanged)."""
        row = await self._one(
            "UPDATE nexus.api_keys SET revoke_time = coalesce(revoke_time, %s)"
            f" WHERE tenant = %s AND id = %s RETURNING {_COLUMNS}",
            (now, tenant, key_id),
        )
        if row is None:
            raise api_key_not_found(key_id)
        return _api_key(row)

    async def rotate(
        self,
        tenant: str,
        key_id: str,
        secret_hash: bytes,
        *,
        now: datetime,
        previous_until: datetime | None,
    ) -> ApiKey:
        """Give the tenant's usable key a new secret hash. The replaced one keeps working
        until ``previous_until`` or the key's expiry, whichever comes first (None: it
        stops at once); an older one stops at once.
        NotFound for a key the tenant lacks, FailedPrecondition for a revoked or expired
        one."""
        row = await self._one(
            "UPDATE nexus.api_keys SET"
            " previous_secret_hash = CASE WHEN %(until)s::timestamptz IS NULL THEN NULL"
            "                             ELSE secret_hash END,"
            " previous_secret_expire_time = CASE WHEN %(until)s::timestamptz IS NULL THEN NULL"
            "                                    ELSE least(%(until)s, expire_time) END,"
            " secret_hash = %(hash)s, rotate_time = %(now)s"
            " WHERE tenant = %(tenant)s AND id = %(id)s AND revoke_time IS NULL"
            " AND (expire_time IS NULL OR expire_time > %(now)s)"
            f" RETURNING {_COLUMNS}",
            {
                "until": previous_until,
                "hash": secret_hash,
                "now": now,
                "tenant": tenant,
                "id": key_id,
            },
        )
        if row is not None:
            return _api_key(row)
        key = await self.get(tenant, key_id)  # NotFound when the tenant lacks it
        state = key.state(now)
        raise FailedPrecondition(
            f"API key {key_id} is {state.value}; it cannot be rotated",
            reason="API_KEY_REVOKED" if state is KeyState.REVOKED else "API_KEY_EXPIRED",
            metadata={"api_key": key_id},
        )

    async def lookup(self, key_id: str) -> StoredKey | None:
        """The key ``key_id`` with its hashes, whatever its tenant; None when unknown."""
        row = await self._one(
            f"SELECT {_COLUMNS}, {_SECRET_COLUMNS} FROM nexus.api_keys WHERE id = %s",
            (key_id,),
        )
        if row is None:
            return None
        return StoredKey(
            api_key=_api_key(row),
            secret_hash=bytes(row[11]),
            previous_secret_hash=bytes(row[12]) if row[12] is not None else None,
            previous_secret_expire_time=row[13],
        )

    async def touch(self, key_id: str, now: datetime, interval: timedelta) -> bool:
        """Record that the key was used at ``now``, unless a use within ``interval`` is
        recorded already (by any instance): at most one row write per key per interval.
        Returns whether it wrote."""
        row = await self._one(
            "UPDATE nexus.api_keys SET last_used_time = %(now)s WHERE id = %(id)s"
            " AND (last_used_time IS NULL OR last_used_time <= %(now)s - %(interval)s)"
            " RETURNING id",
            {"now": now, "id": key_id, "interval": interval},
        )
        return row is not None
