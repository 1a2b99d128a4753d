"""The attack list of issue 5 (section 7), end to end: each attack is made against a real
Nexus process (its REST edge over HTTP with httpx, and for a representative subset its
gRPC entry), and each is refused with the right status and ``ErrorInfo.reason``, with no
token or secret in the answer, and with an audit record of the refusal (outcome DENY,
that reason) that the administrator finds through ``AuditService.SearchAuditEvents``.

The platform under attack: a Lake on the stack's engines, and two Nexus processes sharing
one private PostgreSQL database and that Lake — Nexus ``default`` (the bootstrap
administrator of the tenant ``default``) and Nexus ``other`` (``auth.default_tenant =
other``, its own bootstrap key), so that one tenant's administrator can go after the
other tenant's objects. Refused authentications are recorded on the platform's trail
(no tenant), which only platform administrators read: the test Nexus makes the tenant
``default`` the platform tenant (``nexus.auth.policy.platform_tenant``) and ``admin`` the
role that reads the platform trail (``nexus.auth.audit.platform_admin_role``), so the
bootstrap administrator can read it. Signing-key deletion runs on a third Nexus with its
own database, so that deleting the suite issuer's key leaves the others alone.

Tokens are crafted with ``tests.token_kit``'s raw JOSE helpers and, where an attack needs
a real signature, signed by the suite issuer's key — the key every test Nexus signs with."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from datapunk.lake.v1 import vectors_pb2, vectors_pb2_grpc
from datapunk.nexus.v1 import (
    api_keys_pb2,
    api_keys_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
)
from datapunk_nexus.identity.api_keys.key_format import format_api_key, new_key_id, new_secret
from datapunk_shared.config import Settings, load_settings
from datapunk_shared.rpc.client import error_from_rpc_error

from tests.auth_support import issuer
from tests.support import (
    RunningService,
    engines_env,
    free_port,
    private_database,
    run_service,
    wait_until,
)
from tests.token_kit import b64, b64json

# The route most attacks go after: ListApiKeys needs ``admin`` of the caller's tenant.
TARGET_PATH = "/v1/nexus/api-keys"
# The route of the guessing attack, the only one a rate limit (keyed by client IP) covers.
GUESSED_METHOD = "/datapunk.nexus.v1.AuthService/WhoAmI"
GUESSES_ALLOWED = 5
MAX_BODY_BYTES = 65536


# --- the platform under attack ---------------------------------------------------------


@dataclass
class Nexus:
    """One Nexus process: its REST edge, its gRPC entry and its administrator's key."""

    service: RunningService
    rest: str
    entry: str
    admin_key: str
    tenant: str


@dataclass
class Platform:
    nexus: Nexus
    other: Nexus
    lake: RunningService
    database_url: str
    started: datetime


def _nexus_env(
    settings: Settings, database_url: str, rest_port: int, entry_port: int, **extra: str
) -> dict[str, str]:
    return {
        **engines_env(settings),
        "DATAPUNK_ENGINES__POSTGRES__URL": database_url,
        "DATAPUNK_NEXUS__REST__PORT": str(rest_port),
        "DATAPUNK_NEXUS__GRPC_ENTRY__PORT": str(entry_port),
        "DATAPUNK_STREAM__PORT": str(free_port()),  # no Stream runs here
        "DATAPUNK_NEXUS__CACHE__BACKEND": "memory",
        "DATAPUNK_NEXUS__RATE_LIMITS__BACKEND": "memory",
        "DATAPUNK_NEXUS__REST__MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        # The bootstrap administrator of the tenant default administers the platform and
        # reads the platform's audit trail (where refused authentications go).
        "DATAPUNK_NEXUS__AUTH__POLICY__PLATFORM_TENANT": "default",
        "DATAPUNK_NEXUS__AUTH__AUDIT__PLATFORM_ADMIN_ROLE": "admin",
        **extra,
    }


def _wait_ready(rest: str, admin_key: str) -> None:
    """Until the administrator's key works (migrations applied, keys loaded)."""

    def ready() -> bool:
        try:
            answer = httpx.get(rest + TARGET_PATH, headers={"x-api-key": admin_key}, timeout=5)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    wait_until(ready, timeout=60, interval=0.3)


@contextmanager
def _nexus(
    tmp: Path, env: Mapping[str, str], rest_port: int, entry_port: int, admin_key: str, tenant: str
) -> Iterator[Nexus]:
    with run_service("nexus", tmp, env) as service:
        rest = f"http://127.0.0.1:{rest_port}"
        _wait_ready(rest, admin_key)
        yield Nexus(service, rest, f"127.0.0.1:{entry_port}", admin_key, tenant)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    settings = load_settings()
    tmp = tmp_path_factory.mktemp("attacks")
    started = datetime.now(UTC)
    with ExitStack() as running:
        database = running.enter_context(
            private_database(settings.engines.postgres.url, "dp_attacks")
        )
        lake = running.enter_context(run_service("lake", tmp, engines_env(settings)))
        backends = json.dumps({"lake": lake.address})
        rule = {
            "name": "guessing",
            "methods": [GUESSED_METHOD],
            "key": "client_ip",
            "rate": GUESSES_ALLOWED,
            "period": 600,
        }
        rest, entry = free_port(), free_port()
        env = _nexus_env(
            settings,
            database,
            rest,
            entry,
            DATAPUNK_NEXUS__BACKENDS=backends,
            DATAPUNK_NEXUS__RATE_LIMITS__RULES=json.dumps([rule]),
        )
        nexus = running.enter_context(_nexus(tmp, env, rest, entry, issuer().admin_key, "default"))
        other_key = format_api_key(new_key_id(), new_secret())
        rest, entry = free_port(), free_port()
        env = _nexus_env(
            settings,
            database,
            rest,
            entry,
            DATAPUNK_NEXUS__BACKENDS=backends,
            DATAPUNK_AUTH__DEFAULT_TENANT="other",
            DATAPUNK_SECRET_NEXUS__BOOTSTRAP_ADMIN_KEY=other_key,
        )
        other = running.enter_context(_nexus(tmp, env, rest, entry, other_key, "other"))
        yield Platform(nexus, other, lake, database, started)


# --- tokens ----------------------------------------------------------------------------


