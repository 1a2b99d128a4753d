"""The edges' view of the policy: ``PolicyAuthorizer.decide(identity, action, resource,
attributes) -> Decision`` (docs/identity.md).

Each tenant's policy is read from PostgreSQL once, compiled into a casbin enforcer
(``TenantPolicy``) and kept in memory; a decision never reads the database. A background
task compares the versions of the tenants held with PostgreSQL's every
``reload_interval`` and loads the changed ones again, so a change made through another
Nexus instance applies here within that interval; a change made through this instance
applies at once. When PostgreSQL cannot confirm the policy for ``max_staleness``,
decisions fail closed with UNAVAILABLE (reason POLICY_UNAVAILABLE).

Decisions are made only in the tenant of ``identity.effective`` (the caller a service
acts for, else the identity itself), with the roles its credential carries plus the
roles bound to it there. Resources carry no tenant, so no request can reach into
another tenant's policy."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from types import MappingProxyType

from datapunk_shared.auth.identity import Identity
from datapunk_shared.config import PolicySettings
from datapunk_shared.errors import PermissionDenied, Unauthenticated, Unavailable
from datapunk_shared.logging import get_logger

from datapunk_nexus.identity.policy.engine import TenantPolicy
from datapunk_nexus.identity.policy.resources import Requirement
from datapunk_nexus.identity.policy.rules import (
    ACTIONS,
    CLASSIFICATION_LEVELS,
    HIGHEST_LEVEL,
    Decision,
    Role,
    builtin_roles,
    classification_level,
    parse_resource,
)
from datapunk_nexus.identity.policy.store import PolicySource

__all__ = ["CLASSIFICATION_ATTRIBUTE", "CLEARANCE_ATTRIBUTE", "PolicyAuthorizer"]

log = get_logger("datapunk.policy")

CLASSIFICATION_ATTRIBUTE = "classification"
"""The resource attribute holding its classification (``public`` … ``restricted``)."""
CLEARANCE_ATTRIBUTE = "clearance"
"""The identity attribute holding the caller's clearance (``public`` … ``restricted``)."""

_NO_ATTRIBUTES: Mapping[str, str] = MappingProxyType({})


