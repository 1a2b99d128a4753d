"""The policy's semantics, decided by the real casbin model: default deny, tenants kept
apart by domains, globs, actions that do not include each other, the classification
condition, the effective identity of a delegated call, and the authorizer's reloads and
fail-closed staleness. Policies come from an in-memory source here; the PostgreSQL store
is tested in tests/integration/test_policy_store.py."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import MappingProxyType

import pytest
from datapunk_nexus.identity.policy.authorizer import PolicyAuthorizer
from datapunk_nexus.identity.policy.engine import TenantPolicy
from datapunk_nexus.identity.policy.resources import Requirement
from datapunk_nexus.identity.policy.rules import (
    Binding,
    Permission,
    Role,
    builtin_roles,
    parse_resource,
)
from datapunk_nexus.identity.policy.store import TenantSnapshot
from datapunk_shared.auth.identity import ANONYMOUS, Identity
from datapunk_shared.config import PolicySettings
from datapunk_shared.errors import (
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    engine_unavailable,
)


class MemorySource:
    """Tenants' roles and bindings held in a dict, versions bumped on every change."""

    def __init__(self) -> None:
        self.roles: dict[str, dict[str, Role]] = {}
        self.bindings: dict[str, set[tuple[str, str]]] = {}
        self.version: dict[str, int] = {}
        self.down = False
        self.snapshots = 0

    def put(self, tenant: str, role: Role) -> None:
        self.roles.setdefault(tenant, {})[role.role_id] = role
        self.version[tenant] = self.version.get(tenant, 0) + 1

    def bind(self, tenant: str, principal: str, role_id: str) -> None:
        self.bindings.setdefault(tenant, set()).add((principal, role_id))
        self.version[tenant] = self.version.get(tenant, 0) + 1

    def unbind(self, tenant: str, principal: str, role_id: str) -> None:
        self.bindings[tenant].discard((principal, role_id))
        self.version[tenant] += 1

    def _check(self) -> None:
        if self.down:
            raise engine_unavailable("postgres", "down")

    async def snapshot(self, tenant: str) -> TenantSnapshot:
        self._check()
        self.snapshots += 1
        return TenantSnapshot(
            tenant,
            self.version.get(tenant, 0),
            tuple(self.roles.get(tenant, {}).values()),
            tuple(Binding(p, r) for p, r in sorted(self.bindings.get(tenant, set()))),
        )

    async def versions(self, tenants: Sequence[str]) -> dict[str, int]:
        self._check()
        return {t: self.version.get(t, 0) for t in tenants}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def who(
    subject: str = "client:bob",
    tenant: str = "acme",
    roles: Sequence[str] = (),
    clearance: str = "",
) -> Identity:
    attributes = {"clearance": clearance} if clearance else {}
    return Identity(
        subject=subject,
        tenant=tenant,
        kind="client",
        roles=frozenset(roles),
        attributes=MappingProxyType(attributes),
    )


def authorizer(
    source: MemorySource, clock: Clock | None = None, **settings: object
) -> PolicyAuthorizer:
    return PolicyAuthorizer(source, PolicySettings.model_validate(settings), clock=clock or Clock())


def role(role_id: str, *permissions: Permission) -> Role:
    return Role(role_id, tuple(permissions))


def perm(
    kind: str, pattern: str, *actions: str, max_classification: str = "", clearance: bool = False
) -> Permission:
    return Permission(kind, pattern, actions, max_classification, clearance)


async def allowed(
    auth: PolicyAuthorizer,
    identity: Identity,
    action: str,
    resource: str,
    classification: str = "",
) -> bool:
    attributes = {"classification": classification} if classification else {}
    return (await auth.decide(identity, action, resource, attributes)).allowed


# --- default deny -----------------------------------------------------------------------


async def test_nothing_is_allowed_without_a_permission() -> None:
    source = MemorySource()
    auth = authorizer(source)
    decision = await auth.decide(who(), "read", "collection/docs")
    assert not decision.allowed
    assert decision.reason == "default deny"
    assert decision.rule is None
    # A role name the tenant does not have gives nothing either.
    assert not await allowed(auth, who(roles=["superuser", "root"]), "read", "collection/docs")


