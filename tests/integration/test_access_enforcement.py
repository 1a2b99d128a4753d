"""Access control end to end, against real processes: a Lake and a Nexus (started with
the suite's issuer, which both trust), called over the Nexus REST edge and its gRPC
entry, and Envoy's ``Check`` on the Nexus port.

- A call without a credential is refused (401 / UNAUTHENTICATED, MISSING_CREDENTIALS)
  while the status routes stay open.
- The bootstrap administrator creates and reads a collection; a ``reader`` API key reads
  it but may not write (403 / PERMISSION_DENIED with the action and resource).
- A tenant is the credential's: the administrator of another tenant (the bootstrap key of
  a second Nexus on the same database, ``auth.default_tenant`` set to a fresh tenant)
  cannot see the first tenant's collection even by its exact name, and lists nothing.
- An OAuth client-credentials token works as a bearer credential through both entries.
- A client stream is checked message by message: a later message naming a resource the
  caller may not write ends the call with PERMISSION_DENIED and never reaches the Lake.
- Envoy's ``Check`` answers an allowed call with Nexus's service token and the caller's
  identity for the upstream (and the Lake accepts exactly those headers), a refused one
  with a 401 JSON status.
- Every allow and deny above is in the audit trail — principal, method, resource,
  request id, outcome, no secret or token — and the chains verify.

The tests share one set of processes and run in file order; the last one reads the trail
the others left, so run the module whole."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import grpc
import pytest
from datapunk.lake.v1 import timeseries_pb2, timeseries_pb2_grpc
from datapunk.lake.v1 import vectors_pb2 as vec
from datapunk.lake.v1 import vectors_pb2_grpc as vec_grpc
from datapunk.nexus.v1 import (
    api_keys_pb2,
    api_keys_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
)
from datapunk.nexus.v1 import status_pb2 as nexus_status
from datapunk.nexus.v1 import status_pb2_grpc as nexus_status_grpc
from datapunk_nexus.identity.api_keys.key_format import format_api_key, new_key_id, new_secret
from datapunk_shared.auth.interceptor import decode_on_behalf
from datapunk_shared.config import load_settings
from datapunk_shared.errors import DatapunkError
from datapunk_shared.rpc.client import error_from_rpc_error
from datapunk_shared.rpc.interceptor import REQUEST_ID_KEY
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.auth_support import authed_channel, issuer
from tests.support import (
    RunningService,
    engines_env,
    free_port,
    run_service,
    wait_for_grpc_health,
    wait_until,
)

pb: Any = timeseries_pb2
LAKE_VECTORS = "/datapunk.lake.v1.VectorService/"
GET, LIST, CREATE, COUNT = (
    LAKE_VECTORS + name
    for name in ("GetCollection", "ListCollections", "CreateCollection", "CountPoints")
)
UPSERT, IMPORT, DELETE_POINTS = (
    LAKE_VECTORS + name for name in ("UpsertPoints", "ImportPoints", "DeletePoints")
)
ALLOW, DENY = audit_pb2.AUDIT_OUTCOME_ALLOW, audit_pb2.AUDIT_OUTCOME_DENY
SERVING = health_pb2.HealthCheckResponse.SERVING


# --- the processes ----------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """A call the audit trail must show."""

    trail: str
    """``default``, the other tenant's id, or ``platform``."""
    request_id: str
    action: str
    outcome: audit_pb2.AuditOutcome
    method: str
    resource: str
    principal: str
    reason: str = ""


@dataclass
class World:
    lake: RunningService
    nexus: RunningService
    entry: str
    rest: str
    other_tenant: str
    other_key: str
    started: datetime
    run: str
    """A prefix for every name and request id this module makes."""
    expected: list[Expected] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    """Every credential the tests used: none may show up in the trail."""
    principals: dict[str, str] = field(default_factory=dict)
    """Credential label (``admin``, ``reader``, ...) -> its principal."""
    collection: str = ""
    """The collection the default tenant's administrator made."""
    keys: dict[str, str] = field(default_factory=dict)
    """Credential label -> API key made by the tests (``reader``, ``loader``)."""
    cleanups: list[Any] = field(default_factory=list)

    def rid(self, label: str) -> str:
        return f"{self.run}-{label}"

    def allowed(
        self, trail: str, label: str, action: str, method: str, resource: str, principal: str
    ) -> None:
        """The trail ``trail`` must show the call ``label`` allowed ``action``."""
        self.expected.append(
            Expected(trail, self.rid(label), action, ALLOW, method, resource, principal)
        )

    def denied(
        self,
        trail: str,
        label: str,
        method: str,
        resource: str,
        principal: str,
        reason: str,
        *,
        action: str = "authorize",
    ) -> None:
        """The trail ``trail`` must show the call ``label`` refused with ``reason``."""
        self.expected.append(
            Expected(trail, self.rid(label), action, DENY, method, resource, principal, reason)
        )