def _claims(**overrides: Any) -> dict[str, Any]:
    """Claims of a client-credentials token of an administrator of the tenant default, as
    Nexus would issue it; ``None`` removes a claim."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer().url,
        "sub": "client:attack-bot",
        "aud": "datapunk:nexus",
        "client_id": "attack-bot",
        "datapunk_tenant": "default",
        "datapunk_roles": ["admin"],
        "jti": secrets.token_urlsafe(12),
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _header(**overrides: Any) -> dict[str, Any]:
    header: dict[str, Any] = {"alg": "ES256", "typ": "at+jwt", "kid": issuer().signer.kid}
    header.update(overrides)
    return {k: v for k, v in header.items() if v is not None}


def _signed(
    claims: Mapping[str, Any] | None = None, header: Mapping[str, Any] | None = None
) -> str:
    """A JWS signed by the suite issuer's real key, whatever its header says."""
    signing_input = f"{b64json(header or _header())}.{b64json(claims or _claims())}"
    return f"{signing_input}.{b64(issuer().signer.sign(signing_input.encode()))}"


def _public_pem() -> bytes:
    private = serialization.load_pem_private_key(issuer().pem, password=None)
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _alg_none() -> str:
    return f"{b64json(_header(alg='none'))}.{b64json(_claims())}."


def _hs256_with_public_key() -> str:
    signing_input = f"{b64json(_header(alg='HS256'))}.{b64json(_claims())}"
    mac = hmac.new(_public_pem(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def _edited_claims() -> str:
    head, _, signature = _signed(_claims(datapunk_roles=["reader"])).split(".")
    return (
        f"{head}.{b64json(_claims(datapunk_roles=['admin'], datapunk_tenant='other'))}.{signature}"
    )


def _expired() -> str:
    now = int(time.time())
    return _signed(_claims(iat=now - 900, nbf=now - 900, exp=now - 300))


def _not_yet_valid() -> str:
    now = int(time.time())
    return _signed(_claims(iat=now, nbf=now + 600, exp=now + 900))


def _attacker_jwk() -> dict[str, str]:
    key = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64(key.x.to_bytes(32, "big")),
        "y": b64(key.y.to_bytes(32, "big")),
    }


# name -> (token maker, reason); each is refused with 401 UNAUTHENTICATED.
TOKEN_ATTACKS: dict[str, tuple[Any, str]] = {
    "alg_none": (_alg_none, "UNSUPPORTED_ALGORITHM"),
    "hs256_with_the_public_key": (_hs256_with_public_key, "UNSUPPORTED_ALGORITHM"),
    "edited_claims": (_edited_claims, "BAD_SIGNATURE"),
    "expired": (_expired, "TOKEN_EXPIRED"),
    "not_yet_valid": (_not_yet_valid, "TOKEN_NOT_YET_VALID"),
    "wrong_audience": (lambda: _signed(_claims(aud="datapunk:lake")), "WRONG_AUDIENCE"),
    "untrusted_issuer": (
        lambda: _signed(_claims(iss="https://issuer.attacker.example")),
        "UNTRUSTED_ISSUER",
    ),
    "id_token": (
        lambda: _signed(_claims(nonce="n-0S6", auth_time=int(time.time())), _header(typ="JWT")),
        "WRONG_TOKEN_TYPE",
    ),
    "kid_path_traversal": (lambda: _signed(header=_header(kid="../../dev/null")), "UNKNOWN_KEY"),
    "kid_quotes": (lambda: _signed(header=_header(kid="' OR '1'='1")), "UNKNOWN_KEY"),
    "kid_sql": (lambda: _signed(header=_header(kid='"; DROP TABLE keys; --')), "UNKNOWN_KEY"),
    "jku": (
        lambda: _signed(header=_header(jku="https://attacker.example/jwks.json")),
        "FORBIDDEN_HEADER",
    ),
    "x5u": (
        lambda: _signed(header=_header(x5u="https://attacker.example/cert.pem")),
        "FORBIDDEN_HEADER",
    ),
    "jwk": (lambda: _signed(header=_header(jwk=_attacker_jwk())), "FORBIDDEN_HEADER"),
    "oversized": (lambda: _signed(_claims(padding="p" * 9000)), "TOKEN_TOO_LARGE"),
}
# Over the gRPC entry too: one of each family of checks.
GRPC_TOKEN_ATTACKS = (
    "alg_none",
    "hs256_with_the_public_key",
    "edited_claims",
    "expired",
    "wrong_audience",
    "id_token",
    "kid_path_traversal",
    "jku",
)


# --- calls and answers -----------------------------------------------------------------


def _request_id(label: str) -> str:
    return f"attack-{label}-{uuid.uuid4().hex[:12]}"


@dataclass
class Answer:
    status: int
    headers: httpx.Headers
    body: bytes

    @property
    def document(self) -> Any:
        return json.loads(self.body)

    @property
    def reason(self) -> str:
        info = next(
            d for d in self.document["details"] if d["@type"].endswith("google.rpc.ErrorInfo")
        )
        reason: str = info["reason"]
        return reason

    def shows(self, *secrets_: str) -> bool:
        """Whether any of ``secrets_`` appears anywhere in the answer."""
        return _leaks(
            self.body.decode(errors="replace") + json.dumps(dict(self.headers)), *secrets_
        )


def _leaks(text: str, *secrets_: str) -> bool:
    """Whether ``text`` shows any of ``secrets_``, or the payload or signature of a token
    among them, or the secret half of an API key among them."""
    for secret in secrets_:
        parts = [secret, *(p for p in secret.replace("_", ".").split(".") if len(p) >= 16)]
        if any(part in text for part in parts):
            return True
    return False


def _http(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    json_body: Any = None,
    content: bytes | None = None,
    data: Mapping[str, str] | None = None,
) -> Answer:
    answer = httpx.request(
        method,
        url,
        headers=dict(headers or {}),
        json=json_body,
        content=content,
        data=data,
        timeout=30,
    )
    return Answer(answer.status_code, answer.headers, answer.content)


def _rest(
    nexus: Nexus, label: str, headers: Mapping[str, str], path: str = TARGET_PATH
) -> tuple[Answer, str]:
    request_id = _request_id(label)
    return _http(
        "GET", nexus.rest + path, headers={**headers, "x-request-id": request_id}
    ), request_id


def _admin_http(nexus: Nexus, method: str, path: str, body: Any = None) -> Answer:
    return _http(method, nexus.rest + path, headers={"x-api-key": nexus.admin_key}, json_body=body)


@dataclass
class GrpcRefusal:
    code: grpc.StatusCode
    reason: str
    details: str
    trailers: str


def _grpc_refusal(call: Any, request: Any, metadata: Sequence[tuple[str, str]]) -> GrpcRefusal:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, metadata=tuple(metadata), timeout=15)
    error: Any = caught.value
    return GrpcRefusal(
        error.code(),
        error_from_rpc_error(error).reason,
        error.details() or "",
        repr(error.trailing_metadata()) + repr(error.initial_metadata()),
    )