async def test_builtin_roles() -> None:
    auth = authorizer(MemorySource())
    reader, writer, admin = who(roles=["reader"]), who(roles=["writer"]), who(roles=["admin"])
    assert await allowed(auth, reader, "read", "series/cpu")
    assert not await allowed(auth, reader, "write", "series/cpu")
    assert await allowed(auth, writer, "write", "layer/roads")
    assert not await allowed(auth, writer, "admin", "layer/roads")
    policy_route = "route/datapunk.nexus.v1.PolicyService.PutRole"
    assert not await allowed(auth, writer, "admin", policy_route)
    assert await allowed(auth, admin, "admin", policy_route)
    assert await allowed(auth, admin, "admin", "collection/anything")
    decision = await auth.decide(admin, "admin", policy_route)
    assert decision.rule is not None
    assert decision.rule.role_id == "admin"
    assert decision.reason == "allowed by role admin"


async def test_platform_resources_belong_to_the_platform_tenant_only() -> None:
    auth = authorizer(MemorySource(), platform_tenant="ops")
    signing = "platform/datapunk.nexus.v1.AuthService.RotateSigningKey"
    assert not await allowed(auth, who(tenant="acme", roles=["admin"]), "admin", signing)
    assert await allowed(auth, who(tenant="ops", roles=["admin"]), "admin", signing)
    # A tenant's own role on every type (*) still never reaches platform resources.
    source = MemorySource()
    source.put("acme", role("everything", perm("*", "*", "read", "write", "admin")))
    auth = authorizer(source, platform_tenant="ops")
    assert not await allowed(auth, who(roles=["everything"]), "admin", signing)
    with pytest.raises(InvalidArgument) as caught:
        role("sneaky", perm("platform", "*", "admin")).check(platform_tenant=False)
    assert caught.value.reason == "PLATFORM_PERMISSION"


async def test_actions_do_not_include_each_other() -> None:
    source = MemorySource()
    source.put("acme", role("ingest", perm("series", "*", "write")))
    auth = authorizer(source)
    bot = who(roles=["ingest"])
    assert await allowed(auth, bot, "write", "series/cpu")
    assert not await allowed(auth, bot, "read", "series/cpu")
    assert not await allowed(auth, bot, "admin", "series/cpu")


# --- tenants ----------------------------------------------------------------------------


async def test_domains_keep_tenants_apart() -> None:
    source = MemorySource()
    source.put("acme", role("analyst", perm("collection", "docs", "read")))
    source.bind("acme", "client:bob", "analyst")
    source.put("globex", role("other", perm("collection", "plans", "read")))
    auth = authorizer(source)
    assert await allowed(auth, who(tenant="acme"), "read", "collection/docs")
    # The same subject in another tenant: acme's binding does not follow it there.
    assert not await allowed(auth, who(tenant="globex"), "read", "collection/docs")
    # A credential naming acme's role, but issued in globex: globex has no such role.
    assert not await allowed(
        auth, who(tenant="globex", roles=["analyst"]), "read", "collection/docs"
    )
    # globex's role never applies in acme, whatever the credential says.
    assert not await allowed(auth, who(tenant="acme", roles=["other"]), "read", "collection/plans")
    decision = await auth.decide(who(tenant="acme"), "read", "collection/docs")
    assert decision.roles == ("analyst",)


async def test_resources_cannot_name_a_tenant() -> None:
    auth = authorizer(MemorySource())
    admin = who(roles=["admin"])
    for resource in (
        "collection/globex/docs",
        "globex/collection/docs",
        "collection/../globex",
        "collection/",
        "docs",
        "tenant/globex",
        "",
    ):
        decision = await auth.decide(admin, "read", resource)
        assert not decision.allowed, resource
        assert parse_resource(resource) is None


async def test_callers_without_a_tenant_get_nothing() -> None:
    auth = authorizer(MemorySource())
    assert not await allowed(auth, ANONYMOUS, "read", "collection/docs")
    assert not await allowed(auth, who(tenant="", roles=["admin"]), "read", "collection/docs")
    assert not await allowed(auth, who(roles=["admin"]), "delete", "collection/docs")


