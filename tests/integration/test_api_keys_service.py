"""ApiKeyService over real gRPC: an in-process ``grpc.aio`` server built with
``create_server`` and the shared Datapunk edges (protovalidate, error mapping, and the
shared authentication edge), the servicer registered by ``add_api_key_service``, the real
PostgreSQL behind it.

The shared edge takes bearer tokens; here its token checker is the API-key authenticator,
so each call is authenticated with an API key, the way the Nexus edge will authenticate
``x-api-key``. The first key of a tenant is made through the manager (bootstrap)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from datapunk.nexus.v1 import api_keys_pb2, api_keys_pb2_grpc
from datapunk_nexus.identity.api_keys import ApiKeys, ApiKeyServicer, add_api_key_service
from datapunk_nexus.identity.api_keys import build_api_keys as build
from datapunk_shared.auth.identity import Identity, identity_var
from datapunk_shared.auth.interceptor import CallerAuthenticator
from datapunk_shared.config import ApiKeySettings, Settings
from datapunk_shared.db import apply_migrations, load_migrations
from datapunk_shared.errors import DatapunkError, InvalidArgument, NotFound
from datapunk_shared.rpc.client import error_from_rpc_error
from datapunk_shared.rpc.interceptor import DatapunkServerInterceptor
from datapunk_shared.rpc.server import ServiceContext, create_server
from google.protobuf import duration_pb2, timestamp_pb2
from psycopg_pool import AsyncConnectionPool

PEPPER = b"grpc-test-pepper-of-at-least-32-bytes"
Stub = Any  # the generated stubs are untyped


class _ApiKeyAsBearer:
    """The shared edge's token checker, answering with the API-key authenticator."""

    def __init__(self, api_keys: ApiKeys) -> None:
        self._api_keys = api_keys

    async def verify(self, token: str) -> Identity:
        return await self._api_keys.authenticator.authenticate(token)


@pytest.fixture(scope="module")
async def pool(settings: Settings) -> AsyncIterator[AsyncConnectionPool]:
    pool = AsyncConnectionPool(settings.engines.postgres.url, min_size=1, max_size=4, open=False)
    await pool.open(wait=True, timeout=15)
    async with pool.connection() as conn:
        await apply_migrations(conn, "nexus", load_migrations("datapunk_nexus.migrations"))
    yield pool
    await pool.close()


async def _serve(
    settings: Settings, api_keys: ApiKeys, *, authenticate: bool
) -> AsyncIterator[Stub]:
    # The servicer is served here to API-key holders directly (in Nexus they come through
    # its entries, which authenticate them), so this checker accepts their identities.
    checker = CallerAuthenticator(_ApiKeyAsBearer(api_keys), cache_seconds=0, kinds=("api_key",))
    edges = DatapunkServerInterceptor(
        "test", access_log="off", authenticator=checker if authenticate else None
    )
    server, port = create_server("127.0.0.1:0", edges=edges)
    context = ServiceContext(settings=settings, service_settings=settings.nexus, server=server)
    add_api_key_service(context, api_keys)
    assert context.service_names == ["datapunk.nexus.v1.ApiKeyService"]
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield api_keys_pb2_grpc.ApiKeyServiceStub(channel)
    finally:
        await server.stop(None)
        for cleanup in context.cleanups:
            await cleanup()


@pytest.fixture
async def api_keys(pool: AsyncConnectionPool) -> ApiKeys:
    return build(ApiKeySettings(), pool, PEPPER)


@pytest.fixture
async def stub(settings: Settings, api_keys: ApiKeys) -> AsyncIterator[Stub]:
    async for served in _serve(settings, api_keys, authenticate=True):
        yield served


def _tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


async def bootstrap(api_keys: ApiKeys, tenant: str) -> str:
    """The first key of ``tenant``, an admin's, made through the manager."""
    admin = Identity(
        subject="user:root", tenant=tenant, kind="user", roles=frozenset({"admin", "reader"})
    )
    issued = await api_keys.manager.create(admin, name="bootstrap", roles=["admin", "reader"])
    return issued.key