def _serving(service: RunningService) -> None:
    """Its signing keys are loaded and its bootstrap administrator exists."""
    wait_until(lambda: service.health() == SERVING, timeout=40)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("access")
    run = f"ae{uuid.uuid4().hex[:10]}"
    engines = engines_env(load_settings())
    with ExitStack() as running:
        lake = running.enter_context(run_service("lake", tmp, engines))
        backends = json.dumps({"lake": lake.address})
        # A second Nexus whose default tenant is a fresh one: its bootstrap key becomes
        # the administrator of that tenant, in the database every Nexus shares. It is
        # stopped once the key exists; the key then works at any Nexus.
        other_tenant = f"t-{run}"
        other_key = format_api_key(new_key_id(), new_secret())
        with run_service(
            "nexus",
            tmp,
            {
                **engines,
                "DATAPUNK_NEXUS__BACKENDS": backends,
                "DATAPUNK_AUTH__DEFAULT_TENANT": other_tenant,
                "DATAPUNK_SECRET_NEXUS__BOOTSTRAP_ADMIN_KEY": other_key,
            },
        ) as other:
            _serving(other)
        entry_port, rest_port = free_port(), free_port()
        nexus = running.enter_context(
            run_service(
                "nexus",
                tmp,
                {
                    **engines,
                    "DATAPUNK_NEXUS__BACKENDS": backends,
                    "DATAPUNK_NEXUS__GRPC_ENTRY__PORT": str(entry_port),
                    "DATAPUNK_NEXUS__REST__PORT": str(rest_port),
                },
            )
        )
        entry = f"127.0.0.1:{entry_port}"
        wait_for_grpc_health(entry)
        _serving(nexus)
        world = World(
            lake=lake,
            nexus=nexus,
            entry=entry,
            rest=f"http://127.0.0.1:{rest_port}",
            other_tenant=other_tenant,
            other_key=other_key,
            # The trail's clock is PostgreSQL's; leave room for skew.
            started=datetime.now(UTC) - timedelta(minutes=2),
            run=run,
        )
        world.secrets += [issuer().admin_key, other_key]
        yield world


@pytest.fixture
async def channel(world: World) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(world.entry) as channel:
        yield channel


@pytest.fixture
async def api(world: World) -> AsyncIterator[Rest]:
    async with aiohttp.ClientSession(base_url=world.rest) as session:
        yield Rest(session, world)


# --- helpers ----------------------------------------------------------------------------


def key_of(key: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", key),)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def meta(
    world: World, label: str, credentials: Sequence[tuple[str, str]] = ()
) -> tuple[tuple[str, str], ...]:
    """Call metadata: the credentials and a request id the trail will be searched for."""
    return (*credentials, (REQUEST_ID_KEY, world.rid(label)))


@dataclass
class Rest:
    """The REST edge, each call with a request id the trail is searched for."""

    http: aiohttp.ClientSession
    world: World

    async def call(
        self,
        method: str,
        path: str,
        label: str,
        credentials: Sequence[tuple[str, str]] = (),
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Mapping[str, str], Any]:
        """Status, headers and the parsed body (a list of documents for NDJSON)."""
        data = body if isinstance(body, str | bytes) or body is None else json.dumps(body)
        sent = {"X-Request-Id": self.world.rid(label), **dict(credentials), **(headers or {})}
        async with self.http.request(method, path, data=data, headers=sent) as response:
            raw = await response.read()
            if response.content_type == "application/x-ndjson":
                parsed: Any = [json.loads(line) for line in raw.splitlines() if line.strip()]
            else:
                parsed = json.loads(raw) if raw else None
            return response.status, response.headers, parsed


