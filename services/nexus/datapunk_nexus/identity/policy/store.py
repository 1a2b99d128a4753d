"""Roles, role bindings, resource labels and policy versions in PostgreSQL (migrations
0005 and 0007), through the Nexus's psycopg 3 pool.

Every statement names the tenant; there is no way to read or change anything without
one. Every change bumps the tenant's row in ``nexus.policy_versions`` first, in the same
transaction: the row lock serializes concurrent changes of one tenant, and the version
tells every Nexus instance that its copy in memory is out of date."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from datapunk_shared.db import postgres_errors
from datapunk_shared.errors import NotFound
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from datapunk_nexus.identity.policy.rules import Binding, Label, Permission, Role

__all__ = ["PolicySource", "PolicyStore", "TenantSnapshot", "label_not_found", "role_not_found"]


@dataclass(frozen=True, slots=True)
class TenantSnapshot:
    """A tenant's stored roles, bindings and labels at one version (0: never changed)."""

    tenant: str
    version: int
    roles: tuple[Role, ...]
    bindings: tuple[Binding, ...]
    labels: tuple[Label, ...] = ()


class PolicySource(Protocol):
    """Where the authorizer reads tenants' policies from (``PolicyStore``)."""

    async def snapshot(self, tenant: str) -> TenantSnapshot: ...

    async def versions(self, tenants: Sequence[str]) -> dict[str, int]: ...


def _role(row: Sequence[Any]) -> Role:
    role_id, description, permissions, create_time, update_time = row
    return Role(
        role_id=role_id,
        permissions=tuple(Permission.from_json(p) for p in permissions),
        description=description,
        create_time=create_time,
        update_time=update_time,
    )


_ROLE_COLUMNS = "role_id, description, permissions, create_time, update_time"
_LABEL_COLUMNS = "resource, classification, update_time"


