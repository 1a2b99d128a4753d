"""API keys against the real PostgreSQL (``engines.postgres.url``, with the Nexus's
migrations applied): create, get, list with pagination and state filters, revoke, rotate
with a grace period, expiry, last-used coalescing, tenant isolation, and authentication
with every refusal reason. Time is a clock the test moves; every test has its own
tenants."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from datapunk_nexus.identity.api_keys import (
    ApiKeys,
    KeyState,
    build_api_keys,
    load_api_keys,
    parse_api_key,
)
from datapunk_nexus.identity.api_keys.key_format import format_api_key, new_secret
from datapunk_shared.auth.identity import Identity
from datapunk_shared.config import ApiKeySettings, Settings
from datapunk_shared.db import apply_migrations, load_migrations
from datapunk_shared.errors import (
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from datapunk_shared.secrets import FileSecretProvider
from prometheus_client import REGISTRY
from psycopg_pool import AsyncConnectionPool

from tests.support import free_port

PEPPER = b"integration-test-pepper-of-32-bytes!"


class Clock:
    """The time the API-key parts see; tests move it."""

    def __init__(self) -> None:
        # Whole microseconds, like PostgreSQL's timestamptz.
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture(scope="module")
async def pool(settings: Settings) -> AsyncIterator[AsyncConnectionPool]:
    pool = AsyncConnectionPool(settings.engines.postgres.url, min_size=1, max_size=4, open=False)
    await pool.open(wait=True, timeout=15)
    async with pool.connection() as conn:
        await apply_migrations(conn, "nexus", load_migrations("datapunk_nexus.migrations"))
    yield pool
    await pool.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(pool: AsyncConnectionPool, clock: Clock, **overrides: Any) -> ApiKeys:
    return build_api_keys(ApiKeySettings(**overrides), pool, PEPPER, clock=clock)


@pytest.fixture
async def keys(pool: AsyncConnectionPool, clock: Clock) -> AsyncIterator[ApiKeys]:
    api_keys = make(pool, clock)
    yield api_keys
    await api_keys.authenticator.close()


def admin(tenant: str | None = None, *, roles: frozenset[str] | None = None) -> Identity:
    return Identity(
        subject="user:alice",
        tenant=tenant or f"t-{uuid.uuid4().hex[:12]}",
        kind="user",
        roles=roles if roles is not None else frozenset({"admin", "reader"}),
    )


async def refused(keys: ApiKeys, presented: str) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as caught:
        await keys.authenticator.authenticate(presented)
    error = caught.value
    # Nothing of the presented key in what the caller hears.
    secret = presented[17:]
    if secret:
        assert secret not in error.message
        assert all(secret not in v for v in error.metadata.values())
    return error


async def last_used(pool: AsyncConnectionPool, key_id: str) -> datetime | None:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT last_used_time FROM nexus.api_keys WHERE id = %s", (key_id,)
        )
        row = await cursor.fetchone()
    assert row is not None
    value: datetime | None = row[0]
    return value


# -- create, get, authenticate ---------------------------------------------------------


async def test_a_created_key_authenticates_as_itself(keys: ApiKeys, clock: Clock) -> None:
    caller = admin()
    issued = await keys.manager.create(
        caller, name="ingest bot", roles=["reader"], scopes=["lake.read", "lake.read"]
    )
    key = issued.api_key
    assert parse_api_key(issued.key).key_id == key.id
    assert issued.key.startswith(key.prefix + "_")
    assert (key.tenant, key.name, key.roles, key.scopes) == (
        caller.tenant,
        "ingest bot",
        ("reader",),
        ("lake.read",),
    )
    assert (key.created_by, key.create_time, key.expire_time) == ("user:alice", clock.now, None)
    assert await keys.manager.get(caller, key.id) == key

    identity = await keys.authenticator.authenticate(issued.key)
    assert identity == Identity(
        subject=f"key:{key.id}",
        tenant=caller.tenant,
        kind="api_key",
        roles=frozenset({"reader"}),
        scopes=frozenset({"lake.read"}),
        issuer="datapunk:api-key",
        credential_id=key.id,
        expires_at=None,
    )


async def test_only_a_hash_of_the_secret_is_stored(
    keys: ApiKeys, pool: AsyncConnectionPool
) -> None:
    issued = await keys.manager.create(admin(), name="k")
    secret = parse_api_key(issued.key).secret
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT row_to_json(k)::text, secret_hash FROM nexus.api_keys k WHERE id = %s",
            (issued.api_key.id,),
        )
        row = await cursor.fetchone()
    assert row is not None
    assert secret not in row[0]
    assert issued.key not in row[0]
    assert len(row[1]) == 32


async def test_wrong_secrets_unknown_ids_and_malformed_keys_are_refused_alike(
    keys: ApiKeys,
) -> None:
    issued = await keys.manager.create(admin(), name="k")
    key_id = issued.api_key.id
    wrong_secret = format_api_key(key_id, new_secret())  # valid checksum, wrong secret
    unknown_id = format_api_key("zzzzzzzzzzzz", new_secret())
    malformed = issued.key[:-1] + ("A" if issued.key[-1] != "A" else "B")
    errors = [await refused(keys, p) for p in (wrong_secret, unknown_id, malformed, "")]
    assert {(e.message, e.reason, tuple(e.metadata.items())) for e in errors} == {
        ("the API key is not valid", "INVALID_API_KEY", ())
    }
    await keys.authenticator.authenticate(issued.key)  # the right one still works


async def test_a_key_may_only_carry_roles_its_creator_holds(keys: ApiKeys) -> None:
    writer = admin(roles=frozenset({"writer", "reader"}))
    with pytest.raises(PermissionDenied) as caught:
        await keys.manager.create(writer, name="k", roles=["reader", "superuser", "root"])
    assert caught.value.reason == "ROLE_NOT_HELD"
    assert caught.value.metadata == {"roles": "root,superuser"}
    # The tenant's admin hands out any role of its tenant.
    issued = await keys.manager.create(admin(), name="k", roles=["reader", "auditor"])
    assert issued.api_key.roles == ("auditor", "reader")
    nobody = Identity(subject="service:x", tenant="", kind="service")
    with pytest.raises(PermissionDenied) as no_tenant:
        await keys.manager.create(nobody, name="k")
    assert no_tenant.value.reason == "NO_TENANT"


async def test_guessing_a_keys_secret_gets_nowhere_and_is_counted(
    keys: ApiKeys, pool: AsyncConnectionPool
) -> None:
    issued = await keys.manager.create(admin(), name="target")
    key_id = issued.api_key.id

    def refusals() -> float:
        value = REGISTRY.get_sample_value(
            "datapunk_api_key_authentications_total", {"outcome": "INVALID_API_KEY"}
        )
        return value or 0.0

    before = refusals()
    for _ in range(200):  # well-formed guesses, checksums and all: each one a lookup
        guess = format_api_key(key_id, new_secret())
        assert (await refused(keys, guess)).reason == "INVALID_API_KEY"
    assert refusals() - before == 200
    await keys.authenticator.close()
    assert await last_used(pool, key_id) is None  # a failed guess is not a use
    await keys.authenticator.authenticate(issued.key)


# -- tenant isolation --------------------------------------------------------------------


async def test_another_tenants_key_is_invisible(keys: ApiKeys) -> None:
    alice, mallory = admin(), admin()
    issued = await keys.manager.create(alice, name="alice's")
    key_id = issued.api_key.id
    for attempt in (
        keys.manager.get(mallory, key_id),
        keys.manager.revoke(mallory, key_id),
        keys.manager.rotate(mallory, key_id, grace_period=timedelta(hours=1)),
    ):
        with pytest.raises(NotFound) as caught:
            await attempt
        assert caught.value.reason == "API_KEY_NOT_FOUND"
        assert caught.value.metadata == {"api_key": key_id}
    assert (await keys.manager.list(mallory)).items == []
    assert [k.id for k in (await keys.manager.list(alice)).items] == [key_id]
    # Mallory's attempts changed nothing: the key is neither revoked nor rotated.
    assert (await keys.manager.get(alice, key_id)).revoke_time is None
    assert (await keys.authenticator.authenticate(issued.key)).tenant == alice.tenant


# -- list --------------------------------------------------------------------------------


async def test_list_pages_newest_first_and_filters_by_state(keys: ApiKeys, clock: Clock) -> None:
    caller = admin()
    created = []
    for i in range(7):
        expire = clock.now + timedelta(minutes=30) if i in (1, 4) else None
        created.append(
            (await keys.manager.create(caller, name=f"k{i}", expire_time=expire)).api_key
        )
        clock.advance(seconds=1)
    await keys.manager.revoke(caller, created[2].id)
    clock.advance(hours=1)  # k1 and k4 have expired

    pages, token = [], ""
    while True:
        page = await keys.manager.list(caller, page_size=3, page_token=token)
        pages.append([k.name for k in page.items])
        token = page.next_page_token
        if not token:
            break
    assert pages == [["k6", "k5", "k4"], ["k3", "k2", "k1"], ["k0"]]

    async def names(state: KeyState) -> list[str]:
        return [k.name for k in (await keys.manager.list(caller, state=state)).items]

    assert await names(KeyState.ACTIVE) == ["k6", "k5", "k3", "k0"]
    assert await names(KeyState.REVOKED) == ["k2"]
    assert await names(KeyState.EXPIRED) == ["k4", "k1"]

    # Keys created between pages never shift them: a page starts after the last id.
    first = await keys.manager.list(caller, page_size=2)
    await keys.manager.create(caller, name="newer")
    second = await keys.manager.list(caller, page_size=2, page_token=first.next_page_token)
    assert [k.name for k in second.items] == ["k4", "k3"]


@pytest.mark.parametrize("token", ["%%%", "bm90IGpzb24", "eyJwIjpbMSwyLDNdfQ", "e30"])
async def test_a_page_token_we_did_not_issue_is_refused(keys: ApiKeys, token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await keys.manager.list(admin(), page_token=token)
    assert caught.value.reason == "INVALID_PAGE_TOKEN"
    assert [v.field for v in caught.value.violations] == ["page_token"]


async def test_a_page_token_of_another_filter_is_refused(keys: ApiKeys) -> None:
    caller = admin()
    for i in range(3):
        await keys.manager.create(caller, name=f"k{i}")
    token = (await keys.manager.list(caller, page_size=1)).next_page_token
    with pytest.raises(InvalidArgument) as caught:
        await keys.manager.list(caller, state=KeyState.ACTIVE, page_token=token)
    assert caught.value.reason == "INVALID_PAGE_TOKEN"


async def test_page_sizes(keys: ApiKeys, pool: AsyncConnectionPool, clock: Clock) -> None:
    caller = admin()
    for i in range(5):
        await keys.manager.create(caller, name=f"k{i}")
    small = make(pool, clock, max_page_size=2)
    page = await small.manager.list(caller, page_size=1000)
    assert len(page.items) == 2
    assert page.next_page_token
    with pytest.raises(InvalidArgument):
        await keys.manager.list(caller, page_size=-1)


# -- revoke ------------------------------------------------------------------------------


async def test_revocation_is_immediate_here_and_within_the_cache_lifetime_elsewhere(
    keys: ApiKeys, pool: AsyncConnectionPool, clock: Clock
) -> None:
    caller = admin()
    issued = await keys.manager.create(caller, name="k")
    other_instance = make(pool, clock, cache_seconds=5)
    await keys.authenticator.authenticate(issued.key)  # cached here
    await other_instance.authenticator.authenticate(issued.key)  # cached there

    revoked = await keys.manager.revoke(caller, issued.api_key.id)
    assert revoked.revoke_time == clock.now
    assert revoked.state(clock.now) is KeyState.REVOKED
    error = await refused(keys, issued.key)
    assert (error.reason, error.metadata) == ("API_KEY_REVOKED", {"api_key": revoked.id})

    # The other instance still has its verification, for at most cache_seconds.
    clock.advance(seconds=4)
    await other_instance.authenticator.authenticate(issued.key)
    clock.advance(seconds=1)
    assert (await refused(other_instance, issued.key)).reason == "API_KEY_REVOKED"

    # Revoking again changes nothing.
    clock.advance(seconds=10)
    again = await keys.manager.revoke(caller, revoked.id)
    assert again.revoke_time == revoked.revoke_time
    await other_instance.authenticator.close()


async def test_a_wrong_secret_of_a_revoked_key_learns_nothing(keys: ApiKeys) -> None:
    caller = admin()
    issued = await keys.manager.create(caller, name="k")
    await keys.manager.revoke(caller, issued.api_key.id)
    guess = format_api_key(issued.api_key.id, new_secret())
    assert (await refused(keys, guess)).reason == "INVALID_API_KEY"


# -- rotate ------------------------------------------------------------------------------


async def test_rotation_with_a_grace_period(keys: ApiKeys, clock: Clock) -> None:
    caller = admin()
    first = await keys.manager.create(caller, name="k", roles=["reader"])
    await keys.authenticator.authenticate(first.key)
    clock.advance(seconds=1)

    second = await keys.manager.rotate(caller, first.api_key.id, grace_period=timedelta(minutes=10))
    assert second.key != first.key
    assert second.api_key.id == first.api_key.id
    assert second.api_key.rotate_time == clock.now
    assert second.previous_key_expire_time == clock.now + timedelta(minutes=10)
    assert (second.api_key.name, second.api_key.roles) == ("k", ("reader",))

    old = await keys.authenticator.authenticate(first.key)
    assert old.expires_at == (clock.now + timedelta(minutes=10)).timestamp()
    assert (await keys.authenticator.authenticate(second.key)).expires_at is None

    clock.advance(minutes=9, seconds=59)
    await keys.authenticator.authenticate(first.key)  # cached, still within grace
    clock.advance(seconds=1)
    assert (await refused(keys, first.key)).reason == "INVALID_API_KEY"
    await keys.authenticator.authenticate(second.key)

    # A second rotation: the secret it replaces gets the grace, the first none at all.
    third = await keys.manager.rotate(caller, first.api_key.id, grace_period=timedelta(hours=1))
    await keys.authenticator.authenticate(second.key)
    await keys.authenticator.authenticate(third.key)
    assert (await refused(keys, first.key)).reason == "INVALID_API_KEY"


async def test_rotation_without_grace_stops_the_old_secret_at_once(
    keys: ApiKeys, clock: Clock
) -> None:
    caller = admin()
    first = await keys.manager.create(caller, name="k")
    await keys.authenticator.authenticate(first.key)  # cached
    second = await keys.manager.rotate(caller, first.api_key.id)
    assert second.previous_key_expire_time is None
    assert (await refused(keys, first.key)).reason == "INVALID_API_KEY"
    await keys.authenticator.authenticate(second.key)


async def test_the_grace_period_never_outlives_the_key(keys: ApiKeys, clock: Clock) -> None:
    caller = admin()
    first = await keys.manager.create(
        caller, name="k", expire_time=clock.now + timedelta(minutes=5)
    )
    second = await keys.manager.rotate(caller, first.api_key.id, grace_period=timedelta(days=1))
    assert second.previous_key_expire_time == clock.now + timedelta(minutes=5)
    await keys.authenticator.authenticate(first.key)
    clock.advance(minutes=5)
    # The replaced secret's grace ended with the key: it is no longer the key's at all.
    assert (await refused(keys, first.key)).reason == "INVALID_API_KEY"
    assert (await refused(keys, second.key)).reason == "API_KEY_EXPIRED"


async def test_revoked_and_expired_keys_cannot_be_rotated(keys: ApiKeys, clock: Clock) -> None:
    caller = admin()
    revoked = await keys.manager.create(caller, name="r")
    await keys.manager.revoke(caller, revoked.api_key.id)
    expiring = await keys.manager.create(
        caller, name="e", expire_time=clock.now + timedelta(seconds=1)
    )
    clock.advance(seconds=1)
    for key_id, reason in (
        (revoked.api_key.id, "API_KEY_REVOKED"),
        (expiring.api_key.id, "API_KEY_EXPIRED"),
    ):
        with pytest.raises(FailedPrecondition) as caught:
            await keys.manager.rotate(caller, key_id)
        assert caught.value.reason == reason
    with pytest.raises(InvalidArgument) as bad_grace:
        await keys.manager.rotate(caller, revoked.api_key.id, grace_period=timedelta(days=8))
    assert bad_grace.value.reason == "INVALID_GRACE_PERIOD"


async def test_a_revoked_rotated_key_loses_its_grace_too(keys: ApiKeys) -> None:
    caller = admin()
    first = await keys.manager.create(caller, name="k")
    second = await keys.manager.rotate(caller, first.api_key.id, grace_period=timedelta(hours=1))
    await keys.manager.revoke(caller, first.api_key.id)
    for presented in (first.key, second.key):
        assert (await refused(keys, presented)).reason == "API_KEY_REVOKED"


# -- expiry ------------------------------------------------------------------------------


async def test_expiry_applies_to_cached_keys_too(keys: ApiKeys, clock: Clock) -> None:
    caller = admin()
    expire = clock.now + timedelta(hours=1)
    issued = await keys.manager.create(caller, name="k", expire_time=expire)
    assert issued.api_key.expire_time == expire
    assert (await keys.authenticator.authenticate(issued.key)).expires_at == expire.timestamp()
    clock.advance(minutes=59, seconds=59)
    await keys.authenticator.authenticate(issued.key)
    clock.advance(seconds=1)
    error = await refused(keys, issued.key)
    assert (error.reason, error.metadata) == ("API_KEY_EXPIRED", {"api_key": issued.api_key.id})
    assert (await keys.manager.get(caller, issued.api_key.id)).state(clock.now) is KeyState.EXPIRED


async def test_expiry_bounds(pool: AsyncConnectionPool, clock: Clock) -> None:
    keys = make(pool, clock, max_lifetime_days=30)
    caller = admin()
    with pytest.raises(InvalidArgument) as past:
        await keys.manager.create(caller, name="k", expire_time=clock.now)
    assert past.value.reason == "EXPIRE_TIME_PASSED"
    with pytest.raises(InvalidArgument) as late:
        await keys.manager.create(caller, name="k", expire_time=clock.now + timedelta(days=31))
    assert (late.value.reason, late.value.metadata) == (
        "EXPIRE_TIME_TOO_LATE",
        {"max_lifetime_days": "30"},
    )
    unset = await keys.manager.create(caller, name="k")
    assert unset.api_key.expire_time == clock.now + timedelta(days=30)


async def test_a_key_made_by_an_expiring_key_expires_with_it(keys: ApiKeys, clock: Clock) -> None:
    parent_end = clock.now + timedelta(hours=2)
    parent = await keys.manager.create(
        admin(), name="parent", roles=["reader"], expire_time=parent_end
    )
    as_parent = await keys.authenticator.authenticate(parent.key)

    child = await keys.manager.create(as_parent, name="child", roles=["reader"])
    assert child.api_key.expire_time == parent_end
    sooner = clock.now + timedelta(hours=1)
    assert (
        await keys.manager.create(as_parent, name="c2", expire_time=sooner)
    ).api_key.expire_time == sooner
    with pytest.raises(InvalidArgument) as caught:
        await keys.manager.create(
            as_parent, name="c3", expire_time=parent_end + timedelta(seconds=1)
        )
    assert caught.value.reason == "EXPIRE_TIME_TOO_LATE"
    assert child.api_key.created_by == f"key:{parent.api_key.id}"


# -- last-used time ----------------------------------------------------------------------


async def test_last_used_time_is_written_at_most_once_a_minute(
    keys: ApiKeys, pool: AsyncConnectionPool, clock: Clock
) -> None:
    issued = await keys.manager.create(admin(), name="k")
    key_id = issued.api_key.id
    assert await last_used(pool, key_id) is None
    started = clock.now

    await keys.authenticator.authenticate(issued.key)
    await keys.authenticator.close()
    assert await last_used(pool, key_id) == started

    async def xmin() -> str:
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT xmin::text FROM nexus.api_keys WHERE id = %s", (key_id,)
            )
            row = await cursor.fetchone()
        assert row is not None
        return str(row[0])

    version = await xmin()
    for _ in range(20):  # many calls within the minute: no write at all
        clock.advance(seconds=2)
        await keys.authenticator.authenticate(issued.key)
    await keys.authenticator.close()
    assert await xmin() == version
    assert await last_used(pool, key_id) == started

    # Another instance that has not written yet is held back by the row itself.
    other = make(pool, clock)
    await other.authenticator.authenticate(issued.key)
    await other.authenticator.close()
    assert await xmin() == version

    clock.advance(seconds=21)  # 61 s after the recorded use
    await keys.authenticator.authenticate(issued.key)
    await keys.authenticator.close()
    assert await last_used(pool, key_id) == started + timedelta(seconds=61)
    assert (await keys.manager.get(admin(issued.api_key.tenant), key_id)).last_used_time == (
        started + timedelta(seconds=61)
    )


# -- the pepper -------------------------------------------------------------------------


def _write_secret(directory: Path, name: str, value: bytes) -> None:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(value)
    os.chmod(path, 0o600)


async def test_the_pepper_comes_from_the_secret_provider(
    pool: AsyncConnectionPool, clock: Clock, tmp_path: Path
) -> None:
    settings = ApiKeySettings(pepper_secret="test/api-key-pepper")
    secrets = FileSecretProvider(tmp_path)
    with pytest.raises(NotFound) as missing:
        await load_api_keys(settings, pool, secrets, clock=clock)
    assert missing.value.reason == "SECRET_NOT_FOUND"

    _write_secret(tmp_path, "test/api-key-pepper", b"too short\n")
    with pytest.raises(ConfigError):
        await load_api_keys(settings, pool, secrets, clock=clock)

    _write_secret(tmp_path, "test/api-key-pepper", os.urandom(32).hex().encode() + b"\n")
    keys = await load_api_keys(settings, pool, secrets, clock=clock)
    issued = await keys.manager.create(admin(), name="k")
    await keys.authenticator.authenticate(issued.key)

    # Under another pepper the very same row verifies nothing: a copy of the table
    # without the pepper cannot check a key.
    _write_secret(tmp_path, "test/api-key-pepper", os.urandom(32).hex().encode())
    other = await load_api_keys(settings, pool, secrets, clock=clock)
    assert (await refused(other, issued.key)).reason == "INVALID_API_KEY"
    await keys.authenticator.close()


# -- engine trouble ----------------------------------------------------------------------


async def test_postgres_down_is_unavailable_never_unauthenticated(clock: Clock) -> None:
    dead = AsyncConnectionPool(
        f"postgresql://postgres@127.0.0.1:{free_port()}/x", min_size=0, max_size=1, open=False
    )
    await dead.open(wait=False)
    try:
        keys = build_api_keys(ApiKeySettings(pool_timeout=0.5), dead, PEPPER, clock=clock)
        valid_looking = format_api_key("abcdefghijkl", new_secret())
        calls = [
            keys.authenticator.authenticate(valid_looking),
            keys.manager.create(admin(), name="k"),
            keys.manager.list(admin()),
        ]
        for call in calls:
            with pytest.raises(Unavailable) as caught:
                await call
            assert (caught.value.reason, caught.value.metadata) == (
                "ENGINE_UNAVAILABLE",
                {"engine": "postgres"},
            )
        # A malformed key is refused before any database work, database or not.
        with pytest.raises(Unauthenticated):
            await keys.authenticator.authenticate("dpk_nope")
    finally:
        await dead.close()


async def test_the_table_refuses_what_the_code_never_writes(pool: AsyncConnectionPool) -> None:
    """The schema's own checks: id shape, hash size, tenant, paired grace columns."""
    base = {
        "id": uuid.uuid4().hex[:12],
        "tenant": f"t-{uuid.uuid4().hex[:12]}",
        "name": "n",
        "secret_hash": bytes(32),
        "created_by": "user:a",
        "create_time": datetime.now(UTC),
    }
    bad_rows: list[dict[str, Any]] = [
        {**base, "id": "ABC"},
        {**base, "secret_hash": b"short"},
        {**base, "tenant": ""},
        {**base, "previous_secret_hash": bytes(32)},
    ]
    for row in bad_rows:
        columns = ", ".join(row)
        values = ", ".join(f"%({c})s" for c in row)
        with pytest.raises(psycopg.errors.CheckViolation):
            async with pool.connection() as conn:
                await conn.execute(
                    f"INSERT INTO nexus.api_keys ({columns}) VALUES ({values})",
                    row,
                )