def as_key(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


async def failure(
    call: Awaitable[Any], *, secret: str = ""
) -> tuple[grpc.StatusCode, DatapunkError]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    if secret:  # the key (its secret part) must appear nowhere in the answer
        hidden = secret[17:] if len(secret) > 17 else secret
        assert hidden not in (error.details() or "")
        assert all(
            hidden not in (v.decode("latin-1") if isinstance(v, bytes) else v)
            for _, v in error.trailing_metadata() or ()
        )
    return error.code(), error_from_rpc_error(error)


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


async def test_create_get_list_rotate_revoke_over_grpc(stub: Stub, api_keys: ApiKeys) -> None:
    tenant = _tenant()
    admin_key = await bootstrap(api_keys, tenant)
    admin_id = admin_key[4:16]
    expire = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)

    created = await stub.CreateApiKey(
        api_keys_pb2.CreateApiKeyRequest(
            name="ingest bot",
            roles=["reader"],
            scopes=["lake.read"],
            expire_time=_timestamp(expire),
        ),
        metadata=as_key(admin_key),
        timeout=10,
    )
    bot = created.api_key
    assert created.key.startswith(f"dpk_{bot.id}_")
    assert (bot.tenant, bot.name, bot.prefix, bot.created_by) == (
        tenant,
        "ingest bot",
        f"dpk_{bot.id}",
        f"key:{admin_id}",
    )
    assert (list(bot.roles), list(bot.scopes), bot.state) == (
        ["reader"],
        ["lake.read"],
        api_keys_pb2.API_KEY_STATE_ACTIVE,
    )
    assert bot.expire_time.ToDatetime(tzinfo=UTC) == expire
    assert not bot.HasField("revoke_time")

    # The new key is a credential of its own, and the secret is never shown again.
    got = await stub.GetApiKey(
        api_keys_pb2.GetApiKeyRequest(id=bot.id), metadata=as_key(created.key), timeout=10
    )
    # Authenticating this very call may have recorded the key's first use already.
    got.api_key.ClearField("last_used_time")
    assert got.api_key == bot
    assert created.key not in str(got)

    listed, token = [], ""
    while True:
        page = await stub.ListApiKeys(
            api_keys_pb2.ListApiKeysRequest(page_size=1, page_token=token),
            metadata=as_key(admin_key),
            timeout=10,
        )
        listed += [k.id for k in page.api_keys]
        token = page.next_page_token
        if not token:
            break
    assert listed == [bot.id, admin_id]

    rotated = await stub.RotateApiKey(
        api_keys_pb2.RotateApiKeyRequest(id=bot.id, grace_period=duration_pb2.Duration(seconds=60)),
        metadata=as_key(admin_key),
        timeout=10,
    )
    assert rotated.api_key.id == bot.id
    assert rotated.key != created.key
    assert rotated.HasField("previous_key_expire_time")
    for key in (created.key, rotated.key):  # both work during the grace period
        await stub.GetApiKey(
            api_keys_pb2.GetApiKeyRequest(id=bot.id), metadata=as_key(key), timeout=10
        )

    revoked = await stub.RevokeApiKey(
        api_keys_pb2.RevokeApiKeyRequest(id=bot.id), metadata=as_key(admin_key), timeout=10
    )
    assert revoked.api_key.state == api_keys_pb2.API_KEY_STATE_REVOKED
    assert revoked.api_key.HasField("revoke_time")
    for key in (created.key, rotated.key):
        code, error = await failure(
            stub.GetApiKey(api_keys_pb2.GetApiKeyRequest(id=bot.id), metadata=as_key(key)),
            secret=key,
        )
        assert (code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED")

    active = await stub.ListApiKeys(
        api_keys_pb2.ListApiKeysRequest(state=api_keys_pb2.API_KEY_STATE_ACTIVE),
        metadata=as_key(admin_key),
        timeout=10,
    )
    assert [k.id for k in active.api_keys] == [admin_id]


async def test_bad_input_gets_precise_statuses(stub: Stub, api_keys: ApiKeys) -> None:
    admin_key = await bootstrap(api_keys, _tenant())
    creds = as_key(admin_key)
    past = datetime.now(UTC) - timedelta(minutes=1)
    invalid: list[tuple[Callable[[], Awaitable[Any]], str]] = [
        (
            lambda: stub.CreateApiKey(api_keys_pb2.CreateApiKeyRequest(name=""), metadata=creds),
            "name",
        ),
        (
            lambda: stub.CreateApiKey(
                api_keys_pb2.CreateApiKeyRequest(name="x", roles=["Not A Role"]), metadata=creds
            ),
            "roles[0]",
        ),
        (
            lambda: stub.CreateApiKey(
                api_keys_pb2.CreateApiKeyRequest(name="x", expire_time=_timestamp(past)),
                metadata=creds,
            ),
            "expire_time",
        ),
        (lambda: stub.GetApiKey(api_keys_pb2.GetApiKeyRequest(id="../etc"), metadata=creds), "id"),
        (
            lambda: stub.RotateApiKey(
                api_keys_pb2.RotateApiKeyRequest(
                    id="abcdefghijkl", grace_period=duration_pb2.Duration(seconds=8 * 86400)
                ),
                metadata=creds,
            ),
            "grace_period",
        ),
        (
            lambda: stub.ListApiKeys(
                api_keys_pb2.ListApiKeysRequest(page_token="bm90IGEgdG9rZW4"), metadata=creds
            ),
            "page_token",
        ),
        (
            lambda: stub.ListApiKeys(
                api_keys_pb2.ListApiKeysRequest(state=9),  # type: ignore[arg-type]
                metadata=creds,
            ),
            "state",
        ),
    ]
    for call, field in invalid:
        code, error = await failure(call())
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert isinstance(error, InvalidArgument)
        assert {v.field for v in error.violations} == {field}

    # A writer (not a tenant admin) may hand out only the roles it holds.
    writer = await stub.CreateApiKey(
        api_keys_pb2.CreateApiKeyRequest(name="w", roles=["writer"]), metadata=creds
    )
    code, error = await failure(
        stub.CreateApiKey(
            api_keys_pb2.CreateApiKeyRequest(name="x", roles=["owner"]),
            metadata=as_key(writer.key),
        )
    )
    assert (code, error.reason, error.metadata) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_NOT_HELD",
        {"roles": "owner"},
    )
    code, error = await failure(
        stub.GetApiKey(api_keys_pb2.GetApiKeyRequest(id="zzzzzzzzzzzz"), metadata=creds)
    )
    assert (code, error.reason) == (grpc.StatusCode.NOT_FOUND, "API_KEY_NOT_FOUND")

    wrong = admin_key[:20] + ("a" if admin_key[20] != "a" else "b") + admin_key[21:]
    for presented in (wrong, "dpk_guess", admin_key.upper()):
        code, error = await failure(
            stub.ListApiKeys(api_keys_pb2.ListApiKeysRequest(), metadata=as_key(presented)),
            secret=presented,
        )
        assert (code, error.reason, error.metadata) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_API_KEY",
            {},
        )
    code, error = await failure(stub.ListApiKeys(api_keys_pb2.ListApiKeysRequest()))
    assert (code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "MISSING_CREDENTIALS")