@contextmanager
def _channel(address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(address) as channel:
        yield channel


def _list_api_keys(channel: grpc.Channel) -> Any:
    return api_keys_pb2_grpc.ApiKeyServiceStub(channel).ListApiKeys


# --- the audit trail -------------------------------------------------------------------


def _audit(
    nexus: Nexus,
    request_id: str,
    *,
    platform: bool,
    since: datetime,
    action: str = "",
) -> list[audit_pb2.AuditEvent]:
    """The records of ``request_id`` in the platform's trail or in the trail of the
    administrator's tenant, read through the gRPC entry with the administrator's key."""
    request = audit_pb2.SearchAuditEventsRequest(page_size=1000, platform=platform)
    request.filter.action = action
    request.filter.start_time.FromDatetime(since)
    found = []
    with _channel(nexus.entry) as channel:
        search = audit_pb2_grpc.AuditServiceStub(channel).SearchAuditEvents
        while True:
            page = search(request, metadata=(("x-api-key", nexus.admin_key),), timeout=15)
            found += [e for e in page.events if e.request_id == request_id]
            if not page.next_page_token:
                return found
            request.page_token = page.next_page_token


def _assert_denied_in_audit(
    nexus: Nexus,
    request_id: str,
    reason: str,
    *,
    platform: bool = True,
    action: str = "authenticate",
    since: datetime,
) -> audit_pb2.AuditEvent:
    records = _audit(nexus, request_id, platform=platform, since=since, action=action)
    assert [(r.outcome, r.reason) for r in records] == [(audit_pb2.AUDIT_OUTCOME_DENY, reason)], (
        records
    )
    return records[0]


def _assert_refused(answer: Answer, status: int, reason: str, *secrets_: str) -> None:
    assert answer.status == status, answer.body
    assert answer.reason == reason, answer.body
    assert answer.headers["content-type"] == "application/json"
    assert not answer.shows(*secrets_), answer.body
    if status == 401:
        assert answer.headers["www-authenticate"] == 'Bearer realm="datapunk"'


# --- token attacks ---------------------------------------------------------------------


def test_a_genuine_token_of_the_issuer_is_accepted(platform: Platform) -> None:
    # The control: the same kind of token, unbroken, reaches the route.
    answer, _ = _rest(platform.nexus, "control", {"authorization": f"Bearer {_signed()}"})
    assert answer.status == 200, answer.body


@pytest.mark.parametrize("attack", sorted(TOKEN_ATTACKS))
def test_token_attacks_are_refused_and_audited_over_rest(platform: Platform, attack: str) -> None:
    make, reason = TOKEN_ATTACKS[attack]
    token = make()
    since = datetime.now(UTC)
    answer, request_id = _rest(platform.nexus, attack, {"authorization": f"Bearer {token}"})
    _assert_refused(answer, 401, reason, token)
    record = _assert_denied_in_audit(platform.nexus, request_id, reason, since=since)
    assert (record.tenant, record.principal) == ("", "")
    assert record.method == "/datapunk.nexus.v1.ApiKeyService/ListApiKeys"
    assert record.client_address == "127.0.0.1"


@pytest.mark.parametrize("attack", GRPC_TOKEN_ATTACKS)
def test_token_attacks_are_refused_and_audited_over_grpc(platform: Platform, attack: str) -> None:
    make, reason = TOKEN_ATTACKS[attack]
    token = make()
    since = datetime.now(UTC)
    request_id = _request_id(attack)
    with _channel(platform.nexus.entry) as channel:
        refusal = _grpc_refusal(
            _list_api_keys(channel),
            api_keys_pb2.ListApiKeysRequest(),
            [("authorization", f"Bearer {token}"), ("x-request-id", request_id)],
        )
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAUTHENTICATED, reason)
    assert not _leaks(refusal.details + refusal.trailers, token)
    _assert_denied_in_audit(platform.nexus, request_id, reason, since=since)


def test_oversized_tokens_and_headers(platform: Platform) -> None:
    since = datetime.now(UTC)
    # A token past auth.max_token_bytes (8 KiB) but within the header limit is refused
    # before it is parsed (TOKEN_TOO_LARGE, in TOKEN_ATTACKS). A header block past
    # rest.max_header_bytes (16 KiB), whether the token or another header, is refused by
    # the HTTP server before any route or credential is looked at: 431, and no record
    # (there is no call to record yet).
    huge_token = "x" * 20_000
    for label, headers in (
        ("huge-token", {"authorization": f"Bearer {huge_token}"}),
        ("huge-header", {"x-padding": "p" * 20_000}),
        ("many-headers", {f"x-padding-{i}": "p" * 200 for i in range(100)}),
    ):
        answer, _ = _rest(platform.nexus, label, headers)
        _assert_refused(answer, 431, "HEADERS_TOO_LARGE", huge_token)
    # An oversized API key: refused as not a key, audited.
    key = "dpk_" + "a" * 9000
    answer, request_id = _rest(platform.nexus, "huge-key", {"x-api-key": key})
    _assert_refused(answer, 401, "INVALID_API_KEY", key)
    _assert_denied_in_audit(platform.nexus, request_id, "INVALID_API_KEY", since=since)
    # A body past rest.max_body_bytes: 413.
    answer = _http(
        "POST",
        platform.nexus.rest + "/v1/nexus/api-keys",
        headers={"x-api-key": platform.nexus.admin_key, "content-type": "application/json"},
        content=b'{"name": "' + b"n" * (MAX_BODY_BYTES + 10) + b'"}',
    )
    _assert_refused(answer, 413, "REQUEST_TOO_LARGE", platform.nexus.admin_key)

    # Over gRPC, metadata past gRPC core's limits (8 KiB: refused at random, more often
    # the larger it is; 16 KiB: always) is refused by the transport, RESOURCE_EXHAUSTED,
    # before the entry sees the call (so nothing reaches the trail): a token past
    # auth.max_token_bytes (8 KiB) cannot be sent over gRPC at all.
    with _channel(platform.nexus.entry) as channel:
        for size in (17_000, 40_000):
            with pytest.raises(grpc.RpcError) as caught:
                _list_api_keys(channel)(
                    api_keys_pb2.ListApiKeysRequest(),
                    metadata=(("authorization", "Bearer " + "x" * size),),
                    timeout=15,
                )
            error: Any = caught.value
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            assert "x" * 64 not in (error.details() or "")


