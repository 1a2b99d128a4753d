"""Refresh tokens: opaque random strings kept only as SHA-256 hashes, grouped in families
(every token that descends from one grant).

Each token works once. Exchanging it consumes it and makes its successor in one
transaction that holds the token's row lock, so of two concurrent uses exactly one
succeeds. Presenting a token that was already consumed means two parties hold the family
(the legitimate client and a thief, or a client replaying an old token): the whole family
is revoked, with the access tokens issued with it, and the request is refused. Revoked,
expired and other clients' tokens are refused with INVALID_GRANT too; the error never says
which, nor quotes the token."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from datapunk_shared.errors import Unauthenticated
from psycopg_pool import AsyncConnectionPool

from datapunk_nexus.identity.oauth._pg import connection
from datapunk_nexus.identity.oauth.revocation import REVOKE_FAMILY_TOKENS, notify_revoked

__all__ = [
    "REFRESH_PREFIX",
    "RefreshGrant",
    "RefreshTokenStore",
    "invalid_grant",
    "looks_like_refresh_token",
    "refresh_token_hash",
]

REFRESH_PREFIX = "dprt_"
"""Refresh tokens start with this: scanners and people recognize them, and nothing with
it is ever taken for a JWT."""

_TOKEN_BYTES = 32  # 256 random bits


def invalid_grant(
    message: str = "the refresh token is invalid, expired or revoked",
) -> Unauthenticated:
    """INVALID_GRANT: the same answer whatever exactly was wrong with the token."""
    return Unauthenticated(message, reason="INVALID_GRANT")


def refresh_token_hash(token: str) -> bytes:
    """The SHA-256 of a refresh token, the only form of it that is stored."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def looks_like_refresh_token(token: str) -> bool:
    """Whether ``token`` has the shape of one of our refresh tokens."""
    return token.startswith(REFRESH_PREFIX)


def _new_token() -> str:
    return REFRESH_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)


@dataclass(frozen=True, slots=True)
class RefreshGrant:
    """What a refresh-token family grants: the original grant's client, tenant, scopes
    and audience."""

    family_id: uuid.UUID
    client_id: str
    tenant: str
    scopes: tuple[str, ...]
    audience: str


@dataclass(frozen=True, slots=True)
class IssuedAccess:
    """The access token issued together with a refresh token, as the store records it."""

    jti: str
    expires_at: float


Mint = Callable[[RefreshGrant], Awaitable[IssuedAccess]]
"""Makes the access token for a grant, inside the rotation's transaction."""


