"""The policy on the real PostgreSQL: roles and bindings persist (migration 0005), a
second authorizer (another Nexus instance) sees changes through the version check, lists
page through stable tokens, concurrent changes of one tenant all land, and a database
that cannot be reached fails closed."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator

import pytest
from datapunk_nexus.identity.policy.admin import PolicyAdmin
from datapunk_nexus.identity.policy.authorizer import PolicyAuthorizer
from datapunk_nexus.identity.policy.rules import Permission, Role
from datapunk_nexus.identity.policy.store import PolicyStore
from datapunk_shared.auth.identity import Identity
from datapunk_shared.config import PolicySettings, Settings
from datapunk_shared.db import apply_migrations, load_migrations
from datapunk_shared.errors import InvalidArgument, NotFound, Unavailable
from psycopg_pool import AsyncConnectionPool


@pytest.fixture(scope="module")
async def pool(settings: Settings) -> AsyncIterator[AsyncConnectionPool]:
    pool = AsyncConnectionPool(settings.engines.postgres.url, min_size=1, max_size=6, open=False)
    await pool.open(wait=True, timeout=15)
    async with pool.connection() as conn:
        await apply_migrations(conn, "nexus", load_migrations("datapunk_nexus.migrations"))
    yield pool
    await pool.close()


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def admin_of(tenant_: str) -> Identity:
    return Identity(subject="user:root", tenant=tenant_, kind="user", roles=frozenset({"admin"}))


def analyst(*patterns: str) -> Role:
    return Role("analyst", tuple(Permission("collection", p, ("read",)) for p in patterns))


async def test_roles_and_bindings_persist_for_a_new_instance(pool: AsyncConnectionPool) -> None:
    acme = tenant()
    store = PolicyStore(pool)
    stored, created = await store.put_role(acme, analyst("docs", "sensor-*"))
    assert created
    assert stored.create_time is not None
    again, created = await store.put_role(acme, analyst("docs"))
    assert not created
    assert again.permissions == (Permission("collection", "docs", ("read",)),)
    binding, created = await store.grant(acme, "client:bob", "analyst", builtin=False)
    assert created
    assert binding.create_time is not None
    _, created = await store.grant(acme, "client:bob", "analyst", builtin=False)
    assert not created

    fresh = PolicyAuthorizer(PolicyStore(pool), PolicySettings())
    bob = Identity(subject="client:bob", tenant=acme, kind="client")
    assert (await fresh.decide(bob, "read", "collection/docs")).allowed
    assert not (await fresh.decide(bob, "read", "collection/sensor-1")).allowed
    snapshot = await store.snapshot(acme)
    assert snapshot.version == 4  # two puts and two grants, each bumped the version


async def test_a_second_instance_sees_changes_within_its_reload_interval(
    pool: AsyncConnectionPool,
) -> None:
    acme = tenant()
    settings = PolicySettings(reload_interval=0.1)
    first_store, second_store = PolicyStore(pool), PolicyStore(pool)
    first = PolicyAuthorizer(first_store, settings)
    second = PolicyAuthorizer(second_store, settings)
    admin = PolicyAdmin(first_store, first)
    bob = Identity(subject="client:bob", tenant=acme, kind="client")
    await second.start()
    try:
        assert not (await second.decide(bob, "read", "collection/docs")).allowed
        await admin.put_role(admin_of(acme), analyst("docs"))
        await admin.grant(admin_of(acme), "client:bob", "analyst")
        # At once in the instance that made the change...
        assert (await first.decide(bob, "read", "collection/docs")).allowed
        # ...and within the reload interval in the other, without a restart.
        async with asyncio.timeout(5):
            while not (await second.decide(bob, "read", "collection/docs")).allowed:
                await asyncio.sleep(0.05)
        await admin.revoke(admin_of(acme), "client:bob", "analyst")
        async with asyncio.timeout(5):
            while (await second.decide(bob, "read", "collection/docs")).allowed:
                await asyncio.sleep(0.05)
    finally:
        await second.aclose()


async def test_deleting_a_role_deletes_its_bindings(pool: AsyncConnectionPool) -> None:
    acme = tenant()
    store = PolicyStore(pool)
    authorizer = PolicyAuthorizer(store, PolicySettings())
    admin = PolicyAdmin(store, authorizer)
    root = admin_of(acme)
    await admin.put_role(root, analyst("docs"))
    for who in ("client:a", "client:b"):
        await admin.grant(root, who, "analyst")
    await admin.grant(root, "client:a", "reader")
    assert await admin.delete_role(root, "analyst") == 2
    bindings, _ = await admin.list_bindings(
        root, principal="", role_id="", page_size=0, page_token=""
    )
    assert [(b.principal, b.role_id) for b in bindings] == [("client:a", "reader")]
    with pytest.raises(NotFound) as caught:
        await admin.delete_role(root, "analyst")
    assert caught.value.reason == "ROLE_NOT_FOUND"
    with pytest.raises(NotFound) as caught:
        await admin.grant(root, "client:a", "analyst")
    assert caught.value.reason == "ROLE_NOT_FOUND"


async def test_roles_page_in_name_order_with_the_builtin_ones(pool: AsyncConnectionPool) -> None:
    acme = tenant()
    store = PolicyStore(pool)
    admin = PolicyAdmin(store, PolicyAuthorizer(store, PolicySettings()))
    root = admin_of(acme)
    names = [f"r{i:02d}" for i in range(7)] + ["aa", "b-team", "zz"]
    for name in names:
        await admin.put_role(root, Role(name, (Permission("series", name, ("read",)),)))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page, token = await admin.list_roles(root, 3, token)
        pages += 1
        assert len(page) <= 3
        seen.extend(r.role_id for r in page)
        if not token:
            break
    assert seen == sorted([*names, "admin", "reader", "writer"])
    assert pages == 5
    # Another tenant's list shows only its own (built-in) roles.
    other, _ = await admin.list_roles(admin_of(tenant()), 100, "")
    assert [r.role_id for r in other] == ["admin", "reader", "writer"]
    with pytest.raises(InvalidArgument) as caught:
        await admin.list_roles(root, 3, "not-a-token")
    assert caught.value.reason == "INVALID_PAGE_TOKEN"


async def test_bindings_page_with_filters(pool: AsyncConnectionPool) -> None:
    acme = tenant()
    store = PolicyStore(pool)
    admin = PolicyAdmin(store, PolicyAuthorizer(store, PolicySettings()))
    root = admin_of(acme)
    for index in range(5):
        for role_id in ("reader", "writer"):
            await admin.grant(root, f"client:c{index}", role_id)

    async def every(principal: str = "", role_id: str = "") -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        token = ""
        while True:
            page, token = await admin.list_bindings(
                root, principal=principal, role_id=role_id, page_size=2, page_token=token
            )
            found.extend((b.principal, b.role_id) for b in page)
            if not token:
                return found

    everything = await every()
    assert everything == sorted(everything)
    assert len(everything) == 10
    assert await every(role_id="writer") == [(f"client:c{i}", "writer") for i in range(5)]
    assert await every(principal="client:c3") == [("client:c3", "reader"), ("client:c3", "writer")]
    # A token is bound to its filters.
    _, token = await admin.list_bindings(
        root, principal="", role_id="writer", page_size=2, page_token=""
    )
    with pytest.raises(InvalidArgument) as caught:
        await admin.list_bindings(
            root, principal="", role_id="reader", page_size=2, page_token=token
        )
    assert caught.value.reason == "INVALID_PAGE_TOKEN"


async def test_concurrent_changes_of_one_tenant_all_land(pool: AsyncConnectionPool) -> None:
    acme = tenant()
    store = PolicyStore(pool)
    await asyncio.gather(
        *(store.grant(acme, f"client:c{i}", "reader", builtin=True) for i in range(20))
    )
    snapshot = await store.snapshot(acme)
    assert len(snapshot.bindings) == 20
    assert snapshot.version == 20


async def test_an_unreachable_database_fails_closed() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = AsyncConnectionPool(
        f"postgresql://postgres@127.0.0.1:{port}/x", min_size=0, max_size=1, open=False
    )
    await dead.open(wait=False)
    try:
        authorizer = PolicyAuthorizer(
            PolicyStore(dead, pool_timeout=0.5), PolicySettings(pool_timeout=0.5)
        )
        bob = Identity(
            subject="client:bob", tenant="acme", kind="client", roles=frozenset({"admin"})
        )
        with pytest.raises(Unavailable) as caught:
            await authorizer.decide(bob, "read", "collection/docs")
        assert caught.value.reason == "POLICY_UNAVAILABLE"
        with pytest.raises(Unavailable) as engine:
            await PolicyStore(dead, pool_timeout=0.5).put_role("acme", analyst("docs"))
        assert engine.value.metadata == {"engine": "postgres"}
    finally:
        await dead.close()