async def test_a_delegated_call_is_decided_for_the_caller_it_acts_for() -> None:
    source = MemorySource()
    source.put("acme", role("analyst", perm("collection", "docs", "read")))
    auth = authorizer(source)
    caller = who(subject="client:bob", tenant="acme", roles=["analyst"])
    nexus = Identity(subject="service:nexus", tenant="", kind="service", roles=frozenset({"admin"}))
    acting = Identity(
        subject=nexus.subject, tenant="", kind="service", roles=nexus.roles, on_behalf_of=caller
    )
    assert await allowed(auth, acting, "read", "collection/docs")
    # The service's own roles do not widen what the caller may do.
    assert not await allowed(auth, acting, "write", "collection/docs")


# --- names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("docs", "docs", True),
        ("docs", "docs2", False),
        ("sensor-*", "sensor-7", True),
        ("sensor-*", "sensor-", True),
        ("sensor-*", "sensors", False),
        ("sensor-?", "sensor-7", True),
        ("sensor-?", "sensor-17", False),
        ("sensor-[a-c]", "sensor-b", True),
        ("sensor-[a-c]", "sensor-d", False),
        ("*", "anything", True),
        ("datapunk.lake.v1.VectorService.*", "datapunk.lake.v1.VectorService.SearchPoints", True),
        ("datapunk.lake.v1.VectorService.*", "datapunk.lake.v1.SpatialService.GetLayer", False),
        # A list is about every resource of its type: only `*` reaches it.
        ("d*", "*", False),
        ("*", "*", True),
    ],
)
def test_name_patterns(pattern: str, name: str, expected: bool) -> None:
    kind = "route" if pattern.startswith("datapunk") else "collection"
    policy = TenantPolicy("acme", 1, [role("r", perm(kind, pattern, "read"))], [], cache_size=0)
    decision = policy.decide("client:bob", frozenset({"r"}), kind, name, "read", 1, 1)
    assert decision.allowed is expected


async def test_types_must_match_unless_the_permission_says_any() -> None:
    source = MemorySource()
    source.put("acme", role("r", perm("series", "*", "read"), perm("*", "shared-*", "read")))
    auth = authorizer(source)
    bob = who(roles=["r"])
    assert await allowed(auth, bob, "read", "series/cpu")
    assert not await allowed(auth, bob, "read", "collection/cpu")
    assert await allowed(auth, bob, "read", "layer/shared-roads")
    decision = await auth.decide(bob, "read", "dataset/shared-x")
    assert decision.rule is not None
    assert decision.rule.permission.resource_type == "*"


# --- classification ---------------------------------------------------------------------


async def test_maximum_classification() -> None:
    source = MemorySource()
    source.put("acme", role("r", perm("collection", "*", "read", max_classification="internal")))
    auth = authorizer(source)
    bob = who(roles=["r"])
    assert await allowed(auth, bob, "read", "collection/docs", "public")
    assert await allowed(auth, bob, "read", "collection/docs", "internal")
    assert not await allowed(auth, bob, "read", "collection/docs", "confidential")
    assert not await allowed(auth, bob, "read", "collection/docs", "restricted")
    # Unlabelled counts as restricted (fail closed); an unknown label too.
    assert not await allowed(auth, bob, "read", "collection/docs")
    assert not await allowed(auth, bob, "read", "collection/docs", "top-secret")
    lenient = authorizer(source, unlabelled_classification="public")
    assert await allowed(lenient, bob, "read", "collection/docs")


async def test_clearance_must_reach_the_classification() -> None:
    source = MemorySource()
    source.put("acme", role("r", perm("collection", "*", "read", clearance=True)))
    auth = authorizer(source)
    cleared = who(roles=["r"], clearance="confidential")
    assert await allowed(auth, cleared, "read", "collection/docs", "confidential")
    assert await allowed(auth, cleared, "read", "collection/docs", "public")
    assert not await allowed(auth, cleared, "read", "collection/docs", "restricted")
    # Without a clearance (or with one nobody knows) only public data.
    for nobody in (who(roles=["r"]), who(roles=["r"], clearance="cosmic")):
        assert await allowed(auth, nobody, "read", "collection/docs", "public")
        assert not await allowed(auth, nobody, "read", "collection/docs", "internal")