# --- tokens from the token endpoint ----------------------------------------------------


@dataclass
class Client:
    client_id: str
    secret: str


def _client(nexus: Nexus, *, roles: Sequence[str] = ("admin",), refresh: bool = True) -> Client:
    client_id = f"atk-{uuid.uuid4().hex[:10]}"
    answer = _admin_http(
        nexus,
        "POST",
        "/v1/nexus/auth/clients",
        {"clientId": client_id, "roles": list(roles), "allowRefreshTokens": refresh},
    )
    assert answer.status == 200, answer.body
    return Client(client_id, answer.document["clientSecret"])


def _token_request(nexus: Nexus, client: Client, **form: str) -> Answer:
    return _http(
        "POST",
        nexus.rest + "/oauth/token",
        data={"client_id": client.client_id, "client_secret": client.secret, **form},
    )


def _grant(nexus: Nexus, client: Client) -> tuple[str, str]:
    answer = _token_request(nexus, client, grant_type="client_credentials")
    assert answer.status == 200, answer.body
    return answer.document["access_token"], answer.document["refresh_token"]


def _refresh(nexus: Nexus, client: Client, refresh_token: str) -> Answer:
    return _token_request(nexus, client, grant_type="refresh_token", refresh_token=refresh_token)


def test_a_refresh_token_used_as_an_access_token(platform: Platform) -> None:
    client = _client(platform.nexus)
    access, refresh = _grant(platform.nexus, client)
    assert _rest(platform.nexus, "ok", {"authorization": f"Bearer {access}"})[0].status == 200
    since = datetime.now(UTC)
    answer, request_id = _rest(
        platform.nexus, "refresh-as-access", {"authorization": f"Bearer {refresh}"}
    )
    _assert_refused(answer, 401, "MALFORMED_TOKEN", refresh, access, client.secret)
    _assert_denied_in_audit(platform.nexus, request_id, "MALFORMED_TOKEN", since=since)
    with _channel(platform.nexus.entry) as channel:
        request_id = _request_id("grpc-refresh-as-access")
        refusal = _grpc_refusal(
            _list_api_keys(channel),
            api_keys_pb2.ListApiKeysRequest(),
            [("authorization", f"Bearer {refresh}"), ("x-request-id", request_id)],
        )
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAUTHENTICATED, "MALFORMED_TOKEN")
    assert not _leaks(refusal.details + refusal.trailers, refresh)
    _assert_denied_in_audit(platform.nexus, request_id, "MALFORMED_TOKEN", since=since)


def test_a_replayed_rotated_refresh_token_revokes_its_family(platform: Platform) -> None:
    nexus = platform.nexus
    client = _client(nexus)
    _, first = _grant(nexus, client)
    rotated = _refresh(nexus, client, first)
    assert rotated.status == 200, rotated.body
    second, newer_access = rotated.document["refresh_token"], rotated.document["access_token"]
    assert _rest(nexus, "ok", {"authorization": f"Bearer {newer_access}"})[0].status == 200

    since = datetime.now(UTC)
    replay_id = _request_id("replay")
    replay = _http(
        "POST",
        nexus.rest + "/oauth/token",
        headers={"x-request-id": replay_id},
        data={
            "client_id": client.client_id,
            "client_secret": client.secret,
            "grant_type": "refresh_token",
            "refresh_token": first,
        },
    )
    assert (replay.status, replay.document["error"]) == (400, "invalid_grant")
    assert not replay.shows(first, second, client.secret)
    _assert_denied_in_audit(
        nexus, replay_id, "INVALID_GRANT", platform=False, action="token.issue", since=since
    )
    # The whole family is revoked: the newer refresh token and its access token too.
    newer = _refresh(nexus, client, second)
    assert (newer.status, newer.document["error"]) == (400, "invalid_grant")
    answer, request_id = _rest(nexus, "family-revoked", {"authorization": f"Bearer {newer_access}"})
    _assert_refused(answer, 401, "TOKEN_REVOKED", newer_access)
    _assert_denied_in_audit(nexus, request_id, "TOKEN_REVOKED", since=since)


def test_token_requests_are_audited_granted_or_refused(platform: Platform) -> None:
    """The token endpoint authenticates clients itself (the entries let it through), so it
    records its own answers: a grant in the client's trail, a wrong secret for a known
    or an unknown client in the platform's — never the secret or the token."""
    nexus = platform.nexus
    client = _client(nexus, refresh=False)
    since = datetime.now(UTC)
    granted_id = _request_id("granted")
    granted = _http(
        "POST",
        nexus.rest + "/oauth/token",
        headers={"x-request-id": granted_id},
        data={
            "grant_type": "client_credentials",
            "client_id": client.client_id,
            "client_secret": client.secret,
        },
    )
    assert granted.status == 200, granted.body
    records = _audit(nexus, granted_id, platform=False, since=since, action="token.issue")
    assert [(r.outcome, r.principal, r.resource) for r in records] == [
        (audit_pb2.AUDIT_OUTCOME_ALLOW, f"client:{client.client_id}", f"client/{client.client_id}")
    ]
    assert records[0].credential_id  # the jti of the new token
    assert records[0].credential_id not in (granted.document["access_token"], client.secret)
    for client_id in (client.client_id, "no-such-client"):
        for path in ("/oauth/token", "/oauth/revoke", "/oauth/introspect"):
            guess = secrets.token_urlsafe(24)
            request_id = _request_id("secret-guess")
            form = {"client_id": client_id, "client_secret": guess, "token": "x"}
            if path == "/oauth/token":
                form = {"grant_type": "client_credentials", **form}
            answer = _http(
                "POST", nexus.rest + path, headers={"x-request-id": request_id}, data=form
            )
            assert (answer.status, answer.document["error"]) == (401, "invalid_client")
            assert not answer.shows(guess)
            record = _assert_denied_in_audit(
                nexus, request_id, "INVALID_CLIENT", action="", since=since
            )
            assert record.resource == f"client/{client_id}"
            assert guess not in str(record)