async def test_another_tenants_keys_are_not_found_over_grpc(stub: Stub, api_keys: ApiKeys) -> None:
    alice_key = await bootstrap(api_keys, _tenant())
    alice_id = alice_key[4:16]
    mallory_tenant = _tenant()
    mallory_key = await bootstrap(api_keys, mallory_tenant)
    creds = as_key(mallory_key)

    for call in (
        stub.GetApiKey(api_keys_pb2.GetApiKeyRequest(id=alice_id), metadata=creds),
        stub.RevokeApiKey(api_keys_pb2.RevokeApiKeyRequest(id=alice_id), metadata=creds),
        stub.RotateApiKey(api_keys_pb2.RotateApiKeyRequest(id=alice_id), metadata=creds),
    ):
        code, error = await failure(call)
        assert (code, error.reason) == (grpc.StatusCode.NOT_FOUND, "API_KEY_NOT_FOUND")
    listed = await stub.ListApiKeys(api_keys_pb2.ListApiKeysRequest(), metadata=creds)
    assert [k.id for k in listed.api_keys] == [mallory_key[4:16]]
    # Alice's key was neither revoked nor rotated.
    await stub.GetApiKey(
        api_keys_pb2.GetApiKeyRequest(id=alice_id), metadata=as_key(alice_key), timeout=10
    )

    # Mass assignment: a tenant smuggled into the body (as a field the contract does not
    # have) is ignored; the key lands in the caller's tenant.
    body = api_keys_pb2.CreateApiKeyRequest(name="smuggled").SerializeToString()
    tenant_field = b"alice-tenant"
    tag = 99 << 3 | 2  # field 99, length-delimited: the varint 0x9a 0x06
    smuggled = body + bytes([tag & 0x7F | 0x80, tag >> 7, len(tenant_field)]) + tenant_field
    request = api_keys_pb2.CreateApiKeyRequest.FromString(smuggled)
    assert request.SerializeToString() == smuggled  # kept, as an unknown field, and sent
    created = await stub.CreateApiKey(request, metadata=creds, timeout=10)
    assert created.api_key.tenant == mallory_tenant


async def test_the_servicer_refuses_a_call_without_an_identity(
    settings: Settings, api_keys: ApiKeys
) -> None:
    async for stub in _serve(settings, api_keys, authenticate=False):
        code, error = await failure(
            stub.CreateApiKey(api_keys_pb2.CreateApiKeyRequest(name="x"), timeout=10)
        )
        assert (code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "MISSING_CREDENTIALS")


async def test_a_service_acting_for_a_caller_works_in_the_callers_tenant(
    api_keys: ApiKeys,
) -> None:
    """Calls Nexus forwards carry its service identity with the caller as on-behalf-of:
    the caller's tenant and roles are what count."""
    tenant = _tenant()
    await bootstrap(api_keys, tenant)
    caller = Identity(subject="user:bob", tenant=tenant, kind="user", roles=frozenset({"reader"}))
    nexus = Identity(subject="service:nexus", tenant="", kind="service", on_behalf_of=caller)
    servicer = ApiKeyServicer(api_keys.manager)
    token = identity_var.set(nexus)
    try:
        created = await servicer.CreateApiKey(
            api_keys_pb2.CreateApiKeyRequest(name="bob's", roles=["reader"]), None
        )
        listed = await servicer.ListApiKeys(api_keys_pb2.ListApiKeysRequest(), None)
        with pytest.raises(NotFound):
            await servicer.GetApiKey(api_keys_pb2.GetApiKeyRequest(id="zzzzzzzzzzzz"), None)
    finally:
        identity_var.reset(token)
    assert (created.api_key.tenant, created.api_key.created_by) == (tenant, "user:bob")
    assert len(listed.api_keys) == 2