async def test_another_permission_may_still_allow_what_a_conditional_one_does_not() -> None:
    source = MemorySource()
    source.put(
        "acme",
        role(
            "r",
            perm("collection", "*", "read", max_classification="public"),
            perm("collection", "docs", "read"),
        ),
    )
    auth = authorizer(source)
    bob = who(roles=["r"])
    decision = await auth.decide(bob, "read", "collection/docs", {"classification": "restricted"})
    assert decision.allowed
    assert decision.rule is not None
    assert decision.rule.permission.name_pattern == "docs"
    assert not await allowed(auth, bob, "read", "collection/other", "internal")


# --- reloads ----------------------------------------------------------------------------


async def test_changes_apply_after_a_refresh_and_decisions_are_remembered_until_then() -> None:
    source = MemorySource()
    source.put("acme", role("analyst", perm("collection", "docs", "read")))
    auth = authorizer(source)
    assert not await allowed(auth, who(), "read", "collection/docs")
    source.bind("acme", "client:bob", "analyst")
    # Still the version held in memory: no database read per decision.
    reads = source.snapshots
    assert not await allowed(auth, who(), "read", "collection/docs")
    assert source.snapshots == reads
    await auth.refresh()
    assert await allowed(auth, who(), "read", "collection/docs")
    source.unbind("acme", "client:bob", "analyst")
    await auth.refresh()
    assert not await allowed(auth, who(), "read", "collection/docs")


async def test_one_read_per_tenant_however_many_decisions_wait_for_it() -> None:
    source = MemorySource()
    auth = authorizer(source)
    reader = who(roles=["reader"])
    await asyncio.gather(*(auth.decide(reader, "read", "series/x") for _ in range(20)))
    assert source.snapshots == 1


async def test_decisions_fail_closed_when_the_policy_cannot_be_confirmed() -> None:
    source = MemorySource()
    clock = Clock()
    auth = authorizer(source, clock, max_staleness=30)
    reader = who(roles=["reader"])
    assert await allowed(auth, reader, "read", "series/x")
    source.down = True
    with pytest.raises(Unavailable):
        await auth.refresh()
    clock.now += 20
    assert await allowed(auth, reader, "read", "series/x")  # within the bound
    clock.now += 20
    with pytest.raises(Unavailable) as caught:
        await auth.decide(reader, "read", "series/x")
    assert caught.value.reason == "POLICY_UNAVAILABLE"
    # A tenant never read cannot be decided for either.
    with pytest.raises(Unavailable) as caught:
        await auth.decide(who(tenant="globex", roles=["reader"]), "read", "series/x")
    assert caught.value.reason == "POLICY_UNAVAILABLE"
    source.down = False
    await auth.refresh()
    assert await allowed(auth, reader, "read", "series/x")


async def test_only_max_tenants_are_held() -> None:
    source = MemorySource()
    auth = authorizer(source, max_tenants=2)
    for tenant in ("a", "b", "c", "a"):
        await auth.decide(who(tenant=tenant, roles=["reader"]), "read", "series/x")
    assert source.snapshots == 4  # "a" was dropped for "c" and read again


async def test_authorize_checks_every_resource_a_call_reaches() -> None:
    source = MemorySource()
    source.put("acme", role("r", perm("layer", "roads", "read")))
    auth = authorizer(source)
    bob = who(roles=["r"])
    both = Requirement("read", "layer/roads", also=("layer/secret",))
    with pytest.raises(PermissionDenied) as caught:
        await auth.authorize(bob, both)
    assert caught.value.metadata == {"action": "read", "resource": "layer/secret"}
    assert await auth.authorize(bob, Requirement("read", "layer/roads")) is not None
    assert await auth.authorize(None, Requirement("", "", public=True)) is None
    with pytest.raises(Unauthenticated) as missing:
        await auth.authorize(None, Requirement("", ""))
    assert missing.value.reason == "MISSING_CREDENTIALS"
    with pytest.raises(Unauthenticated):
        await auth.authorize(ANONYMOUS, Requirement("read", "layer/roads"))
    assert await auth.authorize(bob, Requirement("", "")) is None


def test_builtin_roles_are_the_three_documented() -> None:
    assert set(builtin_roles(platform_tenant=False)) == {"admin", "writer", "reader"}
    platform_admin = builtin_roles(platform_tenant=True)["admin"]
    assert {p.resource_type for p in platform_admin.permissions} == {"*", "platform"}