def test_use_after_revocation(platform: Platform) -> None:
    nexus = platform.nexus
    client = _client(nexus, refresh=False)
    access = _plain_access(nexus, client)
    # Used (and so remembered by the edge) before it is revoked.
    assert _rest(nexus, "ok", {"authorization": f"Bearer {access}"})[0].status == 200
    with _channel(nexus.entry) as channel:
        list_clients = auth_pb2_grpc.AuthServiceStub(channel).ListClients
        metadata = (("authorization", f"Bearer {access}"),)
        list_clients(auth_pb2.ListClientsRequest(), metadata=metadata, timeout=15)
    revoked = _http(
        "POST",
        nexus.rest + "/oauth/revoke",
        data={"client_id": client.client_id, "client_secret": client.secret, "token": access},
    )
    assert revoked.status == 200, revoked.body
    since = datetime.now(UTC)
    answer, request_id = _rest(nexus, "revoked", {"authorization": f"Bearer {access}"})
    _assert_refused(answer, 401, "TOKEN_REVOKED", access, client.secret)
    _assert_denied_in_audit(nexus, request_id, "TOKEN_REVOKED", since=since)
    request_id = _request_id("grpc-revoked")
    with _channel(nexus.entry) as channel:
        refusal = _grpc_refusal(
            _list_api_keys(channel),
            api_keys_pb2.ListApiKeysRequest(),
            [("authorization", f"Bearer {access}"), ("x-request-id", request_id)],
        )
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_REVOKED")
    _assert_denied_in_audit(nexus, request_id, "TOKEN_REVOKED", since=since)
    # Another Nexus on the same database refuses it too.
    answer, _ = _rest(platform.other, "revoked-elsewhere", {"authorization": f"Bearer {access}"})
    assert (answer.status, answer.reason) == (401, "TOKEN_REVOKED")


def _plain_access(nexus: Nexus, client: Client) -> str:
    answer = _token_request(nexus, client, grant_type="client_credentials")
    assert answer.status == 200, answer.body
    token: str = answer.document["access_token"]
    return token


def test_use_after_key_deletion(tmp_path: Path) -> None:
    """A token keeps working through a rotation (overlap) and is refused the moment its
    key is deleted (UNKNOWN_KEY), even one the edge has just verified and remembers. On
    a Nexus of its own: deleting the suite issuer's key must not touch the others. Its
    service port trusts its own JWKS (it signs with a new key after the rotation)."""
    settings = load_settings()
    rest_port, entry_port = free_port(), free_port()
    with private_database(settings.engines.postgres.url, "dp_attacks") as database:
        env = _nexus_env(
            settings,
            database,
            rest_port,
            entry_port,
            DATAPUNK_AUTH__JWKS_URL=f"http://127.0.0.1:{rest_port}/.well-known/jwks.json",
            DATAPUNK_AUTH__JWKS__REFETCH_INTERVAL="0",
            # Its service port rereads the key set every second, as a backend would after
            # its cache time: a deleted key is gone from it soon after.
            DATAPUNK_AUTH__JWKS__MIN_TTL="0.5",
            DATAPUNK_AUTH__JWKS__DEFAULT_TTL="1",
            DATAPUNK_AUTH__JWKS__MAX_TTL="1",
            # It deletes the suite issuer's key, which every other Nexus of the suite
            # trusts: its announcement must reach its own service port only.
            DATAPUNK_AUTH__KEY_EVENTS_CHANNEL=f"datapunk:test:keys:{uuid.uuid4().hex}",
        )
        with _nexus(tmp_path, env, rest_port, entry_port, issuer().admin_key, "default") as nexus:
            client = _client(nexus, refresh=False)
            access = _plain_access(nexus, client)
            crafted = _signed()
            for token in (access, crafted):
                assert _rest(nexus, "ok", {"authorization": f"Bearer {token}"})[0].status == 200
            old_kid = issuer().signer.kid
            admin = (("x-api-key", nexus.admin_key),)
            with _channel(nexus.entry) as channel:
                keys = auth_pb2_grpc.AuthServiceStub(channel)
                rotated = keys.RotateSigningKey(
                    auth_pb2.RotateSigningKeyRequest(), metadata=admin, timeout=15
                )
                assert rotated.key.kid != old_kid
                # The overlap: the retired key still verifies what it signed.
                for token in (access, crafted):
                    answer, _ = _rest(nexus, "overlap", {"authorization": f"Bearer {token}"})
                    assert answer.status == 200, answer.body
                keys.DeleteSigningKey(
                    auth_pb2.DeleteSigningKeyRequest(name=f"signingKeys/{old_kid}"),
                    metadata=admin,
                    timeout=15,
                )
                since = datetime.now(UTC)
                for label, token in (("issued", access), ("crafted", crafted)):
                    answer, request_id = _rest(
                        nexus, f"deleted-{label}", {"authorization": f"Bearer {token}"}
                    )
                    _assert_refused(answer, 401, "UNKNOWN_KEY", token)
                    _assert_denied_in_audit(nexus, request_id, "UNKNOWN_KEY", since=since)
                request_id = _request_id("grpc-deleted")
                refusal = _grpc_refusal(
                    _list_api_keys(channel),
                    api_keys_pb2.ListApiKeysRequest(),
                    [("authorization", f"Bearer {access}"), ("x-request-id", request_id)],
                )
                assert (refusal.code, refusal.reason) == (
                    grpc.StatusCode.UNAUTHENTICATED,
                    "UNKNOWN_KEY",
                )
                _assert_denied_in_audit(nexus, request_id, "UNKNOWN_KEY", since=since)
                # Tokens of the new key work, through both entries, also once the
                # backend (here Nexus's own service port) has forgotten the deleted key
                # and the tokens it verified with it: the key ring announced the deletion
                # on Redis and the service port dropped both at once (key_events), well
                # within this pause; Nexus's own service tokens follow the active key.
                time.sleep(2)
                fresh = _plain_access(nexus, client)
                answer, _ = _rest(nexus, "fresh", {"authorization": f"Bearer {fresh}"})
                assert answer.status == 200, answer.body
                _list_api_keys(channel)(
                    api_keys_pb2.ListApiKeysRequest(),
                    metadata=(("authorization", f"Bearer {fresh}"),),
                    timeout=15,
                )


# --- tenants ---------------------------------------------------------------------------


