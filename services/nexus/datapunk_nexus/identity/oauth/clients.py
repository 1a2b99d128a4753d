"""OAuth clients in PostgreSQL: one row per client, in its tenant, with the hash of its
secret. Every call names the tenant it acts in; a client of another tenant is not found."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from datapunk_shared.errors import AlreadyExists, NotFound
from datapunk_shared.paging import decode_page_token, encode_page_token, invalid_page_token
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from datapunk_nexus.identity.oauth._pg import connection
from datapunk_nexus.identity.oauth.revocation import REVOKE_CLIENT_TOKENS, notify_revoked

__all__ = ["ClientSpec", "ClientStore", "OAuthClient", "client_name"]

DEFAULT_PAGE_SIZE = 100


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """What an administrator says about a client."""

    client_id: str
    display_name: str = ""
    roles: tuple[str, ...] = ()
    allowed_scopes: tuple[str, ...] = ()
    allowed_audiences: tuple[str, ...] = ()
    allow_refresh_tokens: bool = False


@dataclass(frozen=True, slots=True)
class OAuthClient:
    """A stored client (never its secret or the secret's hash)."""

    client_id: str
    tenant: str
    display_name: str
    roles: tuple[str, ...]
    allowed_scopes: tuple[str, ...]
    allowed_audiences: tuple[str, ...]
    allow_refresh_tokens: bool
    create_time: datetime
    secret_create_time: datetime

    @property
    def subject(self) -> str:
        """The ``sub`` of the client's tokens and the subject of its identity."""
        return f"client:{self.client_id}"


def client_name(client_id: str) -> str:
    """The resource name of a client."""
    return f"clients/{client_id}"


def _not_found(client_id: str) -> NotFound:
    return NotFound(
        f"client {client_name(client_id)} does not exist",
        reason="CLIENT_NOT_FOUND",
        metadata={"client": client_name(client_id)},
    )


_COLUMNS = (
    "client_id, tenant, display_name, roles, allowed_scopes, allowed_audiences,"
    " allow_refresh_tokens, create_time, secret_create_time"
)


def _client(row: dict[str, Any]) -> OAuthClient:
    return OAuthClient(
        client_id=row["client_id"],
        tenant=row["tenant"],
        display_name=row["display_name"],
        roles=tuple(row["roles"]),
        allowed_scopes=tuple(row["allowed_scopes"]),
        allowed_audiences=tuple(row["allowed_audiences"]),
        allow_refresh_tokens=row["allow_refresh_tokens"],
        create_time=row["create_time"],
        secret_create_time=row["secret_create_time"],
    )


class ClientStore:
    """The ``nexus.oauth_clients`` table."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def create(self, tenant: str, spec: ClientSpec, secret_hash: str) -> OAuthClient:
        """Store a new client; ALREADY_EXISTS when its id is taken (in any tenant)."""
        async with connection(self._pool) as conn:
            try:
                cursor = conn.cursor(row_factory=dict_row)
                await cursor.execute(
                    "INSERT INTO nexus.oauth_clients (client_id, tenant, display_name, roles,"
                    " allowed_scopes, allowed_audiences, allow_refresh_tokens, secret_hash)"
                    f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
                    (
                        spec.client_id,
                        tenant,
                        spec.display_name,
                        list(spec.roles),
                        list(spec.allowed_scopes),
                        list(spec.allowed_audiences),
                        spec.allow_refresh_tokens,
                        secret_hash,
                    ),
                )
                row = await cursor.fetchone()
            except pg_errors.UniqueViolation:
                raise AlreadyExists(
                    f"client {client_name(spec.client_id)} exists already",
                    reason="CLIENT_ALREADY_EXISTS",
                    metadata={"client": client_name(spec.client_id)},
                ) from None
        assert row is not None
        return _client(row)

    async def get(self, tenant: str, client_id: str) -> OAuthClient:
        """The client ``client_id`` of ``tenant``; NOT_FOUND otherwise."""
        async with connection(self._pool) as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                f"SELECT {_COLUMNS} FROM nexus.oauth_clients WHERE client_id = %s AND tenant = %s",
                (client_id, tenant),
            )
            row = await cursor.fetchone()
        if row is None:
            raise _not_found(client_id)
        return _client(row)

    async def list_clients(
        self, tenant: str, page_size: int, page_token: str
    ) -> tuple[list[OAuthClient], str]:
        """One page of ``tenant``'s clients in client id order, and the next page's
        token (empty after the last page)."""
        size = page_size or DEFAULT_PAGE_SIZE
        after = ""
        if page_token:
            try:
                after = decode_page_token(page_token)
                if not after or encode_page_token(after) != page_token:
                    raise ValueError("not a token this list made")
            except ValueError:
                raise invalid_page_token(
                    "the page token was not issued by ListClients", "not a ListClients token"
                ) from None
        async with connection(self._pool) as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                f"SELECT {_COLUMNS} FROM nexus.oauth_clients"
                " WHERE tenant = %s AND client_id > %s ORDER BY client_id LIMIT %s",
                (tenant, after, size + 1),
            )
            rows = await cursor.fetchall()
        clients = [_client(row) for row in rows[:size]]
        next_token = encode_page_token(clients[-1].client_id) if len(rows) > size else ""
        return clients, next_token

    async def delete(self, tenant: str, client_id: str) -> list[tuple[str, float]]:
        """Delete a client with its refresh-token families, and revoke its unexpired
        access tokens, in one transaction; returns those ``(jti, exp)``. NOT_FOUND when
        ``tenant`` has no such client."""
        async with connection(self._pool) as conn, conn.transaction():
            cursor = await conn.execute(
                "DELETE FROM nexus.oauth_clients WHERE client_id = %s AND tenant = %s",
                (client_id, tenant),
            )
            if cursor.rowcount == 0:
                raise _not_found(client_id)
            cursor = await conn.execute(REVOKE_CLIENT_TOKENS, (client_id,))
            revoked = await notify_revoked(conn, await cursor.fetchall())
        return revoked

    async def set_secret(self, tenant: str, client_id: str, secret_hash: str) -> OAuthClient:
        """Replace a client's secret hash (rotation); NOT_FOUND for an unknown client."""
        async with connection(self._pool) as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                "UPDATE nexus.oauth_clients SET secret_hash = %s, secret_create_time = now()"
                f" WHERE client_id = %s AND tenant = %s RETURNING {_COLUMNS}",
                (secret_hash, client_id, tenant),
            )
            row = await cursor.fetchone()
        if row is None:
            raise _not_found(client_id)
        return _client(row)

    async def credentials(self, client_id: str) -> tuple[OAuthClient, str] | None:
        """The client ``client_id`` in whatever tenant, with its secret hash, for client
        authentication; ``None`` when there is none."""
        async with connection(self._pool) as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                f"SELECT {_COLUMNS}, secret_hash FROM nexus.oauth_clients WHERE client_id = %s",
                (client_id,),
            )
            row = await cursor.fetchone()
        return None if row is None else (_client(row), row["secret_hash"])

    async def rehash_secret(self, client_id: str, old_hash: str, new_hash: str) -> None:
        """Store ``new_hash`` (same secret, current parameters) unless the secret was
        rotated meanwhile."""
        async with connection(self._pool) as conn:
            await conn.execute(
                "UPDATE nexus.oauth_clients SET secret_hash = %s"
                " WHERE client_id = %s AND secret_hash = %s",
                (new_hash, client_id, old_hash),
            )