def error_info(status: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ErrorInfo detail of a JSON google.rpc.Status."""
    found: Mapping[str, Any] = next(
        d for d in status["details"] if d["@type"].endswith("google.rpc.ErrorInfo")
    )
    return found


async def refused(call: Any) -> tuple[grpc.StatusCode, DatapunkError]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), error_from_rpc_error(caught.value)


async def principal_of(channel: grpc.aio.Channel, credentials: Sequence[tuple[str, str]]) -> str:
    """The principal a credential authenticates as (WhoAmI sees Nexus acting for it)."""
    me = await auth_pb2_grpc.AuthServiceStub(channel).WhoAmI(
        auth_pb2.WhoAmIRequest(), metadata=tuple(credentials), timeout=10
    )
    assert me.subject == "service:nexus"
    subject: str = me.on_behalf_of.subject
    return subject


def grpc_frame(message: Any) -> bytes:
    """A message as a gRPC body carries it: uncompressed flag, length, bytes."""
    payload: bytes = message.SerializeToString()
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a compact JWS (its signature is checked by the Lake that takes it)."""
    body = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return claims


# --- no credential ----------------------------------------------------------------------


async def test_no_credential_is_refused_and_the_status_routes_stay_open(
    world: World, api: Rest, channel: grpc.aio.Channel
) -> None:
    method = LAKE_VECTORS + "ListCollections"
    status, headers, body = await api.call("GET", "/v1/lake/collections", "anon-rest")
    assert status == 401, body
    assert headers["Content-Type"] == "application/json"
    assert headers["WWW-Authenticate"] == 'Bearer realm="datapunk"'
    assert body["code"] == 16  # UNAUTHENTICATED, as a JSON google.rpc.Status
    assert error_info(body)["reason"] == "MISSING_CREDENTIALS"
    assert error_info(body)["domain"] == "datapunk.dev"
    world.denied("platform", "anon-rest", method, "collection/*", "", "MISSING_CREDENTIALS")

    stub = vec_grpc.VectorServiceStub(channel)
    code, error = await refused(
        stub.ListCollections(vec.ListCollectionsRequest(), metadata=meta(world, "anon-grpc"))
    )
    assert (code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "MISSING_CREDENTIALS")
    world.denied("platform", "anon-grpc", method, "collection/*", "", "MISSING_CREDENTIALS")

    # A key that does not exist is refused as such, on the platform's trail by its id.
    made_up = format_api_key(new_key_id(), new_secret())
    world.secrets.append(made_up)
    code, error = await refused(
        stub.ListCollections(
            vec.ListCollectionsRequest(), metadata=meta(world, "bad-key", key_of(made_up))
        )
    )
    assert (code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_API_KEY")
    world.denied("platform", "bad-key", method, "", "", "INVALID_API_KEY", action="authenticate")

    # Status, health and the OpenAPI document need nobody.
    for path in ("/v1/lake/status", "/v1/nexus/status", "/openapi.json"):
        status, _, body = await api.call("GET", path, "public")
        assert status == 200, (path, body)
    report = await nexus_status_grpc.StatusServiceStub(channel).GetStatus(
        nexus_status.GetStatusRequest(), timeout=10
    )
    assert report.status.service == "nexus"
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == SERVING


async def test_an_anonymous_client_stream_is_refused_before_it_reaches_the_lake(
    world: World, api: Rest, channel: grpc.aio.Channel
) -> None:
    # Even a stream that would send no message at all: nobody anonymous reaches the Lake.
    write_rows = "/datapunk.lake.v1.TimeSeriesService/StreamWriteRows"
    stub = timeseries_pb2_grpc.TimeSeriesServiceStub(channel)
    call = stub.StreamWriteRows(iter(()), metadata=meta(world, "anon-stream-grpc"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    error = error_from_rpc_error(caught.value)
    assert (caught.value.code(), error.reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "MISSING_CREDENTIALS",
    )
    line = json.dumps({"series": "series/anything", "rows": {"columns": []}})
    for label, body in (("anon-stream-rest-empty", ""), ("anon-stream-rest", line + "\n")):
        status, headers, answer = await api.call(
            "POST",
            "/v1/lake/series:streamWrite",
            label,
            body=body,
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert status == 401, (label, answer)
        assert headers["WWW-Authenticate"] == 'Bearer realm="datapunk"'
        assert error_info(answer)["reason"] == "MISSING_CREDENTIALS"
    for label in ("anon-stream-grpc", "anon-stream-rest-empty", "anon-stream-rest"):
        world.denied("platform", label, write_rows, "", "", "MISSING_CREDENTIALS")
        assert world.rid(label) not in world.lake.log()


# --- roles ------------------------------------------------------------------------------


async def test_the_administrator_creates_and_reads_a_collection(
    world: World, api: Rest, channel: grpc.aio.Channel
) -> None:
    admin = key_of(issuer().admin_key)
    world.principals["admin"] = principal = await principal_of(channel, admin)
    assert principal.startswith("key:")
    name = world.collection = f"{world.run}_docs"
    status, _, created = await api.call(
        "POST",
        f"/v1/lake/collections?collectionId={name}",
        "admin-create",
        admin,
        body={"vectorSize": 3, "distance": "DISTANCE_COSINE"},
    )
    assert status == 200, created
    world.cleanups.append(("collection", "default", name))
    resource = f"collection/{name}"
    world.allowed("default", "admin-create", "admin", CREATE, resource, principal)

    status, _, got = await api.call("GET", f"/v1/lake/collections/{name}", "admin-get-rest", admin)
    assert (status, got["collection"]["vectorSize"]) == (200, 3)
    stub = vec_grpc.VectorServiceStub(channel)
    got = await stub.GetCollection(
        vec.GetCollectionRequest(name=f"collections/{name}"),
        metadata=meta(world, "admin-get-grpc", admin),
    )
    assert got.collection.vector_size == 3
    for label in ("admin-get-rest", "admin-get-grpc"):
        world.allowed("default", label, "data.read", GET, resource, principal)
    await stub.UpsertPoints(
        vec.UpsertPointsRequest(
            collection=f"collections/{name}",
            points=[vec.Point(id=vec.PointId(num=1), vector=[0.1, 0.2, 0.3])],
        ),
        metadata=meta(world, "admin-upsert", admin),
    )
    world.allowed("default", "admin-upsert", "data.write", UPSERT, resource, principal)


async def test_a_reader_reads_but_may_not_write(
    world: World, api: Rest, channel: grpc.aio.Channel
) -> None:
    assert world.collection, "runs after the administrator made the collection"
    name, admin = world.collection, key_of(issuer().admin_key)
    made = await api_keys_pb2_grpc.ApiKeyServiceStub(channel).CreateApiKey(
        api_keys_pb2.CreateApiKeyRequest(name=f"{world.run} reader", roles=["reader"]),
        metadata=meta(world, "make-reader", admin),
    )
    assert list(made.api_key.roles) == ["reader"]
    assert made.api_key.tenant == "default"  # always the creator's tenant
    world.keys["reader"] = made.key
    world.secrets.append(made.key)
    world.cleanups.append(("api_key", "default", made.api_key.id))
    reader = key_of(made.key)
    world.principals["reader"] = principal = await principal_of(channel, reader)
    assert principal == f"key:{made.api_key.id}"
    resource = f"collection/{name}"
    create_key = "/datapunk.nexus.v1.ApiKeyService/CreateApiKey"
    admin_principal = world.principals["admin"]
    world.allowed(
        "default",
        "make-reader",
        "admin",
        create_key,
        "route/datapunk.nexus.v1.ApiKeyService.CreateApiKey",
        admin_principal,
    )

    status, _, got = await api.call(
        "GET", f"/v1/lake/collections/{name}", "reader-get-rest", reader
    )
    assert (status, got["collection"]["name"]) == (200, f"collections/{name}")
    stub = vec_grpc.VectorServiceStub(channel)
    counted = await stub.CountPoints(
        vec.CountPointsRequest(collection=f"collections/{name}"),
        metadata=meta(world, "reader-count-grpc", reader),
    )
    assert counted.count == 1
    world.allowed("default", "reader-get-rest", "data.read", GET, resource, principal)
    world.allowed("default", "reader-count-grpc", "data.read", COUNT, resource, principal)

    # Writes are refused with what was missing, over REST and gRPC alike.
    points = {"points": [{"id": {"num": "2"}, "vector": [1, 0, 0]}]}
    status, _, denied = await api.call(
        "POST",
        f"/v1/lake/collections/{name}/points:upsert",
        "reader-upsert-rest",
        reader,
        body=points,
    )
    assert status == 403, denied
    assert denied["code"] == 7
    info = error_info(denied)
    assert info["reason"] == "PERMISSION_DENIED"
    assert info["metadata"] == {"action": "write", "resource": resource}
    code, error = await refused(
        stub.UpsertPoints(
            vec.UpsertPointsRequest(
                collection=f"collections/{name}",
                points=[vec.Point(id=vec.PointId(num=2), vector=[1.0, 0.0, 0.0])],
            ),
            metadata=meta(world, "reader-upsert-grpc", reader),
        )
    )
    assert (code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    assert error.metadata == {"action": "write", "resource": resource}
    for label in ("reader-upsert-rest", "reader-upsert-grpc"):
        world.denied("default", label, UPSERT, resource, principal, "PERMISSION_DENIED")
    # Making a collection is administration.
    code, error = await refused(
        stub.CreateCollection(
            vec.CreateCollectionRequest(
                collection_id=f"{world.run}_nope",
                collection=vec.Collection(vector_size=3, distance=vec.DISTANCE_COSINE),
            ),
            metadata=meta(world, "reader-create-grpc", reader),
        )
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert error.metadata == {"action": "admin", "resource": f"collection/{world.run}_nope"}
    world.denied(
        "default",
        "reader-create-grpc",
        CREATE,
        f"collection/{world.run}_nope",
        principal,
        "PERMISSION_DENIED",
    )
    # Nothing was written.
    counted = await stub.CountPoints(
        vec.CountPointsRequest(collection=f"collections/{name}"), metadata=admin
    )
    assert counted.count == 1


# --- tenants ----------------------------------------------------------------------------


async def test_another_tenant_cannot_see_the_collection_even_by_name(
    world: World, api: Rest, channel: grpc.aio.Channel
) -> None:
    assert world.collection, "runs after the administrator made the collection"
    name, other = world.collection, key_of(world.other_key)
    world.principals["other"] = principal = await principal_of(channel, other)
    me = await auth_pb2_grpc.AuthServiceStub(channel).WhoAmI(
        auth_pb2.WhoAmIRequest(), metadata=other
    )
    assert (me.on_behalf_of.tenant, list(me.on_behalf_of.roles)) == (world.other_tenant, ["admin"])
    resource = f"collection/{name}"

    stub = vec_grpc.VectorServiceStub(channel)
    code, _ = await refused(
        stub.GetCollection(
            vec.GetCollectionRequest(name=f"collections/{name}"),
            metadata=meta(world, "other-get-grpc", other),
        )
    )
    assert code is grpc.StatusCode.NOT_FOUND
    status, _, body = await api.call("GET", f"/v1/lake/collections/{name}", "other-get-rest", other)
    assert (status, body["code"]) == (404, 5)
    listed = await stub.ListCollections(
        vec.ListCollectionsRequest(), metadata=meta(world, "other-list-grpc", other)
    )
    assert list(listed.collections) == []
    status, _, body = await api.call("GET", "/v1/lake/collections", "other-list-rest", other)
    assert status == 200, body
    assert body.get("collections", []) == []
    # Its administrator is allowed to look (in its own tenant): the Lake finds nothing.
    for label in ("other-get-grpc", "other-get-rest"):
        world.allowed(world.other_tenant, label, "data.read", GET, resource, principal)
    for label in ("other-list-grpc", "other-list-rest"):
        world.allowed(world.other_tenant, label, "data.read", LIST, "collection/*", principal)
    # The first tenant's collection is still there, untouched.
    counted = await stub.CountPoints(
        vec.CountPointsRequest(collection=f"collections/{name}"),
        metadata=key_of(issuer().admin_key),
    )
    assert counted.count == 1


# --- OAuth ------------------------------------------------------------------------------


async def test_an_oauth_client_token_works_through_both_entries(
    world: World, api: Rest, channel: grpc.aio.Channel
) -> None:
    assert world.collection, "runs after the administrator made the collection"
    name, admin = world.collection, key_of(issuer().admin_key)
    client_id = f"{world.run}-reader"
    made = await auth_pb2_grpc.AuthServiceStub(channel).CreateClient(
        auth_pb2.CreateClientRequest(
            client=auth_pb2.Client(client_id=client_id, display_name="reader", roles=["reader"])
        ),
        metadata=meta(world, "make-client", admin),
    )
    assert made.client.tenant == "default"
    world.allowed(
        "default",
        "make-client",
        "admin",
        "/datapunk.nexus.v1.AuthService/CreateClient",
        "route/datapunk.nexus.v1.AuthService.CreateClient",
        world.principals["admin"],
    )
    world.secrets.append(made.client_secret)
    world.cleanups.append(("client", "default", f"clients/{client_id}"))
    async with api.http.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": made.client_secret,
        },
    ) as response:
        assert response.status == 200, await response.text()
        issued = await response.json()
    token = issued["access_token"]
    assert issued["token_type"].lower() == "bearer"
    world.secrets.append(token)
    principal = f"client:{client_id}"
    assert await principal_of(channel, bearer(token)) == principal
    world.principals["client"] = principal
    resource = f"collection/{name}"

    status, _, got = await api.call(
        "GET", f"/v1/lake/collections/{name}", "client-get-rest", bearer(token)
    )
    assert (status, got["collection"]["vectorSize"]) == (200, 3)
    stub = vec_grpc.VectorServiceStub(channel)
    got = await stub.GetCollection(
        vec.GetCollectionRequest(name=f"collections/{name}"),
        metadata=meta(world, "client-get-grpc", bearer(token)),
    )
    assert got.collection.vector_size == 3
    for label in ("client-get-rest", "client-get-grpc"):
        world.allowed("default", label, "data.read", GET, resource, principal)
    # Its roles apply: a reader's token may not write either.
    code, error = await refused(
        stub.DeletePoints(
            vec.DeletePointsRequest(
                collection=f"collections/{name}",
                points=vec.PointSelector(ids=vec.PointIdList(ids=[vec.PointId(num=1)])),
            ),
            metadata=meta(world, "client-delete-grpc", bearer(token)),
        )
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert error.metadata == {"action": "write", "resource": resource}
    world.denied(
        "default", "client-delete-grpc", DELETE_POINTS, resource, principal, "PERMISSION_DENIED"
    )
    # A token that is not one is refused like a missing one, with its own reason.
    code, error = await refused(
        stub.GetCollection(
            vec.GetCollectionRequest(name=f"collections/{name}"),
            metadata=bearer(token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")),
        )
    )
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert error.reason == "BAD_SIGNATURE"


# --- client streams ---------------------------------------------------------------------


async def _loader(world: World, channel: grpc.aio.Channel, allowed: str, series: str) -> str:
    """An API key of the other tenant that may write only the collection ``allowed`` and
    the series ``series`` (a role made for it)."""
    other = key_of(world.other_key)
    role = f"roles/{world.run}-loader"
    await policy_pb2_grpc.PolicyServiceStub(channel).PutRole(
        policy_pb2.PutRoleRequest(
            role=policy_pb2.Role(
                name=role,
                description="writes one collection and one series",
                permissions=[
                    policy_pb2.Permission(
                        resource_type=policy_pb2.RESOURCE_TYPE_COLLECTION,
                        name_pattern=allowed,
                        actions=[policy_pb2.ACTION_READ, policy_pb2.ACTION_WRITE],
                    ),
                    policy_pb2.Permission(
                        resource_type=policy_pb2.RESOURCE_TYPE_SERIES,
                        name_pattern=series,
                        actions=[policy_pb2.ACTION_READ, policy_pb2.ACTION_WRITE],
                    ),
                ],
            )
        ),
        metadata=other,
    )
    made = await api_keys_pb2_grpc.ApiKeyServiceStub(channel).CreateApiKey(
        api_keys_pb2.CreateApiKeyRequest(name="loader", roles=[role.removeprefix("roles/")]),
        metadata=other,
    )
    world.secrets.append(made.key)
    world.keys["loader"] = made.key
    world.principals["loader"] = f"key:{made.api_key.id}"
    world.cleanups.append(("api_key", world.other_tenant, made.api_key.id))
    world.cleanups.append(("role", world.other_tenant, role))
    key: str = made.key
    return key


async def test_a_stream_is_refused_at_the_first_message_the_caller_may_not_send(
    world: World, channel: grpc.aio.Channel
) -> None:
    other = key_of(world.other_key)
    allowed, forbidden = f"{world.run}_open", f"{world.run}_shut"
    series = f"{world.run}_open"
    stub = vec_grpc.VectorServiceStub(channel)
    for name in (allowed, forbidden):
        await stub.CreateCollection(
            vec.CreateCollectionRequest(
                collection_id=name,
                collection=vec.Collection(vector_size=3, distance=vec.DISTANCE_COSINE),
            ),
            metadata=other,
        )
        world.cleanups.append(("collection", world.other_tenant, name))
    loader = key_of(await _loader(world, channel, allowed, series))
    principal = world.principals["loader"]

    def batch(seq: int, name: str) -> vec.ImportPointsRequest:
        return vec.ImportPointsRequest(
            collection=f"collections/{name}",
            sequence=seq,
            points=[
                vec.Point(id=vec.PointId(num=seq * 10 + i), vector=[1.0, float(i), 0.5])
                for i in range(5)
            ],
        )

    # Two batches the loader may write, each acknowledged before the next is sent, then
    # one it may not.
    call = stub.ImportPoints(metadata=meta(world, "stream-grpc", loader))
    for seq in (0, 1):
        await call.write(batch(seq, allowed))
        ack = await call.read()
        assert ack.sequence == seq
    await call.write(batch(2, forbidden))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    error = error_from_rpc_error(caught.value)
    assert error.reason == "PERMISSION_DENIED"
    assert error.metadata == {"action": "write", "resource": f"collection/{forbidden}"}
    # The acknowledged batches are in the Lake; the refused one never reached it.
    shut = await stub.CountPoints(
        vec.CountPointsRequest(collection=f"collections/{forbidden}"), metadata=other
    )
    assert shut.count == 0
    assert sorted(await _point_ids(stub, allowed, other)) == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]
    world.allowed(
        world.other_tenant, "stream-grpc", "data.write", IMPORT, f"collection/{allowed}", principal
    )
    world.denied(
        world.other_tenant,
        "stream-grpc",
        IMPORT,
        f"collection/{forbidden}",
        principal,
        "PERMISSION_DENIED",
    )


async def _point_ids(stub: Any, collection: str, credentials: Any) -> list[int]:
    scrolled = await stub.ScrollPoints(
        vec.ScrollPointsRequest(collection=f"collections/{collection}", page_size=100),
        metadata=credentials,
    )
    return [point.id.num for point in scrolled.points]


async def test_an_ndjson_stream_over_rest_is_checked_line_by_line(
    world: World, api: Rest, channel: grpc.aio.Channel
) -> None:
    assert "loader" in world.keys, "runs after the gRPC stream test made the loader"
    other = key_of(world.other_key)
    allowed, forbidden = f"{world.run}_open", f"{world.run}_shut"
    stub = timeseries_pb2_grpc.TimeSeriesServiceStub(channel)
    for series_id in (allowed, forbidden):
        await stub.CreateSeries(
            pb.CreateSeriesRequest(
                series_id=series_id,
                series=pb.Series(
                    tags=["host"],
                    fields=[pb.FieldSchema(name="usage", type=pb.FIELD_TYPE_DOUBLE)],
                    partitioning=pb.PARTITIONING_DAY,
                ),
            ),
            metadata=other,
        )
        world.cleanups.append(("series", world.other_tenant, series_id))
    t0 = 1_700_000_000_000_000

    def line(series_id: str, batch: int) -> str:
        stamps = [str(t0 + (batch * 10 + i) * 1_000_000) for i in range(10)]
        return json.dumps(
            {
                "series": f"series/{series_id}",
                "rows": {
                    "columns": [
                        {"name": "ts", "timestamps": {"values": stamps}},
                        {"name": "host", "strings": {"values": ["h"] * 10}},
                        {"name": "usage", "doubles": {"values": [1.0] * 10}},
                    ]
                },
            }
        )

    # Two lines the loader may write, then — once the Lake acknowledged the first (it
    # answers a batch when the next one arrives) — one it may not: the answers so far are
    # streamed, and the last line is the refusal.
    acknowledged = asyncio.Event()
    answers: list[Any] = []

    async def upload() -> AsyncIterator[bytes]:
        yield (line(allowed, 0) + "\n" + line(allowed, 1) + "\n").encode()
        await acknowledged.wait()
        yield (line(forbidden, 2) + "\n").encode()

    headers = {
        **dict(key_of(world.keys["loader"])),
        "Content-Type": "application/x-ndjson",
        "X-Request-Id": world.rid("stream-rest"),
    }
    post = api.http.post("/v1/lake/series:streamWrite", data=upload(), headers=headers)
    async with post as response:
        assert response.status == 200
        assert response.content_type == "application/x-ndjson"
        async for raw in response.content:
            answers.append(json.loads(raw))
            acknowledged.set()
    assert answers[0] == {"batchIndex": "0", "rowCount": "10", "totalRowCount": "10"}
    assert all("error" not in answer for answer in answers[:-1])
    error = answers[-1]["error"]
    assert error["code"] == 7
    assert error_info(error)["metadata"] == {
        "action": "write",
        "resource": f"series/{forbidden}",
    }

    # The allowed rows arrive; the refused batch never does.
    async def rows(series_id: str) -> int:
        read = await stub.ReadRows(
            pb.ReadRowsRequest(
                series=f"series/{series_id}",
                start_time=timestamp_pb2.Timestamp(seconds=t0 // 1_000_000 - 60),
                end_time=timestamp_pb2.Timestamp(seconds=t0 // 1_000_000 + 3600),
            ),
            metadata=other,
        )
        return _row_count(read)

    # Acknowledged batches are in QuestDB; once they can be read, so could the refused
    # one be, had it been sent in the same stream right after them.
    deadline = time.monotonic() + 30
    while await rows(allowed) < 10 * (len(answers) - 1):
        assert time.monotonic() < deadline, "acknowledged rows never became readable"
        await asyncio.sleep(0.2)
    await asyncio.sleep(1)
    assert await rows(forbidden) == 0
    principal = world.principals["loader"]
    method = "/datapunk.lake.v1.TimeSeriesService/StreamWriteRows"
    world.allowed(
        world.other_tenant, "stream-rest", "data.write", method, f"series/{allowed}", principal
    )
    world.denied(
        world.other_tenant,
        "stream-rest",
        method,
        f"series/{forbidden}",
        principal,
        "PERMISSION_DENIED",
    )


def _row_count(read: Any) -> int:
    counts = [
        len(getattr(column, column.WhichOneof("values")).values)
        for column in read.rows.columns
        if column.WhichOneof("values") in ("timestamps", "doubles", "strings", "longs")
    ]
    return max(counts, default=0)


# --- Envoy ------------------------------------------------------------------------------


def _check_request(
    world: World, label: str, method: str, message: Any, headers: Mapping[str, str]
) -> external_auth_pb2.CheckRequest:
    """A CheckRequest as Envoy's ext_authz filter sends it after the JSON transcoder: the
    gRPC method as the path, the request's headers, the gRPC-framed body as bytes."""
    request = external_auth_pb2.CheckRequest()
    request.attributes.source.address.socket_address.address = "203.0.113.7"
    http = request.attributes.request.http
    http.id = "envoy-1"
    http.method = "POST"
    http.path = method
    http.host = "datapunk.example"
    http.headers.update(
        {
            "content-type": "application/grpc",
            "te": "trailers",
            "x-request-id": world.rid(label),
            **headers,
        }
    )
    http.raw_body = grpc_frame(message)
    return request


def _header_values(options: Any) -> dict[str, str]:
    return {option.header.key: option.header.value for option in options}


async def test_envoy_check_allows_with_nexus_credentials_and_refuses_without(
    world: World,
) -> None:
    assert "reader" in world.keys, "runs after the reader's key was made"
    name, reader_key = world.collection, world.keys["reader"]
    method = LAKE_VECTORS + "GetCollection"
    message = vec.GetCollectionRequest(name=f"collections/{name}")
    async with authed_channel(world.nexus.address, "nexus") as channel:
        check = external_auth_pb2_grpc.AuthorizationStub(channel).Check
        allowed = await check(
            _check_request(world, "envoy-allow", method, message, {"x-api-key": reader_key}),
            timeout=10,
        )
        anonymous = await check(
            _check_request(world, "envoy-anon", method, message, {}), timeout=10
        )
        write = vec.UpsertPointsRequest(
            collection=f"collections/{name}",
            points=[vec.Point(id=vec.PointId(num=9), vector=[1.0, 0.0, 0.0])],
        )
        refused_write = await check(
            _check_request(
                world, "envoy-deny", LAKE_VECTORS + "UpsertPoints", write, {"x-api-key": reader_key}
            ),
            timeout=10,
        )

    assert allowed.status.code == 0
    assert allowed.WhichOneof("http_response") == "ok_response"
    upstream = _header_values(allowed.ok_response.headers)
    assert set(upstream) == {"authorization", "x-datapunk-on-behalf-of"}
    scheme, _, token = upstream["authorization"].partition(" ")
    claims = jwt_claims(token)
    assert scheme == "Bearer"
    assert (claims["sub"], claims["aud"], claims["iss"]) == (
        "service:nexus",
        "datapunk:lake",
        issuer().url,
    )
    caller = decode_on_behalf(upstream["x-datapunk-on-behalf-of"])
    assert (caller.subject, caller.tenant, caller.kind) == (
        world.principals["reader"],
        "default",
        "api_key",
    )
    assert "x-api-key" in allowed.ok_response.headers_to_remove
    metadata = dict(allowed.dynamic_metadata)
    assert metadata == {"principal": world.principals["reader"], "tenant": "default"}
    # What Envoy would then send upstream: the Lake takes exactly those headers.
    async with grpc.aio.insecure_channel(world.lake.address) as lake:
        got = await vec_grpc.VectorServiceStub(lake).GetCollection(
            message, metadata=tuple(upstream.items()), timeout=10
        )
    assert got.collection.name == f"collections/{name}"

    assert anonymous.status.code == 16
    assert anonymous.WhichOneof("http_response") == "denied_response"
    assert anonymous.denied_response.status.code == 401
    headers = _header_values(anonymous.denied_response.headers)
    assert headers["content-type"] == "application/json"
    assert headers["www-authenticate"] == 'Bearer realm="datapunk"'
    body = json.loads(anonymous.denied_response.body)
    assert body["code"] == 16
    assert error_info(body)["reason"] == "MISSING_CREDENTIALS"

    assert refused_write.status.code == 7
    assert refused_write.denied_response.status.code == 403
    body = json.loads(refused_write.denied_response.body)
    assert error_info(body)["metadata"] == {"action": "write", "resource": f"collection/{name}"}

    reader, resource = world.principals["reader"], f"collection/{name}"
    world.allowed("default", "envoy-allow", "data.read", method, resource, reader)
    world.denied("platform", "envoy-anon", method, resource, "", "MISSING_CREDENTIALS")
    world.denied("default", "envoy-deny", UPSERT, resource, reader, "PERMISSION_DENIED")


async def test_envoy_check_of_a_client_stream_needs_what_any_of_its_messages_may_name(
    world: World,
) -> None:
    # Check sees only a stream's first message (Envoy sends the start of the body). A
    # StreamWriteRows stream may go on to other series, so only a caller who may write
    # every series passes; an ImportPoints stream is held to its first collection by the
    # Lake, so its first message stands for it.
    assert "loader" in world.keys, "runs after the stream tests made the loader"
    loader, other_admin = world.keys["loader"], world.other_key
    rows = pb.StreamWriteRowsRequest(series=f"series/{world.run}_open")
    points = vec.ImportPointsRequest(
        collection=f"collections/{world.run}_open",
        points=[vec.Point(id=vec.PointId(num=1), vector=[1.0, 0.0, 0.0])],
    )
    write_rows = "/datapunk.lake.v1.TimeSeriesService/StreamWriteRows"
    async with authed_channel(world.nexus.address, "nexus") as channel:
        check = external_auth_pb2_grpc.AuthorizationStub(channel).Check
        narrow = await check(
            _check_request(world, "envoy-rows-loader", write_rows, rows, {"x-api-key": loader})
        )
        wide = await check(
            _check_request(world, "envoy-rows-admin", write_rows, rows, {"x-api-key": other_admin})
        )
        held = await check(
            _check_request(world, "envoy-import-loader", IMPORT, points, {"x-api-key": loader})
        )
    assert narrow.denied_response.status.code == 403
    body = json.loads(narrow.denied_response.body)
    assert error_info(body)["metadata"] == {"action": "write", "resource": "series/*"}
    assert wide.WhichOneof("http_response") == "ok_response"
    assert held.WhichOneof("http_response") == "ok_response"
    tenant, principal = world.other_tenant, world.principals["loader"]
    world.denied(
        tenant, "envoy-rows-loader", write_rows, "series/*", principal, "PERMISSION_DENIED"
    )
    world.allowed(
        tenant, "envoy-rows-admin", "data.write", write_rows, "series/*", world.principals["other"]
    )
    world.allowed(
        tenant,
        "envoy-import-loader",
        "data.write",
        IMPORT,
        f"collection/{world.run}_open",
        principal,
    )


async def test_envoy_check_is_served_to_services_only(world: World) -> None:
    # The Nexus port, Check included, answers only Datapunk services' tokens.
    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.path = LAKE_VECTORS + "ListCollections"
    async with grpc.aio.insecure_channel(world.nexus.address) as channel:
        code, error = await refused(
            external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=10)
        )
    assert (code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "MISSING_CREDENTIALS")


# --- the audit trail --------------------------------------------------------------------


async def _search(
    channel: grpc.aio.Channel,
    credentials: Any,
    started: datetime,
    *,
    action: str,
    outcome: audit_pb2.AuditOutcome,
    platform: bool,
) -> list[Any]:
    stub = audit_pb2_grpc.AuditServiceStub(channel)
    start = timestamp_pb2.Timestamp()
    start.FromDatetime(started)
    found, token = [], ""
    while True:
        page = await stub.SearchAuditEvents(
            audit_pb2.SearchAuditEventsRequest(
                filter=audit_pb2.AuditEventFilter(action=action, outcome=outcome, start_time=start),
                page_size=1000,
                page_token=token,
                platform=platform,
            ),
            metadata=credentials,
            timeout=30,
        )
        found += list(page.events)
        token = page.next_page_token
        if not token:
            return found


async def test_every_allow_and_deny_is_in_the_audit_trail_and_the_chains_verify(
    world: World, channel: grpc.aio.Channel
) -> None:
    labels = {e.request_id.removeprefix(world.run + "-") for e in world.expected}
    assert {
        "anon-rest",
        "reader-upsert-grpc",
        "other-get-grpc",
        "client-get-rest",
        "stream-grpc",
        "stream-rest",
        "envoy-allow",
    } <= labels, "run the whole module: this test reads what the others did"
    admin, other = key_of(issuer().admin_key), key_of(world.other_key)
    readers = {
        "default": (admin, False),
        "platform": (admin, True),
        world.other_tenant: (other, False),
    }
    seen: dict[str, list[Any]] = {}
    for trail in {e.trail for e in world.expected}:
        credentials, platform = readers[trail]
        for action, outcome in {(e.action, e.outcome) for e in world.expected if e.trail == trail}:
            events = await _search(
                channel,
                credentials,
                world.started,
                action=action,
                outcome=outcome,
                platform=platform,
            )
            assert all(e.action == action and e.outcome == outcome for e in events)
            seen.setdefault(trail, []).extend(events)

    for expected in world.expected:
        matches = [
            e
            for e in seen[expected.trail]
            if e.request_id == expected.request_id
            and e.action == expected.action
            and e.outcome == expected.outcome
            and e.resource == expected.resource
        ]
        assert len(matches) == 1, (
            expected,
            [str(e) for e in seen[expected.trail] if e.request_id == expected.request_id],
        )
        event = matches[0]
        assert event.method == expected.method, expected
        assert event.principal == expected.principal, expected
        assert event.reason == expected.reason, expected
        assert event.tenant == ("" if expected.trail == "platform" else expected.trail)
        if expected.principal.startswith("key:"):
            assert event.credential_id == expected.principal.removeprefix("key:")
        if expected.request_id == world.rid("bad-key"):
            # A refused key is recorded by its id alone.
            made_up = next(
                s
                for s in world.secrets
                if s.startswith("dpk_")
                and s not in (issuer().admin_key, world.other_key)
                and s not in world.keys.values()
            )
            assert event.credential_id == made_up.split("_", 2)[1]

    # No credential, secret or token anywhere in the records the tests left.
    mine = [e for events in seen.values() for e in events if e.request_id.startswith(world.run)]
    text = "\n".join(str(e) for e in mine)
    for secret in world.secrets:
        assert secret not in text
        if secret.startswith("dpk_"):  # an API key: dpk_<id>_<secret and checksum>
            assert secret.split("_", 2)[2] not in text
    assert "Bearer" not in text

    # Each chain holds together over the records the tests left.
    stub = audit_pb2_grpc.AuditServiceStub(channel)
    for trail, events in seen.items():
        credentials, platform = readers[trail]
        sequences = [e.sequence for e in events if e.request_id.startswith(world.run)]
        verdict = await stub.VerifyAuditTrail(
            audit_pb2.VerifyAuditTrailRequest(
                from_sequence=min(sequences), to_sequence=max(sequences), platform=platform
            ),
            metadata=credentials,
            timeout=60,
        )
        assert verdict.ok, (trail, verdict)
        assert verdict.checked_count >= max(sequences) - min(sequences) + 1
    whole = await stub.VerifyAuditTrail(audit_pb2.VerifyAuditTrailRequest(), metadata=other)
    assert whole.ok, whole
    assert whole.checked_count >= len(seen[world.other_tenant])


# --- leaving the shared stores as they were ---------------------------------------------


async def test_cleanup(world: World, channel: grpc.aio.Channel) -> None:
    """Deletes what the module made (collections, series, keys, the client, the role)."""
    credentials = {
        "default": key_of(issuer().admin_key),
        world.other_tenant: key_of(world.other_key),
    }
    vectors = vec_grpc.VectorServiceStub(channel)
    series = timeseries_pb2_grpc.TimeSeriesServiceStub(channel)
    keys = api_keys_pb2_grpc.ApiKeyServiceStub(channel)
    clients = auth_pb2_grpc.AuthServiceStub(channel)
    for kind, tenant, name in world.cleanups:
        metadata = credentials[tenant]
        if kind == "collection":
            await vectors.DeleteCollection(
                vec.DeleteCollectionRequest(name=f"collections/{name}"), metadata=metadata
            )
        elif kind == "series":
            await series.DeleteSeries(
                pb.DeleteSeriesRequest(name=f"series/{name}"), metadata=metadata
            )
        elif kind == "api_key":
            await keys.RevokeApiKey(api_keys_pb2.RevokeApiKeyRequest(id=name), metadata=metadata)
        elif kind == "client":
            await clients.DeleteClient(auth_pb2.DeleteClientRequest(name=name), metadata=metadata)
    # The role goes once no key holds it any more (revoked above).
    for kind, tenant, name in world.cleanups:
        if kind == "role":
            await policy_pb2_grpc.PolicyServiceStub(channel).DeleteRole(
                policy_pb2.DeleteRoleRequest(name=name), metadata=credentials[tenant]
            )