def test_another_tenants_objects_are_not_found(platform: Platform) -> None:
    """The administrator of the tenant other asks, by their ids, for the tenant default's
    collection, API key and OAuth client: none exists for it (404), nothing is changed,
    and its calls are audited in its own trail, not in the victim's."""
    nexus, other = platform.nexus, platform.other
    name = f"attack_{uuid.uuid4().hex[:8]}"
    created = _admin_http(
        nexus,
        "POST",
        f"/v1/lake/collections?collectionId={name}",
        {"vectorSize": 2, "distance": "DISTANCE_COSINE"},
    )
    assert created.status == 200, created.body
    client = _client(nexus)
    keys = _admin_http(nexus, "GET", "/v1/nexus/api-keys").document["apiKeys"]
    victim_key = keys[0]["id"]
    try:
        since = datetime.now(UTC)
        attempts = [
            ("GET", f"/v1/lake/collections/{name}", None),
            (
                "POST",
                f"/v1/lake/collections/{name}/points:upsert",
                {"points": [{"id": {"num": "1"}, "vector": [1, 0]}]},
            ),
            ("POST", f"/v1/lake/collections/{name}/points:count", {}),
            ("DELETE", f"/v1/lake/collections/{name}", None),
            ("GET", f"/v1/nexus/api-keys/{victim_key}", None),
            ("POST", f"/v1/nexus/api-keys/{victim_key}:revoke", {}),
            ("GET", f"/v1/nexus/auth/clients/{client.client_id}", None),
            ("DELETE", f"/v1/nexus/auth/clients/{client.client_id}", None),
        ]
        for method, path, body in attempts:
            request_id = _request_id("other-tenant")
            answer = _http(
                method,
                other.rest + path,
                headers={"x-api-key": other.admin_key, "x-request-id": request_id},
                json_body=body,
            )
            assert answer.status == 404, (method, path, answer.body)
            assert answer.document["code"] == 5
            assert not answer.shows(other.admin_key, client.secret)
            # Recorded in the attacker's trail (the edge let its administrator try its
            # own tenant's names), never in the victim's.
            mine = _audit(other, request_id, platform=False, since=since)
            assert [r.tenant for r in mine] == ["other"], (path, mine)
            assert _audit(nexus, request_id, platform=False, since=since) == []
        # Over the gRPC entry the same.
        with _channel(other.entry) as channel:
            refusal = _grpc_refusal(
                api_keys_pb2_grpc.ApiKeyServiceStub(channel).GetApiKey,
                api_keys_pb2.GetApiKeyRequest(id=victim_key),
                [("x-api-key", other.admin_key)],
            )
        assert refusal.code == grpc.StatusCode.NOT_FOUND
        # Nothing of the victim's changed.
        assert _admin_http(nexus, "GET", f"/v1/lake/collections/{name}").status == 200
        counted = _admin_http(nexus, "POST", f"/v1/lake/collections/{name}/points:count", {})
        assert counted.document["count"] == "0"
        assert (
            _admin_http(nexus, "GET", f"/v1/nexus/api-keys/{victim_key}").document["apiKey"][
                "state"
            ]
            == "API_KEY_STATE_ACTIVE"
        )
        assert _admin_http(nexus, "GET", f"/v1/nexus/auth/clients/{client.client_id}").status == 200
        # And the other tenant's lists do not show the victim's objects.
        listed = _http(
            "GET", other.rest + "/v1/lake/collections", headers={"x-api-key": other.admin_key}
        )
        assert name not in json.dumps(listed.document)
        listed = _http(
            "GET", other.rest + "/v1/nexus/api-keys", headers={"x-api-key": other.admin_key}
        )
        assert victim_key not in json.dumps(listed.document)
    finally:
        assert _admin_http(nexus, "DELETE", f"/v1/lake/collections/{name}").status == 200


def test_a_token_of_one_tenant_reaches_only_its_tenant(platform: Platform) -> None:
    """A genuine token of the tenant other, presented at the Nexus whose default tenant is
    default: its tenant is the token's, whatever the Nexus's default."""
    token = _signed(_claims(datapunk_tenant="other", sub="client:other-bot", client_id="other-bot"))
    answer = _http(
        "GET",
        platform.nexus.rest + TARGET_PATH,
        headers={"authorization": f"Bearer {token}"},
    )
    assert answer.status == 200, answer.body
    shown = {key["tenant"] for key in answer.document.get("apiKeys", [])}
    assert shown == {"other"}, shown


# --- mass assignment -------------------------------------------------------------------


def test_tenant_and_role_fields_in_bodies_are_never_trusted(platform: Platform) -> None:
    nexus, other = platform.nexus, platform.other
    # A field the request does not have: 400, nothing created.
    answer = _admin_http(
        nexus,
        "POST",
        "/v1/nexus/api-keys",
        {"name": "mass", "roles": ["reader"], "tenant": "other"},
    )
    _assert_refused(answer, 400, "UNKNOWN_FIELD", nexus.admin_key)
    # An output-only field the message has: ignored, the client is the caller's tenant's.
    client_id = f"mass-{uuid.uuid4().hex[:8]}"
    answer = _admin_http(
        nexus,
        "POST",
        "/v1/nexus/auth/clients",
        {"clientId": client_id, "tenant": "other", "roles": ["reader"]},
    )
    assert answer.status == 200, answer.body
    assert answer.document["client"]["tenant"] == "default"
    looked_up = _http(
        "GET",
        other.rest + f"/v1/nexus/auth/clients/{client_id}",
        headers={"x-api-key": other.admin_key},
    )
    assert looked_up.status == 404
    # A tenant smuggled as an unknown field over gRPC (field 99): ignored.
    request = api_keys_pb2.CreateApiKeyRequest(name="mass-grpc", roles=["reader"])
    smuggled = request.SerializeToString() + b"\x9a\x06\x05other"  # field 99, "other"
    with _channel(nexus.entry) as channel:
        create = channel.unary_unary(
            "/datapunk.nexus.v1.ApiKeyService/CreateApiKey",
            request_serializer=lambda raw: raw,
            response_deserializer=api_keys_pb2.CreateApiKeyResponse.FromString,
        )
        created = create(smuggled, metadata=(("x-api-key", nexus.admin_key),), timeout=15)
    assert created.api_key.tenant == "default"
    # The identity a service believes travels in x-datapunk-on-behalf-of: a caller's own
    # is dropped at the edge, never believed.
    forged = json.dumps(
        {"sub": "client:x", "tenant": "default", "kind": "client", "roles": ["admin"]}
    )
    with _channel(other.entry) as channel:
        whoami = auth_pb2_grpc.AuthServiceStub(channel).WhoAmI(
            auth_pb2.WhoAmIRequest(),
            metadata=(("x-api-key", other.admin_key), ("x-datapunk-on-behalf-of", forged)),
            timeout=15,
        )
    # Nexus forwards the call to itself, acting for the caller its edge authenticated.
    caller = whoami.on_behalf_of
    assert (caller.tenant, caller.kind) == ("other", "api_key"), whoami
    assert "client:x" not in str(whoami)
    answer = _http(
        "GET",
        other.rest + "/v1/nexus/auth/whoami",
        headers={"x-api-key": other.admin_key, "x-datapunk-on-behalf-of": forged},
    )
    assert answer.status == 200, answer.body
    assert answer.document["onBehalfOf"]["tenant"] == "other", answer.body
    assert "client:x" not in answer.body.decode()


