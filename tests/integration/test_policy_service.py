"""PolicyService over real gRPC: an in-process ``grpc.aio`` server built with
``create_server`` and the shared Datapunk edges (protovalidate, error mapping, and the
shared authentication edge verifying real ES256 access tokens), the servicer registered
by ``add_policy_service``, the real PostgreSQL behind it. Calls come the way the Nexus
edge forwards them: Nexus's service token plus the caller's identity on whose behalf it
acts, so every decision is about ``identity.effective``.

Among the attacks: another tenant's roles and bindings by name, role or tenant fields
smuggled into a request ("mass assignment"), a non-admin granting itself admin, and a
delegated granter handing out a role it does not hold."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from types import MappingProxyType
from typing import Any

import grpc
import pytest
from datapunk.nexus.v1 import policy_pb2, policy_pb2_grpc
from datapunk_nexus.identity.policy import add_policy_service
from datapunk_nexus.identity.policy.authorizer import PolicyAuthorizer
from datapunk_shared.auth.identity import Identity
from datapunk_shared.auth.interceptor import (
    ON_BEHALF_KEY,
    CallerAuthenticator,
    encode_on_behalf,
)
from datapunk_shared.config import Settings
from datapunk_shared.db import apply_migrations, load_migrations
from datapunk_shared.errors import DatapunkError
from datapunk_shared.rpc.client import error_from_rpc_error
from datapunk_shared.rpc.interceptor import DatapunkServerInterceptor
from datapunk_shared.rpc.server import ServiceContext, create_server
from joserfc.jwk import ECKey
from psycopg_pool import AsyncConnectionPool

from tests import token_kit

Stub = Any  # the generated stubs are untyped
KEY: ECKey = token_kit.ec_key()
T = policy_pb2  # shorter names for the many messages below


@pytest.fixture(scope="module")
async def pool(settings: Settings) -> AsyncIterator[AsyncConnectionPool]:
    pool = AsyncConnectionPool(settings.engines.postgres.url, min_size=1, max_size=6, open=False)
    await pool.open(wait=True, timeout=15)
    async with pool.connection() as conn:
        await apply_migrations(conn, "nexus", load_migrations("datapunk_nexus.migrations"))
    yield pool
    await pool.close()


class Served:
    def __init__(self, stub: Stub, channel: grpc.aio.Channel, authorizer: PolicyAuthorizer):
        self.stub = stub
        self.channel = channel
        self.authorizer = authorizer


async def serve(
    settings: Settings, pool: AsyncConnectionPool, *, authenticate: bool = True
) -> AsyncIterator[Served]:
    checker = CallerAuthenticator(token_kit.verifier(KEY), cache_seconds=0)
    edges = DatapunkServerInterceptor(
        "nexus", access_log="off", authenticator=checker if authenticate else None
    )
    server, port = create_server("127.0.0.1:0", edges=edges)
    context = ServiceContext(settings=settings, service_settings=settings.nexus, server=server)
    authorizer = await add_policy_service(context, pool)
    assert context.service_names == ["datapunk.nexus.v1.PolicyService"]
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Served(policy_pb2_grpc.PolicyServiceStub(channel), channel, authorizer)
    finally:
        await server.stop(None)
        for cleanup in context.cleanups:
            await cleanup()


def fast_reloads(settings: Settings) -> Settings:
    policy = settings.nexus.auth.policy.model_copy(update={"reload_interval": 0.1})
    auth = settings.nexus.auth.model_copy(update={"policy": policy})
    nexus = settings.nexus.model_copy(update={"auth": auth})
    return settings.model_copy(update={"nexus": nexus})


@pytest.fixture
async def served(settings: Settings, pool: AsyncConnectionPool) -> AsyncIterator[Served]:
    async for one in serve(fast_reloads(settings), pool):
        yield one


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def caller(
    client: str, tenant_: str, roles: list[str], attributes: dict[str, str] | None = None
) -> tuple[tuple[str, str], ...]:
    """Metadata of a call the Nexus edge forwards for ``client:<client>`` of ``tenant_``:
    Nexus's own real access token (a service token) plus the caller's identity in
    ``x-datapunk-on-behalf-of``, which the shared edge believes from Nexus only."""
    claims = token_kit.claims(
        sub="service:nexus", client_id=None, datapunk_tenant=None, datapunk_roles=None
    )
    on_behalf = Identity(
        subject=f"client:{client}",
        tenant=tenant_,
        kind="client",
        roles=frozenset(roles),
        attributes=MappingProxyType(attributes or {}),
    )
    return (
        ("authorization", f"Bearer {token_kit.sign(KEY, claims)}"),
        (ON_BEHALF_KEY, encode_on_behalf(on_behalf)),
    )


async def failure(call: Awaitable[Any]) -> tuple[grpc.StatusCode, DatapunkError]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), error_from_rpc_error(caught.value)


def analyst_role(*patterns: str) -> Any:
    return T.Role(
        name="roles/analyst",
        description="reads some collections",
        permissions=[
            T.Permission(
                resource_type=T.RESOURCE_TYPE_COLLECTION,
                name_pattern=pattern,
                actions=[T.ACTION_READ],
            )
            for pattern in patterns
        ],
    )


async def check(
    stub: Stub, metadata: Any, resource: str, action: T.Action = T.ACTION_READ, **fields: Any
) -> Any:
    request = T.CheckPermissionRequest(action=action, resource=resource, **fields)
    return await stub.CheckPermission(request, metadata=metadata, timeout=10)


# --- the happy path -------------------------------------------------------------------


async def test_an_admin_manages_roles_and_bindings(served: Served) -> None:
    stub, acme = served.stub, tenant()
    root = caller("root", acme, ["admin"])
    bob = caller("bob", acme, [])

    put = await stub.PutRole(
        T.PutRoleRequest(role=analyst_role("docs", "sensor-*")), metadata=root, timeout=10
    )
    assert put.created
    assert put.role.name == "roles/analyst"
    assert put.role.HasField("create_time")
    got = await stub.GetRole(T.GetRoleRequest(name="roles/analyst"), metadata=root, timeout=10)
    assert got.role == put.role

    denied = await check(stub, bob, "collection/docs")
    assert not denied.allowed
    assert denied.reason == "default deny"
    assert denied.principal == "client:bob"

    grant = await stub.GrantRole(
        T.GrantRoleRequest(principal="client:bob", role="roles/analyst"), metadata=root, timeout=10
    )
    assert grant.created
    assert grant.binding.principal == "client:bob"

    allowed = await check(stub, bob, "collection/sensor-12")
    assert allowed.allowed
    assert allowed.matched_rule.role == "roles/analyst"
    assert allowed.matched_rule.permission.name_pattern == "sensor-*"
    assert list(allowed.roles) == ["analyst"]
    assert not (await check(stub, bob, "collection/sensor-12", T.ACTION_WRITE)).allowed

    # An admin may ask about another principal of its tenant.
    about_bob = await check(stub, root, "collection/docs", principal="client:bob")
    assert about_bob.allowed
    assert about_bob.principal == "client:bob"

    bindings = await stub.ListRoleBindings(
        T.ListRoleBindingsRequest(role="roles/analyst"), metadata=root, timeout=10
    )
    assert [(b.principal, b.role) for b in bindings.bindings] == [("client:bob", "roles/analyst")]

    await stub.RevokeRole(
        T.RevokeRoleRequest(principal="client:bob", role="roles/analyst"), metadata=root, timeout=10
    )
    assert not (await check(stub, bob, "collection/docs")).allowed
    deleted = await stub.DeleteRole(
        T.DeleteRoleRequest(name="roles/analyst"), metadata=root, timeout=10
    )
    assert deleted.deleted_binding_count == 0
    code, error = await failure(
        stub.GetRole(T.GetRoleRequest(name="roles/analyst"), metadata=root, timeout=10)
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert error.reason == "ROLE_NOT_FOUND"


async def test_roles_list_page_by_page(served: Served) -> None:
    stub, acme = served.stub, tenant()
    root = caller("root", acme, ["admin"])
    for index in range(4):
        role = analyst_role("docs")
        role.name = f"roles/team-{index}"
        await stub.PutRole(T.PutRoleRequest(role=role), metadata=root, timeout=10)
    names: list[str] = []
    token = ""
    while True:
        page = await stub.ListRoles(
            T.ListRolesRequest(page_size=2, page_token=token), metadata=root, timeout=10
        )
        names.extend(r.name for r in page.roles)
        token = page.next_page_token
        if not token:
            break
    expected = ["admin", "reader", "team-0", "team-1", "team-2", "team-3", "writer"]
    assert names == [f"roles/{n}" for n in expected]
    code, error = await failure(
        stub.ListRoles(T.ListRolesRequest(page_token="bogus"), metadata=root, timeout=10)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_PAGE_TOKEN"


async def test_classification_conditions_and_clearance(served: Served) -> None:
    stub, acme = served.stub, tenant()
    root = caller("root", acme, ["admin"])
    role = T.Role(
        name="roles/cleared",
        permissions=[
            T.Permission(
                resource_type=T.RESOURCE_TYPE_ANY,
                name_pattern="*",
                actions=[T.ACTION_READ],
                conditions=T.Conditions(
                    max_classification=T.CLASSIFICATION_CONFIDENTIAL, require_clearance=True
                ),
            )
        ],
    )
    await stub.PutRole(T.PutRoleRequest(role=role), metadata=root, timeout=10)
    internal = caller("eve", acme, ["cleared"], {"clearance": "internal"})
    confidential = caller("carl", acme, ["cleared"], {"clearance": "confidential"})
    for who, level, expected in [
        (internal, T.CLASSIFICATION_INTERNAL, True),
        (internal, T.CLASSIFICATION_CONFIDENTIAL, False),
        (confidential, T.CLASSIFICATION_CONFIDENTIAL, True),
        (confidential, T.CLASSIFICATION_RESTRICTED, False),
        (confidential, T.CLASSIFICATION_UNSPECIFIED, False),  # unlabelled: restricted
    ]:
        answer = await check(stub, who, "layer/roads", classification=level)
        assert answer.allowed is expected, (level, expected)


# --- who may call ---------------------------------------------------------------------


async def test_a_call_without_credentials_is_refused(
    settings: Settings, pool: AsyncConnectionPool
) -> None:
    # Through the shared edge: no token.
    async for served in serve(settings, pool):
        code, error = await failure(served.stub.ListRoles(T.ListRolesRequest(), timeout=10))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert error.reason == "MISSING_CREDENTIALS"
    # Without any authentication edge: the servicer itself finds no identity.
    async for served in serve(settings, pool, authenticate=False):
        code, error = await failure(
            served.stub.CheckPermission(
                T.CheckPermissionRequest(action=T.ACTION_READ, resource="collection/x"),
                timeout=10,
            )
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert error.reason == "MISSING_CREDENTIALS"


async def test_only_admins_administer(served: Served) -> None:
    stub, acme = served.stub, tenant()
    for roles in ([], ["reader"], ["writer"]):
        who = caller("mallory", acme, roles)
        code, error = await failure(
            stub.PutRole(T.PutRoleRequest(role=analyst_role("*")), metadata=who, timeout=10)
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert error.reason == "PERMISSION_DENIED"
        assert error.metadata == {
            "action": "admin",
            "resource": "route/datapunk.nexus.v1.PolicyService.PutRole",
        }
        code, _ = await failure(stub.ListRoles(T.ListRolesRequest(), metadata=who, timeout=10))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        # Asking about someone else is an admin's question too.
        code, _ = await failure(check(stub, who, "collection/x", principal="client:root"))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        # About oneself anyone may ask.
        assert (await check(stub, who, "collection/x")).principal == "client:mallory"
    # Nexus's service identity on its own (acting for nobody) belongs to no tenant.
    service_only = caller("unused", acme, ["admin"])[:1]
    code, _ = await failure(
        stub.PutRole(T.PutRoleRequest(role=analyst_role("*")), metadata=service_only, timeout=10)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED


async def test_a_non_admin_cannot_grant_itself_admin(served: Served) -> None:
    stub, acme = served.stub, tenant()
    writer = caller("mallory", acme, ["writer"])
    code, error = await failure(
        stub.GrantRole(
            T.GrantRoleRequest(principal="client:mallory", role="roles/admin"),
            metadata=writer,
            timeout=10,
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert not (await check(stub, writer, "route/x", T.ACTION_ADMIN)).allowed

    # Even a delegated granter (allowed to call GrantRole) hands out only roles it holds.
    root = caller("root", acme, ["admin"])
    granter = T.Role(
        name="roles/granter",
        permissions=[
            T.Permission(
                resource_type=T.RESOURCE_TYPE_ROUTE,
                name_pattern="datapunk.nexus.v1.PolicyService.GrantRole",
                actions=[T.ACTION_ADMIN],
            )
        ],
    )
    await stub.PutRole(T.PutRoleRequest(role=granter), metadata=root, timeout=10)
    await stub.PutRole(T.PutRoleRequest(role=analyst_role("docs")), metadata=root, timeout=10)
    delegate = caller("dave", acme, ["granter"])
    code, error = await failure(
        stub.GrantRole(
            T.GrantRoleRequest(principal="client:dave", role="roles/admin"),
            metadata=delegate,
            timeout=10,
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert error.reason == "ROLE_NOT_HELD"
    code, error = await failure(
        stub.GrantRole(
            T.GrantRoleRequest(principal="client:eve", role="roles/analyst"),
            metadata=delegate,
            timeout=10,
        )
    )
    assert error.reason == "ROLE_NOT_HELD"
    granted = await stub.GrantRole(
        T.GrantRoleRequest(principal="client:eve", role="roles/granter"),
        metadata=delegate,
        timeout=10,
    )
    assert granted.created


# --- tenants --------------------------------------------------------------------------


async def test_another_tenants_roles_and_bindings_cannot_be_reached(served: Served) -> None:
    stub = served.stub
    acme, globex = tenant(), tenant()
    acme_root = caller("root", acme, ["admin"])
    globex_root = caller("root", globex, ["admin"])
    await stub.PutRole(T.PutRoleRequest(role=analyst_role("docs")), metadata=acme_root, timeout=10)
    await stub.GrantRole(
        T.GrantRoleRequest(principal="client:bob", role="roles/analyst"),
        metadata=acme_root,
        timeout=10,
    )

    # globex's admin names acme's role: it does not exist in globex.
    for call in (
        stub.GetRole(T.GetRoleRequest(name="roles/analyst"), metadata=globex_root, timeout=10),
        stub.DeleteRole(
            T.DeleteRoleRequest(name="roles/analyst"), metadata=globex_root, timeout=10
        ),
        stub.GrantRole(
            T.GrantRoleRequest(principal="client:bob", role="roles/analyst"),
            metadata=globex_root,
            timeout=10,
        ),
    ):
        code, error = await failure(call)
        assert code == grpc.StatusCode.NOT_FOUND
        assert error.reason == "ROLE_NOT_FOUND"
    code, error = await failure(
        stub.RevokeRole(
            T.RevokeRoleRequest(principal="client:bob", role="roles/analyst"),
            metadata=globex_root,
            timeout=10,
        )
    )
    assert error.reason == "BINDING_NOT_FOUND"
    listed = await stub.ListRoles(T.ListRolesRequest(), metadata=globex_root, timeout=10)
    assert [r.name for r in listed.roles] == ["roles/admin", "roles/reader", "roles/writer"]
    bindings = await stub.ListRoleBindings(
        T.ListRoleBindingsRequest(), metadata=globex_root, timeout=10
    )
    assert list(bindings.bindings) == []
    # Asked in globex, acme's bob has nothing: questions are answered in the caller's tenant.
    about_bob = await check(stub, globex_root, "collection/docs", principal="client:bob")
    assert not about_bob.allowed
    # bob, authenticated in globex, does not carry acme's binding there.
    assert not (await check(stub, caller("bob", globex, []), "collection/docs")).allowed
    # And acme is untouched.
    assert (await check(stub, caller("bob", acme, []), "collection/docs")).allowed


async def test_role_and_tenant_fields_smuggled_into_a_request_are_ignored(
    served: Served,
) -> None:
    stub, channel = served.stub, served.channel
    acme, globex = tenant(), tenant()
    root = caller("root", acme, ["admin"])
    # PutRoleRequest with extra fields the contract does not have: a "tenant" (field 15)
    # and a "builtin"/"owner" at unknown numbers. gRPC keeps them as unknown fields; the
    # servicer never reads them.
    body = T.PutRoleRequest(role=analyst_role("docs")).SerializeToString()
    smuggled = body + _string_field(15, globex) + _string_field(16, "roles/admin")
    # The bytes are a valid PutRoleRequest that keeps the extra fields as unknown ones.
    assert T.PutRoleRequest.FromString(smuggled).SerializeToString() == smuggled
    put = channel.unary_unary(
        "/datapunk.nexus.v1.PolicyService/PutRole",
        request_serializer=lambda raw: raw,
        response_deserializer=T.PutRoleResponse.FromString,
    )
    response = await put(smuggled, metadata=root, timeout=10)
    assert response.created
    globex_root = caller("root", globex, ["admin"])
    code, _ = await failure(
        stub.GetRole(T.GetRoleRequest(name="roles/analyst"), metadata=globex_root, timeout=10)
    )
    assert code == grpc.StatusCode.NOT_FOUND
    # Output-only fields are not taken from the request: a role cannot be made built-in.
    role = analyst_role("docs")
    role.builtin = True
    stored = await stub.PutRole(T.PutRoleRequest(role=role), metadata=root, timeout=10)
    assert not stored.role.builtin
    # Built-in roles cannot be overwritten to widen or narrow them.
    admin_role = analyst_role("docs")
    admin_role.name = "roles/reader"
    code, error = await failure(
        stub.PutRole(T.PutRoleRequest(role=admin_role), metadata=root, timeout=10)
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "BUILTIN_ROLE"
    # A name cannot reach into another tenant either: it is refused by the contract.
    sneaky = analyst_role("docs")
    sneaky.name = f"tenants/{globex}/roles/analyst"
    code, error = await failure(
        stub.PutRole(T.PutRoleRequest(role=sneaky), metadata=root, timeout=10)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # Roles in the credential of a caller never come from the request: CheckPermission
    # about oneself has no roles field to set, and asking about "oneself" by another
    # principal's name needs admin.
    bob = caller("bob", acme, [])
    code, _ = await failure(check(stub, bob, "collection/docs", principal="client:root"))
    assert code == grpc.StatusCode.PERMISSION_DENIED


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string_field(number: int, value: str) -> bytes:
    data = value.encode()
    return _varint((number << 3) | 2) + _varint(len(data)) + data


async def test_platform_permissions_only_in_the_platform_tenant(served: Served) -> None:
    stub, acme = served.stub, tenant()
    root = caller("root", acme, ["admin"])
    role = T.Role(
        name="roles/keys",
        permissions=[
            T.Permission(
                resource_type=T.RESOURCE_TYPE_PLATFORM,
                name_pattern="*",
                actions=[T.ACTION_ADMIN],
            )
        ],
    )
    code, error = await failure(
        stub.PutRole(T.PutRoleRequest(role=role), metadata=root, timeout=10)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "PLATFORM_PERMISSION"
    signing = "platform/datapunk.nexus.v1.AuthService.RotateSigningKey"
    assert not (await check(stub, root, signing, T.ACTION_ADMIN)).allowed


async def test_bad_input_gets_invalid_argument_with_the_fields(served: Served) -> None:
    stub, acme = served.stub, tenant()
    root = caller("root", acme, ["admin"])
    bad = T.Role(
        name="roles/Bad Name",
        permissions=[
            T.Permission(resource_type=T.RESOURCE_TYPE_UNSPECIFIED, name_pattern="a/b", actions=[])
        ],
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutRole(T.PutRoleRequest(role=bad), metadata=root, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = error_from_rpc_error(caught.value)
    fields = {v.field for v in getattr(error, "violations", [])}
    assert {
        "role.name",
        "role.permissions[0].resource_type",
        "role.permissions[0].name_pattern",
        "role.permissions[0].actions",
    } <= fields
    for request in (
        T.GrantRoleRequest(principal="bob", role="roles/reader"),
        T.GrantRoleRequest(principal="client:" + "x" * 600, role="roles/reader"),
        T.GrantRoleRequest(principal="client:bob\n", role="roles/reader"),
    ):
        code, _ = await failure(stub.GrantRole(request, metadata=root, timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = await failure(check(stub, root, "collection/a/b"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_change_through_one_instance_applies_in_another(
    settings: Settings, pool: AsyncConnectionPool
) -> None:
    acme = tenant()
    root = caller("root", acme, ["admin"])
    bob = caller("bob", acme, [])
    fast = fast_reloads(settings)
    async for first in serve(fast, pool):
        async for second in serve(fast, pool):
            assert not (await check(second.stub, bob, "collection/docs")).allowed
            await first.stub.PutRole(
                T.PutRoleRequest(role=analyst_role("docs")), metadata=root, timeout=10
            )
            await first.stub.GrantRole(
                T.GrantRoleRequest(principal="client:bob", role="roles/analyst"),
                metadata=root,
                timeout=10,
            )
            async with asyncio.timeout(5):
                while not (await check(second.stub, bob, "collection/docs")).allowed:
                    await asyncio.sleep(0.05)


# --- classification labels ------------------------------------------------------------


def internal_reader_role() -> Any:
    """Reads anything of the tenant classified at most internal."""
    return T.Role(
        name="roles/internal-reader",
        permissions=[
            T.Permission(
                resource_type=T.RESOURCE_TYPE_ANY,
                name_pattern="*",
                actions=[T.ACTION_READ],
                conditions=T.Conditions(max_classification=T.CLASSIFICATION_INTERNAL),
            )
        ],
    )


def label(resource: str, level: int) -> Any:
    """A LabelResourceRequest; ``level`` may be a number no Classification has."""
    request = T.LabelResourceRequest(label=T.ResourceLabel(resource=resource))
    request.label.classification = level  # type: ignore[assignment]  # undefined ones too
    return request


async def test_labels_decide_what_classification_conditions_reach(served: Served) -> None:
    stub, acme = served.stub, tenant()
    root = caller("root", acme, ["admin"])
    bob = caller("bob", acme, ["internal-reader"])
    await stub.PutRole(T.PutRoleRequest(role=internal_reader_role()), metadata=root, timeout=10)

    # Unlabelled counts as restricted: the condition reaches nothing yet.
    assert not (await check(stub, bob, "collection/docs")).allowed

    first = await stub.LabelResource(
        label("collection/docs", T.CLASSIFICATION_INTERNAL), metadata=root, timeout=10
    )
    assert first.label.resource == "collection/docs"
    assert first.label.classification == T.CLASSIFICATION_INTERNAL
    assert first.label.HasField("update_time")
    assert first.previous_classification == T.CLASSIFICATION_UNSPECIFIED
    assert (await check(stub, bob, "collection/docs")).allowed
    assert not (await check(stub, bob, "collection/other")).allowed
    # A "what if" question names a level and gets the answer at that level.
    what_if = await check(stub, bob, "collection/docs", classification=T.CLASSIFICATION_RESTRICTED)
    assert not what_if.allowed

    raised = await stub.LabelResource(
        label("collection/docs", T.CLASSIFICATION_CONFIDENTIAL), metadata=root, timeout=10
    )
    assert raised.previous_classification == T.CLASSIFICATION_INTERNAL
    assert not (await check(stub, bob, "collection/docs")).allowed
    got = await stub.GetResourceLabel(
        T.GetResourceLabelRequest(resource="collection/docs"), metadata=root, timeout=10
    )
    assert got.label == raised.label

    for name in ("series/cpu", "layer/roads", "dataset/a", "pipeline/b"):
        await stub.LabelResource(label(name, T.CLASSIFICATION_PUBLIC), metadata=root, timeout=10)
    resources: list[str] = []
    token = ""
    while True:
        page = await stub.ListResourceLabels(
            T.ListResourceLabelsRequest(page_size=2, page_token=token), metadata=root, timeout=10
        )
        resources.extend(one.resource for one in page.labels)
        token = page.next_page_token
        if not token:
            break
    assert resources == ["collection/docs", "dataset/a", "layer/roads", "pipeline/b", "series/cpu"]

    deleted = await stub.DeleteResourceLabel(
        T.DeleteResourceLabelRequest(resource="collection/docs"), metadata=root, timeout=10
    )
    assert deleted.previous_classification == T.CLASSIFICATION_CONFIDENTIAL
    assert not (await check(stub, bob, "collection/docs")).allowed
    for call in (
        stub.DeleteResourceLabel(
            T.DeleteResourceLabelRequest(resource="collection/docs"), metadata=root, timeout=10
        ),
        stub.GetResourceLabel(
            T.GetResourceLabelRequest(resource="collection/docs"), metadata=root, timeout=10
        ),
    ):
        code, error = await failure(call)
        assert code == grpc.StatusCode.NOT_FOUND
        assert error.reason == "LABEL_NOT_FOUND"


async def test_labels_stay_in_their_tenant(served: Served) -> None:
    stub, acme, other = served.stub, tenant(), tenant()
    for who in (acme, other):
        await stub.PutRole(
            T.PutRoleRequest(role=internal_reader_role()),
            metadata=caller("root", who, ["admin"]),
            timeout=10,
        )
    await stub.LabelResource(
        label("collection/docs", T.CLASSIFICATION_PUBLIC),
        metadata=caller("root", other, ["admin"]),
        timeout=10,
    )
    bob = caller("bob", acme, ["internal-reader"])
    assert not (await check(stub, bob, "collection/docs")).allowed
    assert (await check(stub, caller("bob", other, ["internal-reader"]), "collection/docs")).allowed
    root = caller("root", acme, ["admin"])
    code, error = await failure(
        stub.GetResourceLabel(
            T.GetResourceLabelRequest(resource="collection/docs"), metadata=root, timeout=10
        )
    )
    assert (code, error.reason) == (grpc.StatusCode.NOT_FOUND, "LABEL_NOT_FOUND")
    assert not (await stub.ListResourceLabels(T.ListResourceLabelsRequest(), metadata=root)).labels


async def test_bad_labels_and_non_admins_are_refused(served: Served) -> None:
    stub, acme = served.stub, tenant()
    root = caller("root", acme, ["admin"])
    for request, field in [
        (label("route/datapunk.nexus.v1.PolicyService.PutRole", 4), "label.resource"),
        (label("platform/anything", T.CLASSIFICATION_PUBLIC), "label.resource"),
        (label("collection/*", T.CLASSIFICATION_PUBLIC), "label.resource"),
        (label("collection/a/b", T.CLASSIFICATION_PUBLIC), "label.resource"),
        (label("collection/docs", T.CLASSIFICATION_UNSPECIFIED), "label.classification"),
        (label("collection/docs", 99), "label.classification"),
    ]:
        code, error = await failure(stub.LabelResource(request, metadata=root, timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, request
        assert field in {v.field for v in getattr(error, "violations", [])}, request
    code, _ = await failure(stub.LabelResource(T.LabelResourceRequest(), metadata=root))
    assert code == grpc.StatusCode.INVALID_ARGUMENT

    writer = caller("wendy", acme, ["writer"])
    code, error = await failure(
        stub.LabelResource(
            label("collection/docs", T.CLASSIFICATION_PUBLIC), metadata=writer, timeout=10
        )
    )
    assert (code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")


async def test_a_label_set_through_one_instance_applies_in_another(
    settings: Settings, pool: AsyncConnectionPool
) -> None:
    acme = tenant()
    root = caller("root", acme, ["admin"])
    bob = caller("bob", acme, ["internal-reader"])
    fast = fast_reloads(settings)
    async for first in serve(fast, pool):
        async for second in serve(fast, pool):
            await first.stub.PutRole(
                T.PutRoleRequest(role=internal_reader_role()), metadata=root, timeout=10
            )
            assert not (await check(second.stub, bob, "collection/docs")).allowed
            await first.stub.LabelResource(
                label("collection/docs", T.CLASSIFICATION_PUBLIC), metadata=root, timeout=10
            )
            async with asyncio.timeout(5):
                while not (await check(second.stub, bob, "collection/docs")).allowed:
                    await asyncio.sleep(0.05)