class PolicyAuthorizer:
    """Decides with each tenant's policy held in memory; see the module's doc."""

    def __init__(
        self,
        store: PolicySource,
        settings: PolicySettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._tenants: OrderedDict[str, TenantPolicy] = OrderedDict()
        self._loading: dict[str, asyncio.Future[TenantPolicy]] = {}
        self._unlabelled = CLASSIFICATION_LEVELS[settings.unlabelled_classification]
        self._task: asyncio.Task[None] | None = None

    @property
    def settings(self) -> PolicySettings:
        return self._settings

    def is_platform_tenant(self, tenant: str) -> bool:
        """Whether ``tenant``'s admins also administer the platform."""
        return bool(tenant) and tenant == self._settings.platform_tenant

    def builtin_roles(self, tenant: str) -> dict[str, Role]:
        """The built-in roles of ``tenant``, by id."""
        return builtin_roles(platform_tenant=self.is_platform_tenant(tenant))

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Start checking PostgreSQL for changes every ``reload_interval``."""
        if self._task is None:
            self._task = asyncio.create_task(self._refresh_forever(), name="policy-refresh")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.reload_interval)
            try:
                await self.refresh()
            except Unavailable as exc:
                log.warning("policy refresh failed", error=exc.message)
            except Exception:  # a bug must not end the refreshes for good
                log.exception("policy refresh failed")

    async def refresh(self) -> None:
        """Compare the versions of the tenants held with PostgreSQL's; load the changed
        ones again and mark the others confirmed."""
        tenants = list(self._tenants)
        if not tenants:
            return
        asked_at = self._clock()
        current = await self._store.versions(tenants)
        for tenant, version in current.items():
            held = self._tenants.get(tenant)
            if held is None:
                continue
            if held.version == version:
                held.confirmed_at = max(held.confirmed_at, asked_at)
            else:
                await self.reload(tenant)

    # --- tenants in memory ------------------------------------------------------------

    async def tenant_policy(self, tenant: str) -> TenantPolicy:
        """``tenant``'s policy, from memory or read once from PostgreSQL."""
        held = self._tenants.get(tenant)
        if held is not None:
            self._tenants.move_to_end(tenant)
            return held
        pending = self._loading.get(tenant)
        if pending is None:
            pending = asyncio.ensure_future(self._load(tenant))
            self._loading[tenant] = pending
            pending.add_done_callback(lambda done: self._loaded(tenant, done))
        return await asyncio.shield(pending)

    def _loaded(self, tenant: str, done: asyncio.Future[TenantPolicy]) -> None:
        self._loading.pop(tenant, None)
        if not done.cancelled():
            done.exception()  # retrieved here too, in case every waiter was cancelled

    async def reload(self, tenant: str) -> TenantPolicy:
        """Read ``tenant``'s policy again now (after a change made through this
        instance, or one a refresh found)."""
        return await self._load(tenant)

    def forget(self, tenant: str) -> None:
        """Drop ``tenant``'s policy from memory; the next decision reads it again."""
        self._tenants.pop(tenant, None)

    async def _load(self, tenant: str) -> TenantPolicy:
        asked_at = self._clock()
        try:
            snapshot = await self._store.snapshot(tenant)
        except Unavailable as exc:
            raise Unavailable(
                "the policy cannot be read now; retry later",
                reason="POLICY_UNAVAILABLE",
                retry_after=exc.retry_after or 1.0,
            ) from exc
        policy = TenantPolicy(
            tenant,
            snapshot.version,
            [*self.builtin_roles(tenant).values(), *snapshot.roles],
            snapshot.bindings,
            snapshot.labels,
            cache_size=self._settings.decision_cache_size,
        )
        policy.confirmed_at = asked_at
        held = self._tenants.get(tenant)
        # Versions only grow: a slower read of an older version never replaces a newer.
        if held is not None and held.version > policy.version:
            return held
        self._tenants[tenant] = policy
        self._tenants.move_to_end(tenant)
        while len(self._tenants) > self._settings.max_tenants:
            self._tenants.popitem(last=False)
        return policy

    # --- decisions --------------------------------------------------------------------

    async def decide(
        self,
        identity: Identity,
        action: str,
        resource: str,
        attributes: Mapping[str, str] = _NO_ATTRIBUTES,
    ) -> Decision:
        """Whether ``identity`` may take ``action`` (read, write, admin) on ``resource``
        (``<type>/<name>``) whose attributes are ``attributes`` (its ``classification``;
        without one, the resource's label in the tenant's policy, else unlabelled).
        Never raises for a bad action or resource (they are denied); raises Unavailable
        (POLICY_UNAVAILABLE) when the tenant's policy cannot be read or confirmed."""
        effective = identity.effective
        tenant = effective.tenant
        if not tenant or effective.kind == "anonymous":
            return Decision(False, "the caller has no tenant")
        if action not in ACTIONS:
            return Decision(False, f"unknown action {action!r}")
        parsed = parse_resource(resource)
        if parsed is None:
            return Decision(False, "not a resource name")
        held = self._tenants.get(tenant)
        if held is not None:
            self._tenants.move_to_end(tenant)
            policy = held
        else:
            policy = await self.tenant_policy(tenant)
        if self._clock() - policy.confirmed_at > self._settings.max_staleness:
            raise Unavailable(
                "the policy could not be confirmed current; retry later",
                reason="POLICY_UNAVAILABLE",
                retry_after=self._settings.reload_interval,
            )
        # An attribute given by the caller of decide (a "what if" question) wins over
        # the resource's stored label.
        level = classification_level(
            attributes.get(CLASSIFICATION_ATTRIBUTE) or policy.labels.get(resource),
            missing=self._unlabelled,
            unknown=HIGHEST_LEVEL,
        )
        # A caller without a (known) clearance is cleared for public data only.
        clearance = classification_level(
            effective.attributes.get(CLEARANCE_ATTRIBUTE), missing=1, unknown=1
        )
        return policy.decide(
            effective.subject, effective.roles, parsed[0], parsed[1], action, level, clearance
        )

    async def authorize(
        self,
        identity: Identity | None,
        requirement: Requirement,
        attributes: Mapping[str, str] = _NO_ATTRIBUTES,
    ) -> Decision | None:
        """Check a call's ``requirement`` (``resources.requirement_of``) for
        ``identity`` (None: nobody authenticated): nothing for a public call;
        Unauthenticated (MISSING_CREDENTIALS) without an authenticated caller;
        PermissionDenied unless the action is allowed on every resource the call
        reaches. Returns the decision for the first resource, None when none was
        needed."""
        if requirement.public:
            return None
        if identity is None or identity.effective.kind == "anonymous":
            raise Unauthenticated(
                "this call needs an authenticated caller", reason="MISSING_CREDENTIALS"
            )
        decisions = [
            await self.require(identity, requirement.action, resource, attributes)
            for resource in requirement.resources
        ]
        return decisions[0] if decisions else None

    async def require(
        self,
        identity: Identity,
        action: str,
        resource: str,
        attributes: Mapping[str, str] = _NO_ATTRIBUTES,
    ) -> Decision:
        """``decide``, raising PermissionDenied (reason PERMISSION_DENIED, metadata
        ``action`` and ``resource``) when the action is not allowed."""
        decision = await self.decide(identity, action, resource, attributes)
        if not decision.allowed:
            raise PermissionDenied(
                f"{action} on {resource} is not allowed ({decision.reason})",
                metadata={"action": action, "resource": resource},
            )
        return decision