def _role(nexus: Nexus, role_id: str, method: str) -> None:
    answer = _admin_http(
        nexus,
        "PUT",
        f"/v1/nexus/policy/roles/{role_id}",
        {
            "permissions": [
                {
                    "resourceType": "RESOURCE_TYPE_ROUTE",
                    "namePattern": method,
                    "actions": ["ACTION_ADMIN"],
                }
            ],
        },
    )
    assert answer.status == 200, answer.body


def _key_with_roles(nexus: Nexus, *roles: str) -> str:
    answer = _admin_http(
        nexus, "POST", "/v1/nexus/api-keys", {"name": "limited", "roles": list(roles)}
    )
    assert answer.status == 200, answer.body
    key: str = answer.document["key"]
    return key


def _assert_refused_and_audited(
    nexus: Nexus, method: str, path: str, key: str, body: Any, reason: str, status: int = 403
) -> None:
    """The call is refused with ``reason``, and the trail of the caller's tenant holds a
    DENY record with that reason for it."""
    since = datetime.now(UTC)
    request_id = _request_id("escalate")
    answer = _http(
        method,
        nexus.rest + path,
        headers={"x-api-key": key, "x-request-id": request_id},
        json_body=body,
    )
    _assert_refused(answer, status, reason, key)
    records = _audit(nexus, request_id, platform=False, since=since)
    assert (audit_pb2.AUDIT_OUTCOME_DENY, reason) in [(r.outcome, r.reason) for r in records], (
        records
    )


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        (
            "datapunk.nexus.v1.ApiKeyService.CreateApiKey",
            "/v1/nexus/api-keys",
            {"name": "escalate", "roles": ["admin"]},
        ),
        (
            "datapunk.nexus.v1.AuthService.CreateClient",
            "/v1/nexus/auth/clients",
            {"clientId": "escalate-{}", "roles": ["admin"]},
        ),
    ],
)
def test_a_role_the_caller_lacks_cannot_be_handed_out(
    platform: Platform, method: str, path: str, body: dict[str, Any]
) -> None:
    """A principal allowed to make credentials (but not an administrator) asks for one
    carrying the admin role: refused (403 ROLE_NOT_HELD), audited, nothing made."""
    nexus = platform.nexus
    role_id = f"maker-{uuid.uuid4().hex[:6]}"
    _role(nexus, role_id, method)
    key = _key_with_roles(nexus, role_id)
    body = {k: v.format(uuid.uuid4().hex[:6]) if isinstance(v, str) else v for k, v in body.items()}
    _assert_refused_and_audited(nexus, "POST", path, key, body, "ROLE_NOT_HELD")
    # What the role does allow still works: a credential with the caller's own role.
    allowed = {**body, "roles": [role_id]}
    if "clientId" in allowed:
        allowed["clientId"] = f"allowed-{uuid.uuid4().hex[:6]}"
    answer = _http("POST", nexus.rest + path, headers={"x-api-key": key}, json_body=allowed)
    assert answer.status == 200, answer.body


def test_a_credential_carrying_roles_the_caller_lacks_cannot_be_taken_over(
    platform: Platform,
) -> None:
    """Rotating a credential hands its new secret to the caller: a principal allowed to
    rotate (but not an administrator) may rotate only credentials whose roles it holds —
    never the administrator's API key or an administrator client (403 ROLE_NOT_HELD,
    audited), whose secrets keep working."""
    nexus = platform.nexus
    admin_client = _client(nexus, roles=("admin",), refresh=False)
    admin_key_id = nexus.admin_key.split("_")[1]
    role_id = f"rotator-{uuid.uuid4().hex[:6]}"
    answer = _admin_http(
        nexus,
        "PUT",
        f"/v1/nexus/policy/roles/{role_id}",
        {
            "permissions": [
                {
                    "resourceType": "RESOURCE_TYPE_ROUTE",
                    "namePattern": method,
                    "actions": ["ACTION_ADMIN"],
                }
                for method in (
                    "datapunk.nexus.v1.ApiKeyService.RotateApiKey",
                    "datapunk.nexus.v1.AuthService.RotateClientSecret",
                    "datapunk.nexus.v1.ApiKeyService.CreateApiKey",
                    "datapunk.nexus.v1.AuthService.CreateClient",
                )
            ],
        },
    )
    assert answer.status == 200, answer.body
    key = _key_with_roles(nexus, role_id)
    _assert_refused_and_audited(
        nexus, "POST", f"/v1/nexus/api-keys/{admin_key_id}:rotate", key, {}, "ROLE_NOT_HELD"
    )
    _assert_refused_and_audited(
        nexus,
        "POST",
        f"/v1/nexus/auth/clients/{admin_client.client_id}:rotateSecret",
        key,
        {},
        "ROLE_NOT_HELD",
    )
    # Over the gRPC entry the same.
    since = datetime.now(UTC)
    request_id = _request_id("grpc-takeover")
    with _channel(nexus.entry) as channel:
        refusal = _grpc_refusal(
            api_keys_pb2_grpc.ApiKeyServiceStub(channel).RotateApiKey,
            api_keys_pb2.RotateApiKeyRequest(id=admin_key_id),
            [("x-api-key", key), ("x-request-id", request_id)],
        )
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_HELD")
    records = _audit(nexus, request_id, platform=False, since=since)
    assert (audit_pb2.AUDIT_OUTCOME_DENY, "ROLE_NOT_HELD") in [
        (r.outcome, r.reason) for r in records
    ]
    assert _rest(nexus, "still-admin", {"x-api-key": nexus.admin_key})[0].status == 200
    assert _token_request(nexus, admin_client, grant_type="client_credentials").status == 200
    # Its own kind of credential it may rotate.
    own_key = _http(
        "POST",
        nexus.rest + "/v1/nexus/api-keys",
        headers={"x-api-key": key},
        json_body={"name": "own", "roles": [role_id]},
    ).document["apiKey"]["id"]
    answer = _http(
        "POST",
        nexus.rest + f"/v1/nexus/api-keys/{own_key}:rotate",
        headers={"x-api-key": key},
        json_body={},
    )
    assert answer.status == 200, answer.body
    own_client = f"own-{uuid.uuid4().hex[:6]}"
    answer = _http(
        "POST",
        nexus.rest + "/v1/nexus/auth/clients",
        headers={"x-api-key": key},
        json_body={"clientId": own_client, "roles": [role_id]},
    )
    assert answer.status == 200, answer.body
    answer = _http(
        "POST",
        nexus.rest + f"/v1/nexus/auth/clients/{own_client}:rotateSecret",
        headers={"x-api-key": key},
        json_body={},
    )
    assert answer.status == 200, answer.body


