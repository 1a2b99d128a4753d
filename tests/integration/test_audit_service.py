"""AuditService on the real PostgreSQL, two ways.

* Over real gRPC: a grpc.aio server with the shared Datapunk edges, the service wired by
  ``add_audit_service``, in front of a private database. The trail is the caller's
  tenant's and nobody else's, the platform trail is the platform administrators', bad
  input is INVALID_ARGUMENT, a PostgreSQL that cannot be reached is UNAVAILABLE
  AUDIT_UNAVAILABLE, and grpcurl (a client we did not write) exports and verifies.
  Tokens are checked by the shared edge (``CallerAuthenticator``) with a stand-in
  verifier that knows a few fixed tokens: verifying real tokens is another component's
  job; this one is about what the trail does with the identity it is given.
* End to end: a real Nexus process (its REST edge authenticates, decides, audits and
  forwards to its own AuditService) with its chain keyed by a secret: every call through
  the edge — refused authentications included — is in the trail, curl exports it as
  NDJSON, and the hashes are the keyed ones."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import psycopg
import pytest
from datapunk.nexus.v1 import audit_pb2, audit_pb2_grpc
from datapunk_nexus.contracts import default_descriptor_set
from datapunk_nexus.edge.routes import load_routes
from datapunk_nexus.identity.audit import AuditEvent, AuditLog, ChainHasher, Outcome
from datapunk_nexus.identity.audit.events import RecordedEvent
from datapunk_nexus.identity.audit.servicer import add_audit_service
from datapunk_shared.auth.identity import Identity
from datapunk_shared.auth.interceptor import CallerAuthenticator, encode_on_behalf
from datapunk_shared.config import Settings
from datapunk_shared.db import apply_migrations, load_migrations
from datapunk_shared.errors import Unauthenticated, Unavailable
from datapunk_shared.rpc.interceptor import DatapunkServerInterceptor
from datapunk_shared.rpc.server import ServiceContext, create_server
from datapunk_shared.rpc.status_codes import STATUS_DETAILS_KEY
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from google.rpc import status_pb2 as rpc_status_pb2

from tests.auth_support import issuer
from tests.support import ROOT, free_port, private_database, run_service, wait_until

KEY = b"service-test-audit-chain-key-32b"
T0 = datetime(2026, 4, 1, 9, 0, 0, tzinfo=UTC)
GRPCURL = ROOT / "build" / "tools" / "bin" / "grpcurl"


@dataclass(frozen=True)
class Tenants:
    a: str
    b: str
    tokens: dict[str, Identity]


@dataclass(frozen=True)
class Served:
    address: str
    audit_log: AuditLog
    database: str


class FixedTokens:
    """Stands in for the token verifier: each known token is one identity."""

    def __init__(self, tokens: dict[str, Identity]) -> None:
        self._tokens = tokens

    async def verify(self, token: str) -> Identity:
        identity = self._tokens.get(token)
        if identity is None:
            raise Unauthenticated("unknown test token", reason="BAD_SIGNATURE")
        return identity


def _with(
    settings: Settings,
    *,
    url: str | None = None,
    platform_tenant: str | None = None,
    write_timeout: float | None = None,
) -> Settings:
    """``settings`` with another database, platform tenant or audit write timeout."""
    engines, auth = settings.engines, settings.nexus.auth
    if url is not None:
        engines = engines.model_copy(
            update={"postgres": engines.postgres.model_copy(update={"url": url})}
        )
    if platform_tenant is not None:
        policy = auth.policy.model_copy(update={"platform_tenant": platform_tenant})
        auth = auth.model_copy(update={"policy": policy})
    if write_timeout is not None:
        audit = auth.audit.model_copy(update={"write_timeout": write_timeout})
        auth = auth.model_copy(update={"audit": audit})
    nexus = settings.nexus.model_copy(update={"auth": auth})
    return settings.model_copy(update={"engines": engines, "nexus": nexus})


@asynccontextmanager
async def audit_server(
    settings: Settings, tokens: dict[str, Identity] | None
) -> AsyncIterator[tuple[str, AuditLog]]:
    """A grpc.aio server with the shared edges (authenticating with ``tokens``; none at
    all when None) serving AuditService as ``add_audit_service`` wires it."""
    # A service port accepts only services by default (end users come through Nexus,
    # which forwards on their behalf); here the test's clients and users call directly.
    authenticator = (
        None
        if tokens is None
        else CallerAuthenticator(
            FixedTokens(tokens), cache_seconds=0, kinds=("service", "client", "user")
        )
    )
    server, port = create_server(
        "127.0.0.1:0",
        edges=DatapunkServerInterceptor("nexus", access_log="off", authenticator=authenticator),
    )
    context = ServiceContext(settings=settings, service_settings=settings.nexus, server=server)
    audit_log = await add_audit_service(context, chain_key=KEY)
    await server.start()
    try:
        yield f"127.0.0.1:{port}", audit_log
    finally:
        await server.stop(None)
        for cleanup in reversed(context.cleanups):
            await cleanup()


@pytest.fixture(scope="module")
def tenants() -> Tenants:
    a, b = f"svc-a-{uuid.uuid4().hex[:8]}", f"svc-b-{uuid.uuid4().hex[:8]}"
    return Tenants(
        a,
        b,
        {
            "admin-a": Identity("client:admin-a", a, "client", roles=frozenset({"admin"})),
            "reader-a": Identity("user:reader-a", a, "user", roles=frozenset({"reader"})),
            "admin-b": Identity("client:admin-b", b, "client", roles=frozenset({"admin"})),
            "nexus": Identity("service:nexus", "", "service"),
        },
    )


@pytest.fixture(scope="module")
async def service(settings: Settings, tenants: Tenants) -> AsyncIterator[Served]:
    """The server, in front of a private database whose platform tenant is tenant a,
    with the module's trail written through the returned AuditLog."""
    # A database of its own: the platform trail (records of no tenant) is shared by
    # everything that writes to one database, and this test reads it whole.
    with private_database(settings.engines.postgres.url, "dp_audit_test") as database:
        async with await psycopg.AsyncConnection.connect(database) as conn:
            migrations = load_migrations("datapunk_nexus.migrations")
            await apply_migrations(conn, "nexus", [m for m in migrations if m.version in (1, 6)])
        private = _with(settings, url=database, platform_tenant=tenants.a)
        async with audit_server(private, tenants.tokens) as (address, audit_log):
            # What the entries would record: 12 calls in tenant a, 3 in tenant b, and two
            # failed authentications, which belong to no tenant.
            for i in range(1, 13):
                await audit_log.record(_event(tenants.a, i))
            for i in range(1, 4):
                await audit_log.record(_event(tenants.b, i))
            for i in range(2):
                await audit_log.record(
                    AuditEvent(
                        action="authenticate",
                        outcome=Outcome.DENY,
                        reason="TOKEN_EXPIRED",
                        principal_kind="anonymous",
                        client_address="198.51.100.9",
                        request_id=f"auth-{i}",
                    )
                )
            yield Served(address, audit_log, database)


