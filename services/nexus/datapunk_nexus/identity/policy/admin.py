"""What PolicyService does, for one caller at a time and only in the caller's tenant:
roles and bindings kept by the store, permission questions answered by the authorizer.

The tenant always comes from the caller's verified identity; nothing here takes a tenant
from a request. The caller's permission to call each method is checked before (the
servicer asks the authorizer with the method's requirement); the rules that depend on
what is asked are checked here: built-in roles stay as they are, ``platform``
permissions exist only in the platform tenant, and nobody grants a role they do not
hold unless they hold ``admin``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from datapunk_shared.auth.identity import Identity, IdentityKind
from datapunk_shared.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
)
from datapunk_shared.paging import decode_page_token, encode_page_token, invalid_page_token

from datapunk_nexus.identity.policy.authorizer import CLASSIFICATION_ATTRIBUTE, PolicyAuthorizer
from datapunk_nexus.identity.policy.rules import (
    BUILTIN_ROLE_IDS,
    CLASSIFICATIONS,
    Binding,
    Decision,
    Label,
    Role,
    is_labellable,
)
from datapunk_nexus.identity.policy.store import PolicyStore, label_not_found, role_not_found

__all__ = ["DEFAULT_PAGE_SIZE", "PolicyAdmin"]

DEFAULT_PAGE_SIZE = 100

_KINDS: Mapping[str, IdentityKind] = MappingProxyType(
    {"client": "client", "user": "user", "key": "api_key", "service": "service"}
)


def _builtin_role(role_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"roles/{role_id} is a built-in role and cannot be changed or deleted",
        reason="BUILTIN_ROLE",
        metadata={"role": f"roles/{role_id}"},
    )


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _encode_token(query: str, position: list[str]) -> str:
    return encode_page_token(json.dumps({"q": query, "p": position}, separators=(",", ":")))


def _decode_token(token: str, query: str, size: int) -> list[str] | None:
    """The position a page token carries (None for the first page), checked to belong to
    the query ``query`` and to hold ``size`` strings."""
    if not token:
        return None
    try:
        value: Any = json.loads(decode_page_token(token))
    except ValueError:
        value = None
    position = value.get("p") if isinstance(value, dict) else None
    if (
        not isinstance(position, list)
        or len(position) != size
        or not all(isinstance(item, str) for item in position)
    ):
        raise invalid_page_token(
            "invalid page_token: not a token this service issued",
            "not a token this service issued",
        )
    if value.get("q") != query:
        raise invalid_page_token(
            "invalid page_token: it belongs to another query",
            "the token belongs to another query; repeat the query's parameters",
        )
    return position


def _check_labellable(resource: str, field: str) -> None:
    # The contract's pattern says the same; this keeps a direct caller of PolicyAdmin
    # from storing a label no decision would ever read.
    if not is_labellable(resource):
        raise InvalidArgument(
            f"{resource!r} cannot take a label",
            violations=[
                FieldViolation(
                    field, "a collection, series, layer, dataset or pipeline, named exactly"
                )
            ],
        )


def _tenant(caller: Identity) -> str:
    tenant = caller.effective.tenant
    if not tenant:
        raise PermissionDenied("the caller belongs to no tenant", reason="TENANT_MISMATCH")
    return tenant


class PolicyAdmin:
    """Roles, bindings and permission questions of the caller's tenant."""

    def __init__(self, store: PolicyStore, authorizer: PolicyAuthorizer) -> None:
        self._store = store
        self._authorizer = authorizer

    def _builtins(self, tenant: str) -> dict[str, Role]:
        return self._authorizer.builtin_roles(tenant)

    async def _changed(self, tenant: str) -> None:
        # The change is committed: make it this instance's at once. Should PostgreSQL
        # fail right now, the next decision reads the tenant again instead.
        try:
            await self._authorizer.reload(tenant)
        except Exception:
            self._authorizer.forget(tenant)

    # --- roles ------------------------------------------------------------------------

    async def put_role(self, caller: Identity, role: Role) -> tuple[Role, bool]:
        tenant = _tenant(caller)
        if role.role_id in BUILTIN_ROLE_IDS:
            raise _builtin_role(role.role_id)
        role.check(platform_tenant=self._authorizer.is_platform_tenant(tenant))
        stored, created = await self._store.put_role(tenant, role)
        await self._changed(tenant)
        return stored, created

    async def get_role(self, caller: Identity, role_id: str) -> Role:
        tenant = _tenant(caller)
        builtin = self._builtins(tenant).get(role_id)
        if builtin is not None:
            return builtin
        role = await self._store.get_role(tenant, role_id)
        if role is None:
            raise role_not_found(role_id)
        return role

    async def list_roles(
        self, caller: Identity, page_size: int, page_token: str
    ) -> tuple[list[Role], str]:
        tenant = _tenant(caller)
        size = page_size or DEFAULT_PAGE_SIZE
        query = _fingerprint("roles")
        position = _decode_token(page_token, query, 1)
        after = position[0] if position else None
        # Built-in roles are not stored: merge them in by name.
        stored = await self._store.list_roles(tenant, after=after, limit=size + 1)
        builtins = [r for r in self._builtins(tenant).values() if r.role_id > (after or "")]
        merged = sorted([*stored, *builtins], key=lambda r: r.role_id)
        page = merged[:size]
        token = _encode_token(query, [page[-1].role_id]) if len(merged) > size else ""
        return page, token

    async def delete_role(self, caller: Identity, role_id: str) -> int:
        tenant = _tenant(caller)
        if role_id in BUILTIN_ROLE_IDS:
            raise _builtin_role(role_id)
        deleted = await self._store.delete_role(tenant, role_id)
        await self._changed(tenant)
        return deleted

    # --- bindings ---------------------------------------------------------------------

    async def grant(self, caller: Identity, principal: str, role_id: str) -> tuple[Binding, bool]:
        tenant = _tenant(caller)
        effective = caller.effective
        policy = await self._authorizer.tenant_policy(tenant)
        held = policy.roles_of(effective.subject, effective.roles)
        if role_id not in held and "admin" not in held:
            raise PermissionDenied(
                f"granting roles/{role_id} needs holding it, or the admin role",
                reason="ROLE_NOT_HELD",
                metadata={"role": f"roles/{role_id}"},
            )
        builtin = role_id in self._builtins(tenant)
        binding, created = await self._store.grant(tenant, principal, role_id, builtin=builtin)
        if created:
            await self._changed(tenant)
        return binding, created

    async def revoke(self, caller: Identity, principal: str, role_id: str) -> None:
        tenant = _tenant(caller)
        await self._store.revoke(tenant, principal, role_id)
        await self._changed(tenant)

    async def list_bindings(
        self, caller: Identity, *, principal: str, role_id: str, page_size: int, page_token: str
    ) -> tuple[list[Binding], str]:
        tenant = _tenant(caller)
        size = page_size or DEFAULT_PAGE_SIZE
        query = _fingerprint("bindings", principal, role_id)
        position = _decode_token(page_token, query, 2)
        after = (position[0], position[1]) if position else None
        found = await self._store.list_bindings(
            tenant, principal=principal, role_id=role_id, after=after, limit=size + 1
        )
        page = found[:size]
        token = ""
        if len(found) > size:
            token = _encode_token(query, [page[-1].principal, page[-1].role_id])
        return page, token

    # --- labels -----------------------------------------------------------------------

    async def label(
        self, caller: Identity, resource: str, classification: str
    ) -> tuple[Label, str]:
        """Label ``resource`` with ``classification``; returns the stored label and the
        classification it replaced (empty when none)."""
        tenant = _tenant(caller)
        _check_labellable(resource, "label.resource")
        if classification not in CLASSIFICATIONS:
            raise InvalidArgument(
                "a label needs a classification",
                violations=[FieldViolation("label.classification", "unknown classification")],
            )
        stored, previous = await self._store.put_label(tenant, resource, classification)
        await self._changed(tenant)
        return stored, previous

    async def get_label(self, caller: Identity, resource: str) -> Label:
        tenant = _tenant(caller)
        _check_labellable(resource, "resource")
        label = await self._store.get_label(tenant, resource)
        if label is None:
            raise label_not_found(resource)
        return label

    async def list_labels(
        self, caller: Identity, page_size: int, page_token: str
    ) -> tuple[list[Label], str]:
        tenant = _tenant(caller)
        size = page_size or DEFAULT_PAGE_SIZE
        query = _fingerprint("labels")
        position = _decode_token(page_token, query, 1)
        found = await self._store.list_labels(
            tenant, after=position[0] if position else None, limit=size + 1
        )
        page = found[:size]
        token = _encode_token(query, [page[-1].resource]) if len(found) > size else ""
        return page, token

    async def delete_label(self, caller: Identity, resource: str) -> str:
        """Remove the label of ``resource``; returns the classification it had."""
        tenant = _tenant(caller)
        _check_labellable(resource, "resource")
        previous = await self._store.delete_label(tenant, resource)
        await self._changed(tenant)
        return previous

    # --- permission questions ---------------------------------------------------------

    async def check(
        self,
        caller: Identity,
        *,
        principal: str,
        action: str,
        resource: str,
        classification: str,
    ) -> tuple[str, Decision]:
        """Whether ``principal`` (empty: the caller) may take ``action`` on ``resource``
        classified ``classification`` (empty: unlabelled). About another principal only
        its bindings in the caller's tenant are known. Returns the principal asked about
        and the decision."""
        attributes = {CLASSIFICATION_ATTRIBUTE: classification} if classification else {}
        effective = caller.effective
        if not principal or principal == effective.subject:
            return effective.subject, await self._authorizer.decide(
                caller, action, resource, attributes
            )
        subject_kind = _KINDS.get(principal.partition(":")[0], "client")
        other = Identity(subject=principal, tenant=_tenant(caller), kind=subject_kind)
        return principal, await self._authorizer.decide(other, action, resource, attributes)