class RefreshTokenStore:
    """The ``nexus.oauth_refresh_families`` and ``nexus.oauth_refresh_tokens`` tables."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        token_ttl: float,
        family_lifetime: float,
        on_revoked: Callable[[list[tuple[str, float]]], None] = lambda revoked: None,
    ) -> None:
        self._pool = pool
        self._token_ttl = token_ttl
        self._family_lifetime = family_lifetime
        self._on_revoked = on_revoked

    async def start_family(
        self,
        client_id: str,
        tenant: str,
        scopes: Sequence[str],
        audience: str,
        access: IssuedAccess,
    ) -> str:
        """Begin a family for a new grant and return its first refresh token. The access
        token issued with it is recorded in the same transaction."""
        family_id = uuid.uuid4()
        token = _new_token()
        async with connection(self._pool) as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO nexus.oauth_refresh_families"
                " (family_id, client_id, tenant, scopes, audience, expire_time)"
                " VALUES (%s, %s, %s, %s, %s, now() + make_interval(secs => %s))",
                (family_id, client_id, tenant, list(scopes), audience, self._family_lifetime),
            )
            await self._insert_token(conn, family_id, token)
            await record_access(conn, access, client_id, tenant, family_id)
        return token

    async def rotate(
        self, client_id: str, token: str, check: Callable[[RefreshGrant], object], mint: Mint
    ) -> tuple[RefreshGrant, IssuedAccess, str]:
        """Exchange ``token``, presented by ``client_id``, for its successor.

        ``check`` may refuse the request (a scope the grant does not cover) before
        anything changes; ``mint`` makes the access token. Returns the grant, the access
        token and the new refresh token; INVALID_GRANT when the token cannot be used, after
        revoking its family when it was reused or presented by another client."""
        digest = refresh_token_hash(token)
        reused: list[tuple[str, float]] | None = None
        async with connection(self._pool) as conn, conn.transaction():
            row = await _locked_token(conn, digest)
            if row is None:
                raise invalid_grant()
            grant = RefreshGrant(
                family_id=row["family_id"],
                client_id=row["client_id"],
                tenant=row["tenant"],
                scopes=tuple(row["scopes"]),
                audience=row["audience"],
            )
            if row["consumed"] or grant.client_id != client_id:
                # Leave the block normally so that the family's revocation commits.
                reused = await _revoke_family(conn, grant.family_id)
            else:
                if row["family_revoked"] or row["expired"]:
                    raise invalid_grant()
                check(grant)
                access = await mint(grant)
                await conn.execute(
                    "UPDATE nexus.oauth_refresh_tokens SET consume_time = now()"
                    " WHERE token_hash = %s",
                    (digest,),
                )
                successor = _new_token()
                await self._insert_token(conn, grant.family_id, successor)
                await record_access(conn, access, grant.client_id, grant.tenant, grant.family_id)
        if reused is not None:
            self._on_revoked(reused)
            raise invalid_grant()
        return grant, access, successor

    async def revoke(self, token: str, client_id: str | None, tenant: str | None) -> bool:
        """Revoke the family of ``token`` when it belongs to ``client_id`` (or, with
        ``client_id`` None, to ``tenant``). Returns whether a family was revoked; an
        unknown token or someone else's changes nothing."""
        digest = refresh_token_hash(token)
        async with connection(self._pool) as conn, conn.transaction():
            row = await _locked_token(conn, digest)
            if row is None:
                return False
            owner_ok = (
                row["client_id"] == client_id if client_id is not None else row["tenant"] == tenant
            )
            if not owner_ok:
                return False
            revoked = await _revoke_family(conn, row["family_id"])
        self._on_revoked(revoked)
        return True

    async def _insert_token(
        self, conn: psycopg.AsyncConnection[Any], family_id: uuid.UUID, token: str
    ) -> None:
        # A token lives refresh_token_ttl, but never past its family's absolute lifetime.
        await conn.execute(
            "INSERT INTO nexus.oauth_refresh_tokens (token_hash, family_id, expire_time)"
            " SELECT %s, family_id, least(now() + make_interval(secs => %s), expire_time)"
            " FROM nexus.oauth_refresh_families WHERE family_id = %s",
            (refresh_token_hash(token), self._token_ttl, family_id),
        )


async def _revoke_family(
    conn: psycopg.AsyncConnection[Any], family_id: uuid.UUID
) -> list[tuple[str, float]]:
    """Revoke a family and the unexpired access tokens issued with it; returns those."""
    await conn.execute(
        "UPDATE nexus.oauth_refresh_families SET revoke_time = now()"
        " WHERE family_id = %s AND revoke_time IS NULL",
        (family_id,),
    )
    cursor = await conn.execute(REVOKE_FAMILY_TOKENS, (family_id,))
    return await notify_revoked(conn, await cursor.fetchall())


async def record_access(
    conn: psycopg.AsyncConnection[Any],
    access: IssuedAccess,
    client_id: str,
    tenant: str,
    family_id: uuid.UUID | None,
) -> None:
    """Remember an issued access token's jti, so that revoking its family or deleting its
    client can revoke it."""
    await conn.execute(
        "INSERT INTO nexus.oauth_access_tokens (jti, client_id, tenant, family_id, expire_time)"
        " VALUES (%s, %s, %s, %s, to_timestamp(%s))",
        (access.jti, client_id, tenant, family_id, access.expires_at),
    )


async def _locked_token(conn: psycopg.AsyncConnection[Any], digest: bytes) -> dict[str, Any] | None:
    """The token's row and its family, the token row locked until the transaction ends
    (a concurrent use of the same token waits here, then sees it consumed)."""
    cursor = await conn.execute(
        "SELECT f.family_id, f.client_id, f.tenant, f.scopes, f.audience,"
        " t.consume_time IS NOT NULL AS consumed,"
        " f.revoke_time IS NOT NULL AS family_revoked,"
        " (t.expire_time <= now() OR f.expire_time <= now()) AS expired"
        " FROM nexus.oauth_refresh_tokens t"
        " JOIN nexus.oauth_refresh_families f USING (family_id)"
        " WHERE t.token_hash = %s FOR UPDATE OF t",
        (digest,),
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    names = [column.name for column in cursor.description or ()]
    return dict(zip(names, row, strict=True))