# --- guessing API keys -----------------------------------------------------------------


def test_api_key_guessing_is_rate_limited_and_audited(platform: Platform) -> None:
    """Wrong keys from one address, on a route a rule keyed by client IP limits: the
    first ones are 401 INVALID_API_KEY, then 429 RATE_LIMITED — for every later guess,
    right or wrong, over both entries (they share the limits). Every guess is audited."""
    nexus = platform.nexus
    since = datetime.now(UTC)
    guesses = [format_api_key(new_key_id(), new_secret()) for _ in range(GUESSES_ALLOWED + 3)]
    statuses, request_ids = [], []
    for guess in guesses:
        request_id = _request_id("guess")
        answer = _http(
            "GET",
            nexus.rest + "/v1/nexus/auth/whoami",
            headers={"x-api-key": guess, "x-request-id": request_id},
        )
        assert not answer.shows(guess)
        statuses.append((answer.status, answer.reason))
        request_ids.append(request_id)
    assert statuses == [(401, "INVALID_API_KEY")] * GUESSES_ALLOWED + [(429, "RATE_LIMITED")] * 3
    assert "retry-after" in answer.headers
    for request_id, guess in zip(request_ids, guesses, strict=True):
        record = _assert_denied_in_audit(nexus, request_id, "INVALID_API_KEY", since=since)
        assert record.credential_id == guess.split("_")[1]  # the key id, never the secret
    # The right key from the same address is held back too: no oracle for a lucky guess.
    answer = _http(
        "GET", nexus.rest + "/v1/nexus/auth/whoami", headers={"x-api-key": nexus.admin_key}
    )
    assert (answer.status, answer.reason) == (429, "RATE_LIMITED")
    with _channel(nexus.entry) as channel:
        whoami = auth_pb2_grpc.AuthServiceStub(channel).WhoAmI
        request_id = _request_id("grpc-guess")
        refusal = _grpc_refusal(
            whoami,
            auth_pb2.WhoAmIRequest(),
            [("x-api-key", guesses[0]), ("x-request-id", request_id)],
        )
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    _assert_denied_in_audit(nexus, request_id, "INVALID_API_KEY", since=since)
    # Other routes are not covered by the rule.
    assert _rest(nexus, "other-route", {"x-api-key": nexus.admin_key})[0].status == 200


def test_classification_labels_decide_at_the_edge(platform: Platform) -> None:
    """A key whose role reads collections classified at most internal reads a collection
    only while its label allows: unlabelled (counts as restricted) 403, labelled
    internal 200, relabelled confidential 403 again — over the REST edge and the gRPC
    entry, with the label set through the REST edge."""
    nexus = platform.nexus
    name = f"labelled_{uuid.uuid4().hex[:8]}"
    created = _admin_http(
        nexus,
        "POST",
        f"/v1/lake/collections?collectionId={name}",
        {"vectorSize": 2, "distance": "DISTANCE_COSINE"},
    )
    assert created.status == 200, created.body
    role_id = f"internal-{uuid.uuid4().hex[:6]}"
    answer = _admin_http(
        nexus,
        "PUT",
        f"/v1/nexus/policy/roles/{role_id}",
        {
            "permissions": [
                {
                    "resourceType": "RESOURCE_TYPE_COLLECTION",
                    "namePattern": "*",
                    "actions": ["ACTION_READ"],
                    "conditions": {"maxClassification": "CLASSIFICATION_INTERNAL"},
                }
            ]
        },
    )
    assert answer.status == 200, answer.body
    key = _key_with_roles(nexus, role_id)

    def read_status() -> tuple[int, grpc.StatusCode]:
        rest = _http("GET", nexus.rest + f"/v1/lake/collections/{name}", headers={"x-api-key": key})
        with _channel(nexus.entry) as channel:
            try:
                vectors_pb2_grpc.VectorServiceStub(channel).GetCollection(
                    vectors_pb2.GetCollectionRequest(name=f"collections/{name}"),
                    metadata=(("x-api-key", key),),
                    timeout=15,
                )
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
        return rest.status, code

    try:
        assert read_status() == (403, grpc.StatusCode.PERMISSION_DENIED)
        labelled = _admin_http(
            nexus,
            "PUT",
            f"/v1/nexus/policy/labels/collection/{name}",
            {"classification": "CLASSIFICATION_INTERNAL"},
        )
        assert labelled.status == 200, labelled.body
        assert labelled.document["label"]["resource"] == f"collection/{name}"
        assert read_status() == (200, grpc.StatusCode.OK)
        relabelled = _admin_http(
            nexus,
            "PUT",
            f"/v1/nexus/policy/labels/collection/{name}",
            {"classification": "CLASSIFICATION_CONFIDENTIAL"},
        )
        assert relabelled.document["previousClassification"] == "CLASSIFICATION_INTERNAL"
        assert read_status() == (403, grpc.StatusCode.PERMISSION_DENIED)
        listed = _admin_http(nexus, "GET", "/v1/nexus/policy/labels")
        assert f"collection/{name}" in [one["resource"] for one in listed.document["labels"]]
        bad = _admin_http(
            nexus,
            "PUT",
            "/v1/nexus/policy/labels/route/datapunk.lake.v1.VectorService.GetCollection",
            {"classification": "CLASSIFICATION_PUBLIC"},
        )
        assert bad.status == 400, bad.body
    finally:
        _admin_http(nexus, "DELETE", f"/v1/nexus/policy/labels/collection/{name}")
        _admin_http(nexus, "DELETE", f"/v1/lake/collections/{name}")
