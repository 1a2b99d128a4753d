"""Who may hand out which roles through a credential.

An API key or an OAuth client carries roles, and whoever makes one — or rotates one, and
so receives its new secret — can do everything those roles allow. A tenant's ``admin``
may hand out any role of its tenant (the policy already lets it grant them); anyone else
only roles it holds itself, so that nobody can make, or take over, a credential more
powerful than the one it calls with."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from datapunk_shared.errors import PermissionDenied

__all__ = ["ADMIN_ROLE", "require_roles_held"]

ADMIN_ROLE = "admin"
"""The built-in role that administers a tenant (datapunk_nexus.identity.policy)."""


def require_roles_held(held: Collection[str], wanted: Iterable[str], credential: str) -> None:
    """PERMISSION_DENIED (reason ``ROLE_NOT_HELD``, metadata ``roles``) unless a caller
    holding ``held`` may hand out a ``credential`` (``an API key``) carrying ``wanted``."""
    if ADMIN_ROLE in held:
        return
    missing = sorted(set(wanted) - set(held))
    if missing:
        raise PermissionDenied(
            f"{credential} may only carry roles its creator holds; the caller lacks "
            + ", ".join(missing),
            reason="ROLE_NOT_HELD",
            metadata={"roles": ",".join(missing)},
        )