def _event(tenant: str, i: int) -> AuditEvent:
    return AuditEvent(
        action="data.read" if i % 2 else "admin.role.put",
        outcome=Outcome.DENY if i % 4 == 0 else Outcome.ALLOW,
        tenant=tenant,
        principal=f"client:p{i % 3}",
        principal_kind="client",
        credential_id=f"jti-{i}",
        method="/datapunk.lake.v1.VectorService/GetPoints",
        resource=f"lake/collections/c{i % 2}",
        reason="PERMISSION_DENIED" if i % 4 == 0 else "",
        client_address="192.0.2.1",
        request_id=f"{tenant}-{i}",
        time=T0 + timedelta(seconds=i),
    )


def _auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _stub(address: str) -> Any:
    return audit_pb2_grpc.AuditServiceStub(grpc.aio.insecure_channel(address))


def _error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    details = dict(error.trailing_metadata() or ())[STATUS_DETAILS_KEY]
    status = rpc_status_pb2.Status.FromString(details)
    info = error_details_pb2.ErrorInfo()
    assert any(detail.Unpack(info) for detail in status.details)
    return info


async def _refused(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call()
    return caught.value.code(), _error_info(caught.value).reason


async def test_search_pages_through_the_callers_tenant_only(
    service: Served, tenants: Tenants
) -> None:
    stub = _stub(service.address)
    seen: list[audit_pb2.AuditEvent] = []
    token = ""
    while True:
        response = await stub.SearchAuditEvents(
            audit_pb2.SearchAuditEventsRequest(page_size=5, page_token=token),
            metadata=_auth("admin-a"),
            timeout=10,
        )
        seen += response.events
        token = response.next_page_token
        if not token:
            break
    assert [e.sequence for e in seen] == list(range(12, 0, -1))
    assert {e.tenant for e in seen} == {tenants.a}
    newest = seen[0]
    assert (newest.principal, newest.credential_id, newest.outcome, newest.reason) == (
        "client:p0",
        "jti-12",
        audit_pb2.AUDIT_OUTCOME_DENY,
        "PERMISSION_DENIED",
    )
    assert newest.time.ToDatetime(tzinfo=UTC) == T0 + timedelta(seconds=12)
    assert len(newest.hash) == 32
    assert seen[1].previous_hash == seen[2].hash

    # Tenant b's administrator sees tenant b's trail, numbered on its own, and cannot use
    # a page token of tenant a's.
    response = await stub.SearchAuditEvents(
        audit_pb2.SearchAuditEventsRequest(page_size=2), metadata=_auth("admin-b"), timeout=10
    )
    assert [(e.tenant, e.sequence) for e in response.events] == [(tenants.b, 3), (tenants.b, 2)]
    first_a = await stub.SearchAuditEvents(
        audit_pb2.SearchAuditEventsRequest(page_size=2), metadata=_auth("admin-a"), timeout=10
    )
    assert await _refused(
        lambda: stub.SearchAuditEvents(
            audit_pb2.SearchAuditEventsRequest(page_size=2, page_token=first_a.next_page_token),
            metadata=_auth("admin-b"),
            timeout=10,
        )
    ) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")


async def test_filters_over_grpc(service: Served) -> None:
    stub = _stub(service.address)

    async def sequences(**filter_fields: Any) -> list[int]:
        request = audit_pb2.SearchAuditEventsRequest(
            filter=audit_pb2.AuditEventFilter(**filter_fields),
            order=audit_pb2.AUDIT_ORDER_OLDEST_FIRST,
        )
        response = await stub.SearchAuditEvents(request, metadata=_auth("admin-a"), timeout=10)
        return [e.sequence for e in response.events]

    start, end = Timestamp(), Timestamp()
    start.FromDatetime(T0 + timedelta(seconds=3))
    end.FromDatetime(T0 + timedelta(seconds=6))
    assert await sequences(principal="client:p1") == [1, 4, 7, 10]
    assert await sequences(action="admin.role.put") == [2, 4, 6, 8, 10, 12]
    assert await sequences(resource_prefix="lake/collections/c1") == [1, 3, 5, 7, 9, 11]
    assert await sequences(outcome=audit_pb2.AUDIT_OUTCOME_DENY) == [4, 8, 12]
    assert await sequences(start_time=start, end_time=end) == [3, 4, 5]
    assert await sequences(principal="client:p1", outcome=audit_pb2.AUDIT_OUTCOME_DENY) == [4]


async def test_export_streams_the_callers_trail(service: Served) -> None:
    call = _stub(service.address).ExportAuditEvents(
        audit_pb2.ExportAuditEventsRequest(order=audit_pb2.AUDIT_ORDER_OLDEST_FIRST),
        metadata=_auth("admin-a"),
        timeout=10,
    )
    events = [response.event async for response in call]
    assert [e.sequence for e in events] == list(range(1, 13))


async def test_verify_over_grpc_finds_a_tampered_record(service: Served, tenants: Tenants) -> None:
    stub = _stub(service.address)
    # A tenant of its own, so that tampering leaves the other tests' trail alone.
    victim = f"svc-v-{uuid.uuid4().hex[:8]}"
    tenants.tokens["admin-v"] = Identity(
        "client:admin-v", victim, "client", roles=frozenset({"admin"})
    )
    for i in range(1, 9):
        await service.audit_log.record(_event(victim, i))
    ok = await stub.VerifyAuditTrail(
        audit_pb2.VerifyAuditTrailRequest(), metadata=_auth("admin-v"), timeout=10
    )
    assert (ok.ok, ok.checked_count, ok.first_sequence, ok.last_sequence) == (True, 8, 1, 8)
    async with await psycopg.AsyncConnection.connect(service.database, autocommit=True) as conn:
        await conn.execute(
            "UPDATE nexus.audit_events SET principal = 'client:someone-else' "
            "WHERE tenant = %s AND seq = 6",
            (victim,),
        )
    broken = await stub.VerifyAuditTrail(
        audit_pb2.VerifyAuditTrailRequest(), metadata=_auth("admin-v"), timeout=10
    )
    assert (broken.ok, broken.broken_sequence, broken.problem, broken.checked_count) == (
        False,
        6,
        audit_pb2.AUDIT_CHAIN_PROBLEM_EDITED,
        6,
    )
    assert "record 6" in broken.description
    part = await stub.VerifyAuditTrail(
        audit_pb2.VerifyAuditTrailRequest(from_sequence=2, to_sequence=5),
        metadata=_auth("admin-v"),
        timeout=10,
    )
    assert (part.ok, part.first_sequence, part.last_sequence) == (True, 2, 5)
    other = await stub.VerifyAuditTrail(
        audit_pb2.VerifyAuditTrailRequest(), metadata=_auth("admin-a"), timeout=10
    )
    assert other.ok


async def test_the_tenant_is_the_one_the_call_is_made_for(
    service: Served, tenants: Tenants
) -> None:
    """Nexus forwarding a caller's request: its service token plus the caller in
    x-datapunk-on-behalf-of; the trail is the caller's, not the service's."""
    metadata = (
        *_auth("nexus"),
        ("x-datapunk-on-behalf-of", encode_on_behalf(tenants.tokens["admin-b"])),
    )
    response = await _stub(service.address).SearchAuditEvents(
        audit_pb2.SearchAuditEventsRequest(), metadata=metadata, timeout=10
    )
    assert {e.tenant for e in response.events} == {tenants.b}


async def test_the_platform_trail_is_the_platform_administrators(
    service: Served, tenants: Tenants
) -> None:
    stub = _stub(service.address)
    request = audit_pb2.SearchAuditEventsRequest(
        platform=True, order=audit_pb2.AUDIT_ORDER_OLDEST_FIRST
    )
    # An admin of another tenant, a reader of the platform tenant, and a service (no
    # tenant at all, so no trail of its own) are all refused.
    refusals = [
        (request, "admin-b"),
        (request, "reader-a"),
        (audit_pb2.SearchAuditEventsRequest(), "nexus"),
    ]
    for refused_request, token in refusals:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SearchAuditEvents(refused_request, metadata=_auth(token), timeout=10)
        assert (caught.value.code(), _error_info(caught.value).reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "PLATFORM_ADMIN_REQUIRED",
        ), token
    # The platform tenant's admin reads it.
    response = await stub.SearchAuditEvents(request, metadata=_auth("admin-a"), timeout=10)
    assert [(e.tenant, e.request_id, e.reason) for e in response.events] == [
        ("", "auth-0", "TOKEN_EXPIRED"),
        ("", "auth-1", "TOKEN_EXPIRED"),
    ]
    verdict = await stub.VerifyAuditTrail(
        audit_pb2.VerifyAuditTrailRequest(platform=True), metadata=_auth("admin-a"), timeout=10
    )
    assert (verdict.ok, verdict.checked_count) == (True, 2)


async def test_bad_input_is_invalid_argument(service: Served) -> None:
    stub = _stub(service.address)
    late, early = Timestamp(seconds=2_000_000_000), Timestamp(seconds=1_000_000_000)
    bad_requests = [
        audit_pb2.SearchAuditEventsRequest(
            filter=audit_pb2.AuditEventFilter(start_time=late, end_time=early)
        ),
        audit_pb2.SearchAuditEventsRequest(page_size=-1),
        audit_pb2.SearchAuditEventsRequest(order=7),  # type: ignore[arg-type]
        audit_pb2.SearchAuditEventsRequest(filter=audit_pb2.AuditEventFilter(outcome=9)),  # type: ignore[arg-type]
        audit_pb2.SearchAuditEventsRequest(filter=audit_pb2.AuditEventFilter(action="x" * 129)),
        audit_pb2.SearchAuditEventsRequest(
            filter=audit_pb2.AuditEventFilter(start_time=Timestamp(seconds=10**12))
        ),
        audit_pb2.SearchAuditEventsRequest(page_token="not a token"),
    ]
    for request in bad_requests:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SearchAuditEvents(request, metadata=_auth("admin-a"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
    assert await _refused(
        lambda: stub.VerifyAuditTrail(
            audit_pb2.VerifyAuditTrailRequest(from_sequence=5, to_sequence=2),
            metadata=_auth("admin-a"),
            timeout=10,
        )
    ) == (grpc.StatusCode.INVALID_ARGUMENT, "CONTRACT_VIOLATION")


async def test_calls_without_an_identity_are_refused(settings: Settings, service: Served) -> None:
    stub = _stub(service.address)
    assert await _refused(
        lambda: stub.SearchAuditEvents(audit_pb2.SearchAuditEventsRequest(), timeout=10)
    ) == (grpc.StatusCode.UNAUTHENTICATED, "MISSING_CREDENTIALS")
    assert await _refused(
        lambda: stub.VerifyAuditTrail(
            audit_pb2.VerifyAuditTrailRequest(), metadata=_auth("forged"), timeout=10
        )
    ) == (grpc.StatusCode.UNAUTHENTICATED, "BAD_SIGNATURE")
    # Even on a server whose edge authenticates nobody, the trail is never anyone's.
    async with audit_server(_with(settings, url=service.database), None) as (bare, _):
        bare_stub = _stub(bare)
        for call in (
            lambda: bare_stub.SearchAuditEvents(audit_pb2.SearchAuditEventsRequest(), timeout=10),
            lambda: bare_stub.VerifyAuditTrail(audit_pb2.VerifyAuditTrailRequest(), timeout=10),
        ):
            assert await _refused(call) == (grpc.StatusCode.UNAUTHENTICATED, "MISSING_CREDENTIALS")
        export = bare_stub.ExportAuditEvents(audit_pb2.ExportAuditEventsRequest(), timeout=10)
        assert await _refused(lambda: export.read()) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "MISSING_CREDENTIALS",
        )


async def test_an_unreachable_postgresql_is_audit_unavailable(
    settings: Settings, tenants: Tenants
) -> None:
    down = _with(
        settings, url=f"postgresql://postgres@127.0.0.1:{free_port()}/none", write_timeout=0.5
    )
    async with audit_server(down, tenants.tokens) as (address, audit_log):
        assert await _refused(
            lambda: _stub(address).SearchAuditEvents(
                audit_pb2.SearchAuditEventsRequest(), metadata=_auth("admin-a"), timeout=10
            )
        ) == (grpc.StatusCode.UNAVAILABLE, "AUDIT_UNAVAILABLE")
        with pytest.raises(Unavailable) as caught:
            await audit_log.record(_event(tenants.a, 1))
        assert caught.value.reason == "AUDIT_UNAVAILABLE"


def _grpcurl(address: str, token: str, method: str, body: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(GRPCURL),
            "-plaintext",
            "-protoset",
            str(default_descriptor_set()),
            "-H",
            f"authorization: Bearer {token}",
            "-d",
            body,
            address,
            method,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_grpcurl_exports_and_verifies(service: Served) -> None:
    assert GRPCURL.is_file(), "grpcurl is installed by scripts/install-tools.sh"
    done = await asyncio.to_thread(
        _grpcurl,
        service.address,
        "admin-a",
        "datapunk.nexus.v1.AuditService/ExportAuditEvents",
        '{"order": "AUDIT_ORDER_OLDEST_FIRST", "filter": {"outcome": "AUDIT_OUTCOME_DENY"}}',
    )
    assert done.returncode == 0, done.stderr
    decoder = json.JSONDecoder()
    text, position, events = done.stdout.strip(), 0, []
    while position < len(text):
        document, position = decoder.raw_decode(text, position)
        events.append(document["event"])
        while position < len(text) and text[position].isspace():
            position += 1
    assert [int(e["sequence"]) for e in events] == [4, 8, 12]
    done = await asyncio.to_thread(
        _grpcurl,
        service.address,
        "admin-a",
        "datapunk.nexus.v1.AuditService/VerifyAuditTrail",
        "{}",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True


def test_the_descriptor_set_has_the_audit_routes() -> None:
    routes = {(verb, path) for verb, path, _ in load_routes(default_descriptor_set()).entries()}
    assert {
        ("GET", "/v1/nexus/audit/events"),
        ("GET", "/v1/nexus/audit/events:export"),
        ("POST", "/v1/nexus/audit:verify"),
    } <= routes


# --- end to end: a Nexus process ------------------------------------------------------

CHAIN_SECRET = "nexus_test_audit_chain"
CHAIN_KEY = b"end-to-end-audit-chain-key-32by!"


@dataclass(frozen=True)
class NexusProcess:
    rest: str
    admin_key: str


def _curl(url: str, *args: str) -> tuple[int, dict[str, str], bytes]:
    """curl, a client we did not write; returns status, headers and body (status 0 when
    nothing answered)."""
    done = subprocess.run(
        ["curl", "-sS", "-i", "--max-time", "30", *args, url],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        return 0, {}, done.stderr
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


@pytest.fixture(scope="module")
def nexus(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NexusProcess]:
    """A Nexus (no Lake or Stream needed) on a private database, whose tenant ``default``
    is the platform tenant and whose chain is keyed by a secret from the environment."""
    admin_key = issuer().admin_key
    # A database of its own: the platform trail (records of no tenant) is shared by
    # everything that writes to one database, and this test reads it whole.
    with private_database(settings.engines.postgres.url, "dp_audit_test") as database:
        rest_port = free_port()
        env = {
            "DATAPUNK_ENGINES__POSTGRES__URL": database,
            "DATAPUNK_ENGINES__REDIS__URL": settings.engines.redis.url,
            "DATAPUNK_NEXUS__REST__PORT": str(rest_port),
            "DATAPUNK_NEXUS__CACHE__BACKEND": "memory",
            "DATAPUNK_NEXUS__RATE_LIMITS__BACKEND": "memory",
            "DATAPUNK_NEXUS__AUTH__POLICY__PLATFORM_TENANT": "default",
            "DATAPUNK_NEXUS__AUTH__AUDIT__CHAIN_KEY_SECRET": CHAIN_SECRET,
            f"DATAPUNK_SECRET_{CHAIN_SECRET.upper()}": CHAIN_KEY.decode(),
        }
        with run_service("nexus", tmp_path_factory.mktemp("audit-nexus"), env):
            rest = f"http://127.0.0.1:{rest_port}"

            def ready() -> bool:
                status, _, _ = _curl(
                    rest + "/v1/nexus/audit/events", "-H", f"x-api-key: {admin_key}"
                )
                return status == 200

            wait_until(ready, timeout=60, interval=0.3)
            yield NexusProcess(rest, admin_key)


def _ndjson(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line)["event"] for line in body.splitlines() if line.strip()]


def _recorded(event: dict[str, Any]) -> RecordedEvent:
    """An exported record (proto3 JSON) as the trail's type, to recompute its hash."""
    outcome = {"AUDIT_OUTCOME_ALLOW": Outcome.ALLOW, "AUDIT_OUTCOME_DENY": Outcome.DENY}
    time = datetime.fromisoformat(event["time"].replace("Z", "+00:00"))
    return RecordedEvent(
        AuditEvent(
            action=event.get("action", ""),
            outcome=outcome.get(event["outcome"], Outcome.ERROR),
            tenant=event.get("tenant", ""),
            principal=event.get("principal", ""),
            principal_kind=event.get("principalKind", ""),
            credential_id=event.get("credentialId", ""),
            method=event.get("method", ""),
            resource=event.get("resource", ""),
            reason=event.get("reason", ""),
            client_address=event.get("clientAddress", ""),
            request_id=event.get("requestId", ""),
            time=time,
        ),
        int(event["sequence"]),
        base64.b64decode(event["previousHash"]),
        base64.b64decode(event["hash"]),
    )


def test_every_call_through_the_edge_is_in_the_trail_and_exports_as_ndjson(
    nexus: NexusProcess,
) -> None:
    run = uuid.uuid4().hex[:8]
    admin = ("-H", f"x-api-key: {nexus.admin_key}")
    # A refused authentication: a key that was never issued.
    status, _, body = _curl(
        nexus.rest + "/v1/nexus/audit/events",
        "-H",
        "x-api-key: dpk_bogus_key",
        "-H",
        f"x-request-id: bad-{run}",
    )
    assert status == 401, body
    # An allowed search, then the export of the tenant's trail.
    status, _, body = _curl(
        nexus.rest + "/v1/nexus/audit/events?pageSize=3", *admin, "-H", f"x-request-id: s-{run}"
    )
    assert status == 200, body
    # The search's own record was committed before the call was forwarded: it is first.
    newest = json.loads(body)["events"][0]
    assert (newest["requestId"], newest["outcome"], newest["tenant"]) == (
        f"s-{run}",
        "AUDIT_OUTCOME_ALLOW",
        "default",
    )
    assert newest["method"] == "/datapunk.nexus.v1.AuditService/SearchAuditEvents"
    status, headers, body = _curl(
        nexus.rest + "/v1/nexus/audit/events:export?order=AUDIT_ORDER_OLDEST_FIRST",
        *admin,
        "-H",
        f"x-request-id: e-{run}",
    )
    assert status == 200, body
    assert headers["content-type"] == "application/x-ndjson"
    events = _ndjson(body)
    assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))
    assert [e["requestId"] for e in events[-2:]] == [f"s-{run}", f"e-{run}"]
    assert all(e["tenant"] == "default" for e in events)
    # The hashes are HMAC-SHA-256 with the key the secret provider gave Nexus.
    keyed = ChainHasher(CHAIN_KEY)
    for event in events:
        record = _recorded(event)
        assert keyed.record_hash(record) == record.hash
    # The refused authentication is on the platform trail, which the platform tenant's
    # administrator reads.
    status, _, body = _curl(
        nexus.rest + "/v1/nexus/audit/events:export?platform=true&filter.action=authenticate",
        *admin,
    )
    assert status == 200, body
    refused = [e for e in _ndjson(body) if e.get("requestId") == f"bad-{run}"]
    assert len(refused) == 1
    assert (refused[0]["outcome"], refused[0].get("tenant", "")) == ("AUDIT_OUTCOME_DENY", "")
    assert "dpk_bogus_key" not in body.decode()  # never the credential itself
    for platform in ("false", "true"):
        status, _, body = _curl(
            nexus.rest + "/v1/nexus/audit:verify",
            *admin,
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            json.dumps({"platform": platform == "true"}),
        )
        assert (status, json.loads(body)["ok"]) == (200, True), body


def test_the_rest_edge_refuses_the_trail_to_strangers(nexus: NexusProcess) -> None:
    status, _, body = _curl(nexus.rest + "/v1/nexus/audit/events:export")
    error = json.loads(body)
    assert (status, error["code"]) == (401, 16)
    status, _, body = _curl(
        nexus.rest + "/v1/nexus/audit/events?filter.outcome=NOPE",
        "-H",
        f"x-api-key: {nexus.admin_key}",
    )
    assert status == 400, body