class PolicyStore:
    """Reads and changes the policy of one tenant at a time."""

    def __init__(self, pool: AsyncConnectionPool, *, pool_timeout: float = 5.0) -> None:
        self._pool = pool
        self._pool_timeout = pool_timeout

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        with postgres_errors("the policy store"):
            async with self._pool.connection(timeout=self._pool_timeout) as conn:
                conn.row_factory = tuple_row
                yield conn

    @contextlib.asynccontextmanager
    async def _change(self, tenant: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A transaction that changes ``tenant``'s policy, its version bumped first."""
        async with self._connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO nexus.policy_versions (tenant, version) VALUES (%s, 1)"
                " ON CONFLICT (tenant) DO UPDATE"
                " SET version = nexus.policy_versions.version + 1",
                (tenant,),
            )
            yield conn

    async def snapshot(self, tenant: str) -> TenantSnapshot:
        """Everything stored for ``tenant``, consistent with the version it reports."""
        async with self._connection() as conn, conn.transaction():
            # One snapshot for the version and the rows, so they always agree.
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cursor = await conn.execute(
                "SELECT version FROM nexus.policy_versions WHERE tenant = %s", (tenant,)
            )
            row = await cursor.fetchone()
            cursor = await conn.execute(
                f"SELECT {_ROLE_COLUMNS} FROM nexus.policy_roles WHERE tenant = %s", (tenant,)
            )
            roles = tuple(_role(r) for r in await cursor.fetchall())
            cursor = await conn.execute(
                "SELECT principal, role_id, create_time FROM nexus.policy_bindings"
                " WHERE tenant = %s",
                (tenant,),
            )
            bindings = tuple(Binding(*r) for r in await cursor.fetchall())
            cursor = await conn.execute(
                f"SELECT {_LABEL_COLUMNS} FROM nexus.policy_labels WHERE tenant = %s", (tenant,)
            )
            labels = tuple(Label(*r) for r in await cursor.fetchall())
        return TenantSnapshot(tenant, int(row[0]) if row else 0, roles, bindings, labels)

    async def versions(self, tenants: Sequence[str]) -> dict[str, int]:
        """The current version of each of ``tenants`` (0 for one never changed)."""
        async with self._connection() as conn:
            cursor = await conn.execute(
                "SELECT tenant, version FROM nexus.policy_versions WHERE tenant = ANY(%s)",
                (list(tenants),),
            )
            found = {str(t): int(v) for t, v in await cursor.fetchall()}
        return {tenant: found.get(tenant, 0) for tenant in tenants}

    async def put_role(self, tenant: str, role: Role) -> tuple[Role, bool]:
        """Create or replace ``role``; returns it as stored and whether it was new."""
        permissions = Jsonb([p.to_json() for p in role.permissions])
        async with self._change(tenant) as conn:
            cursor = await conn.execute(
                "INSERT INTO nexus.policy_roles (tenant, role_id, description, permissions)"
                " VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (tenant, role_id) DO UPDATE SET"
                " description = EXCLUDED.description, permissions = EXCLUDED.permissions,"
                " update_time = now()"
                f" RETURNING {_ROLE_COLUMNS}, (xmax = 0) AS created",
                (tenant, role.role_id, role.description, permissions),
            )
            row = await cursor.fetchone()
        assert row is not None
        return _role(row[:5]), bool(row[5])

    async def get_role(self, tenant: str, role_id: str) -> Role | None:
        async with self._connection() as conn:
            cursor = await conn.execute(
                f"SELECT {_ROLE_COLUMNS} FROM nexus.policy_roles"
                " WHERE tenant = %s AND role_id = %s",
                (tenant, role_id),
            )
            row = await cursor.fetchone()
        return _role(row) if row else None

    async def list_roles(self, tenant: str, *, after: str | None, limit: int) -> list[Role]:
        """Up to ``limit`` stored roles of ``tenant`` named after ``after``, by name."""
        async with self._connection() as conn:
            cursor = await conn.execute(
                f"SELECT {_ROLE_COLUMNS} FROM nexus.policy_roles"
                " WHERE tenant = %s AND role_id > %s ORDER BY role_id LIMIT %s",
                (tenant, after or "", limit),
            )
            return [_role(r) for r in await cursor.fetchall()]

    async def delete_role(self, tenant: str, role_id: str) -> int:
        """Delete a stored role and its bindings; returns how many bindings went with it.
        NotFound (ROLE_NOT_FOUND) when the tenant has no such stored role."""
        async with self._change(tenant) as conn:
            cursor = await conn.execute(
                "DELETE FROM nexus.policy_roles WHERE tenant = %s AND role_id = %s",
                (tenant, role_id),
            )
            if cursor.rowcount == 0:
                raise role_not_found(role_id)
            cursor = await conn.execute(
                "DELETE FROM nexus.policy_bindings WHERE tenant = %s AND role_id = %s",
                (tenant, role_id),
            )
            return cursor.rowcount

    async def grant(
        self, tenant: str, principal: str, role_id: str, *, builtin: bool
    ) -> tuple[Binding, bool]:
        """Bind ``role_id`` (a stored role, or a built-in one when ``builtin``) to
        ``principal``; returns the binding and whether it is new. NotFound
        (ROLE_NOT_FOUND) when the role is not stored and not built in."""
        async with self._change(tenant) as conn:
            if not builtin:
                # The version row lock taken by _change keeps a concurrent DeleteRole of
                # this tenant from slipping in between this check and the insert.
                cursor = await conn.execute(
                    "SELECT 1 FROM nexus.policy_roles WHERE tenant = %s AND role_id = %s",
                    (tenant, role_id),
                )
                if await cursor.fetchone() is None:
                    raise role_not_found(role_id)
            cursor = await conn.execute(
                "INSERT INTO nexus.policy_bindings (tenant, principal, role_id)"
                " VALUES (%s, %s, %s) ON CONFLICT DO NOTHING RETURNING create_time",
                (tenant, principal, role_id),
            )
            row = await cursor.fetchone()
            if row is not None:
                return Binding(principal, role_id, row[0]), True
            cursor = await conn.execute(
                "SELECT create_time FROM nexus.policy_bindings"
                " WHERE tenant = %s AND principal = %s AND role_id = %s",
                (tenant, principal, role_id),
            )
            existing = await cursor.fetchone()
        assert existing is not None
        return Binding(principal, role_id, existing[0]), False

    async def revoke(self, tenant: str, principal: str, role_id: str) -> None:
        """Remove a binding; NotFound (BINDING_NOT_FOUND) when there is none."""
        async with self._change(tenant) as conn:
            cursor = await conn.execute(
                "DELETE FROM nexus.policy_bindings"
                " WHERE tenant = %s AND principal = %s AND role_id = %s",
                (tenant, principal, role_id),
            )
            if cursor.rowcount == 0:
                raise NotFound(
                    f"{principal} has no binding of role roles/{role_id}",
                    reason="BINDING_NOT_FOUND",
                    metadata={"principal": principal, "role": f"roles/{role_id}"},
                )

    async def list_bindings(
        self,
        tenant: str,
        *,
        principal: str,
        role_id: str,
        after: tuple[str, str] | None,
        limit: int,
    ) -> list[Binding]:
        """Up to ``limit`` bindings of ``tenant`` after ``after`` in (principal, role)
        order, only of ``principal`` and of ``role_id`` when they are not empty."""
        last_principal, last_role = after or ("", "")
        async with self._connection() as conn:
            cursor = await conn.execute(
                "SELECT principal, role_id, create_time FROM nexus.policy_bindings"
                " WHERE tenant = %s AND (%s = '' OR principal = %s)"
                " AND (%s = '' OR role_id = %s) AND (principal, role_id) > (%s, %s)"
                " ORDER BY principal, role_id LIMIT %s",
                (
                    tenant,
                    principal,
                    principal,
                    role_id,
                    role_id,
                    last_principal,
                    last_role,
                    limit,
                ),
            )
            return [Binding(p, r, t) for p, r, t in await cursor.fetchall()]

    # --- labels -----------------------------------------------------------------------

    async def put_label(self, tenant: str, resource: str, classification: str) -> tuple[Label, str]:
        """Label ``resource`` with ``classification``; returns the label as stored and the
        classification it replaced (empty when it had none)."""
        async with self._change(tenant) as conn:
            cursor = await conn.execute(
                "SELECT classification FROM nexus.policy_labels"
                " WHERE tenant = %s AND resource = %s",
                (tenant, resource),
            )
            previous = await cursor.fetchone()
            cursor = await conn.execute(
                "INSERT INTO nexus.policy_labels (tenant, resource, classification)"
                " VALUES (%s, %s, %s) ON CONFLICT (tenant, resource) DO UPDATE SET"
                " classification = EXCLUDED.classification, update_time = now()"
                f" RETURNING {_LABEL_COLUMNS}",
                (tenant, resource, classification),
            )
            row = await cursor.fetchone()
        assert row is not None
        return Label(*row), previous[0] if previous else ""

    async def get_label(self, tenant: str, resource: str) -> Label | None:
        async with self._connection() as conn:
            cursor = await conn.execute(
                f"SELECT {_LABEL_COLUMNS} FROM nexus.policy_labels"
                " WHERE tenant = %s AND resource = %s",
                (tenant, resource),
            )
            row = await cursor.fetchone()
        return Label(*row) if row else None

    async def list_labels(self, tenant: str, *, after: str | None, limit: int) -> list[Label]:
        """Up to ``limit`` labels of ``tenant`` whose resource sorts after ``after``."""
        async with self._connection() as conn:
            cursor = await conn.execute(
                f"SELECT {_LABEL_COLUMNS} FROM nexus.policy_labels"
                " WHERE tenant = %s AND resource > %s ORDER BY resource LIMIT %s",
                (tenant, after or "", limit),
            )
            return [Label(*r) for r in await cursor.fetchall()]

    async def delete_label(self, tenant: str, resource: str) -> str:
        """Remove the label of ``resource``; returns the classification it had. NotFound
        (LABEL_NOT_FOUND) when it had none."""
        async with self._change(tenant) as conn:
            cursor = await conn.execute(
                "DELETE FROM nexus.policy_labels WHERE tenant = %s AND resource = %s"
                " RETURNING classification",
                (tenant, resource),
            )
            row = await cursor.fetchone()
            if row is None:
                # Raised inside the transaction: the version bump is rolled back too.
                raise label_not_found(resource)
        return str(row[0])


def label_not_found(resource: str) -> NotFound:
    return NotFound(
        f"{resource} has no classification label",
        reason="LABEL_NOT_FOUND",
        metadata={"resource": resource},
    )


def role_not_found(role_id: str) -> NotFound:
    return NotFound(
        f"role roles/{role_id} does not exist",
        reason="ROLE_NOT_FOUND",
        metadata={"role": f"roles/{role_id}"},
    )
