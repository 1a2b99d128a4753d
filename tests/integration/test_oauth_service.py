"""AuthService over real gRPC (a grpc.aio server behind the Datapunk edges, callers
authenticated by the bearer tokens the service itself issues) and through the REST
edge's transcoding, against a real PostgreSQL: client administration within the caller's
tenant, the token RPCs and their errors, signing keys, WhoAmI."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from datapunk.nexus.v1 import auth_pb2, auth_pb2_grpc
from datapunk_shared.config import Settings
from datapunk_shared.rpc.status_codes import STATUS_DETAILS_KEY
from google.rpc import error_details_pb2
from google.rpc import status_pb2 as rpc_status_pb2

from tests.integration.test_oauth_support import OAuthHarness, oauth_harness


@pytest.fixture(scope="module")
async def oauth(settings: Settings) -> AsyncIterator[OAuthHarness]:
    async with oauth_harness(settings) as harness:
        yield harness


@pytest.fixture
async def stub(oauth: OAuthHarness) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(oauth.grpc_address) as channel:
        yield auth_pb2_grpc.AuthServiceStub(channel)


def error_info(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, list[str]]:
    """The code, ErrorInfo reason and BadRequest fields of a failed call."""
    details = dict(error.trailing_metadata() or ())[STATUS_DETAILS_KEY]
    status = rpc_status_pb2.Status.FromString(details)
    reason, fields = "", []
    for detail in status.details:
        info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        if detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(bad):
            fields = [v.field for v in bad.field_violations]
    return error.code(), reason, fields


async def failure(call: Any) -> tuple[grpc.StatusCode, str, list[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return error_info(caught.value)


async def token_for(stub: Any, client_id: str, secret: str, **fields: Any) -> str:
    response = await stub.IssueToken(
        auth_pb2.IssueTokenRequest(
            grant_type="client_credentials", client_id=client_id, client_secret=secret, **fields
        ),
        timeout=10,
    )
    token: str = response.access_token
    return token


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def admin_of(oauth: OAuthHarness, stub: Any, tenant: str) -> tuple[tuple[str, str]]:
    """Credentials of an administrator of ``tenant`` (its first client, made directly)."""
    client, secret = await oauth.client(tenant=tenant, roles=("admin",))
    return bearer(await token_for(stub, client.client_id, secret))


async def test_whoami_sees_the_token_and_nothing_without_one(
    oauth: OAuthHarness, stub: Any
) -> None:
    client, secret = await oauth.client(roles=("reader", "writer"), scopes=("b", "a"))
    token = await token_for(stub, client.client_id, secret, scopes=["a"])
    me = await stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(token), timeout=10)
    assert (me.subject, me.tenant, me.kind) == (f"client:{client.client_id}", "acme", "client")
    assert (list(me.roles), list(me.scopes), me.issuer) == (["reader", "writer"], ["a"], oauth.url)
    assert not me.HasField("on_behalf_of")

    code, reason, _ = await failure(stub.WhoAmI(auth_pb2.WhoAmIRequest(), timeout=10))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "MISSING_CREDENTIALS")


async def test_client_administration_in_the_callers_tenant(oauth: OAuthHarness, stub: Any) -> None:
    admin = await admin_of(oauth, stub, "initech")
    made = []
    for name in ("svc-a", "svc-b", "svc-c"):
        created = await stub.CreateClient(
            auth_pb2.CreateClientRequest(
                client=auth_pb2.Client(
                    client_id=f"initech-{name}",
                    display_name=name,
                    roles=["reader"],
                    allowed_scopes=["lake.read"],
                    # Output-only fields are ignored: the tenant is the caller's.
                    tenant="someone-else",
                )
            ),
            metadata=admin,
            timeout=10,
        )
        assert created.client.tenant == "initech"
        assert created.client.name == f"clients/initech-{name}"
        assert created.client_secret.startswith("dpcs_")
        made.append(created)

    # The secret is shown once: reading the client never returns it.
    got = await stub.GetClient(
        auth_pb2.GetClientRequest(name="clients/initech-svc-a"), metadata=admin, timeout=10
    )
    assert got.client == made[0].client
    assert made[0].client_secret not in str(got)

    pages, token = [], ""
    while True:
        page = await stub.ListClients(
            auth_pb2.ListClientsRequest(page_size=2, page_token=token), metadata=admin, timeout=10
        )
        pages.append([c.client_id for c in page.clients])
        token = page.next_page_token
        if not token:
            break
    ids = [client_id for page in pages for client_id in page]
    assert [len(p) for p in pages] == [2, 2]
    assert ids == sorted(ids)
    assert {"initech-svc-a", "initech-svc-b", "initech-svc-c"} <= set(ids)

    # Another tenant's administrator sees none of it, whatever ids it sends.
    stranger = await admin_of(oauth, stub, "globex")
    listed = await stub.ListClients(auth_pb2.ListClientsRequest(), metadata=stranger, timeout=10)
    assert all(not c.client_id.startswith("initech-") for c in listed.clients)
    for call in (
        stub.GetClient(auth_pb2.GetClientRequest(name="clients/initech-svc-a"), metadata=stranger),
        stub.DeleteClient(
            auth_pb2.DeleteClientRequest(name="clients/initech-svc-a"), metadata=stranger
        ),
        stub.RotateClientSecret(
            auth_pb2.RotateClientSecretRequest(name="clients/initech-svc-a"), metadata=stranger
        ),
    ):
        code, reason, _ = await failure(call)
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "CLIENT_NOT_FOUND")

    code, reason, _ = await failure(
        stub.CreateClient(
            auth_pb2.CreateClientRequest(client=auth_pb2.Client(client_id="initech-svc-a")),
            metadata=stranger,
        )
    )
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "CLIENT_ALREADY_EXISTS")

    code, reason, _ = await failure(
        stub.ListClients(auth_pb2.ListClientsRequest(page_token="%%%"), metadata=admin)
    )
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")

    # No caller, no administration.
    code, reason, _ = await failure(stub.ListClients(auth_pb2.ListClientsRequest()))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "MISSING_CREDENTIALS")


async def test_contract_violations_name_the_fields(oauth: OAuthHarness, stub: Any) -> None:
    admin = await admin_of(oauth, stub, "acme")
    code, reason, fields = await failure(
        stub.CreateClient(
            auth_pb2.CreateClientRequest(
                client=auth_pb2.Client(
                    client_id="Bad Id", roles=["ok", "Not OK"], allowed_scopes=['a"b']
                )
            ),
            metadata=admin,
        )
    )
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "CONTRACT_VIOLATION")
    assert set(fields) == {"client.client_id", "client.roles[1]", "client.allowed_scopes[0]"}


async def test_secret_rotation_and_client_deletion(oauth: OAuthHarness, stub: Any) -> None:
    admin = await admin_of(oauth, stub, "acme")
    created = await stub.CreateClient(
        auth_pb2.CreateClientRequest(
            client=auth_pb2.Client(
                client_id="acme-rotating", allowed_scopes=["x"], allow_refresh_tokens=True
            )
        ),
        metadata=admin,
        timeout=10,
    )
    old_secret = created.client_secret
    token = await token_for(stub, "acme-rotating", old_secret)

    rotated = await stub.RotateClientSecret(
        auth_pb2.RotateClientSecretRequest(name="clients/acme-rotating"), metadata=admin
    )
    assert rotated.client_secret != old_secret
    assert rotated.client.secret_create_time.ToDatetime() >= created.client.create_time.ToDatetime()
    code, reason, _ = await failure(token_for(stub, "acme-rotating", old_secret))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
    issued = await stub.IssueToken(
        auth_pb2.IssueTokenRequest(
            grant_type="client_credentials",
            client_id="acme-rotating",
            client_secret=rotated.client_secret,
        )
    )
    # Tokens issued before the rotation stay valid.
    me = await stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(token), timeout=10)
    assert me.subject == "client:acme-rotating"

    await stub.DeleteClient(
        auth_pb2.DeleteClientRequest(name="clients/acme-rotating"), metadata=admin, timeout=10
    )
    # Its access tokens are revoked, its refresh tokens and its secret are gone.
    for access in (token, issued.access_token):
        code, reason, _ = await failure(
            stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(access), timeout=10)
        )
        assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_REVOKED")
    code, reason, _ = await failure(
        stub.IssueToken(
            auth_pb2.IssueTokenRequest(
                grant_type="refresh_token",
                client_id="acme-rotating",
                client_secret=rotated.client_secret,
                refresh_token=issued.refresh_token,
            )
        )
    )
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")


async def test_token_rpcs(oauth: OAuthHarness, stub: Any) -> None:
    client, secret = await oauth.client(refresh=True, audiences=("datapunk:lake",))
    issued = await stub.IssueToken(
        auth_pb2.IssueTokenRequest(
            grant_type="client_credentials",
            client_id=client.client_id,
            client_secret=secret,
            scopes=["lake.read"],
            audience="datapunk:lake",
        ),
        timeout=10,
    )
    assert (issued.token_type, issued.expires_in, list(issued.scopes)) == (
        "Bearer",
        300,
        ["lake.read"],
    )
    refreshed = await stub.IssueToken(
        auth_pb2.IssueTokenRequest(
            grant_type="refresh_token",
            client_id=client.client_id,
            client_secret=secret,
            refresh_token=issued.refresh_token,
        ),
        timeout=10,
    )
    assert list(refreshed.scopes) == ["lake.read"]

    # Introspection by the client itself, then by a caller of the same tenant.
    report = await stub.IntrospectToken(
        auth_pb2.IntrospectTokenRequest(
            token=refreshed.access_token, client_id=client.client_id, client_secret=secret
        ),
        timeout=10,
    )
    assert report.active
    assert (report.client_id, report.sub, report.tenant) == (
        client.client_id,
        f"client:{client.client_id}",
        "acme",
    )
    assert (list(report.aud), list(report.scopes), report.token_type, report.iss) == (
        ["datapunk:lake"],
        ["lake.read"],
        "Bearer",
        oauth.url,
    )
    assert report.exp - report.iat == 300
    admin = await admin_of(oauth, stub, "acme")
    same = await stub.IntrospectToken(
        auth_pb2.IntrospectTokenRequest(token=refreshed.access_token), metadata=admin, timeout=10
    )
    assert same == report
    stranger = await admin_of(oauth, stub, "globex")
    other = await stub.IntrospectToken(
        auth_pb2.IntrospectTokenRequest(token=refreshed.access_token), metadata=stranger
    )
    assert other == auth_pb2.IntrospectTokenResponse(active=False)

    # A caller of another tenant cannot revoke it; one of the same tenant can.
    await stub.RevokeToken(
        auth_pb2.RevokeTokenRequest(token=refreshed.access_token), metadata=stranger, timeout=10
    )
    assert (
        await stub.IntrospectToken(
            auth_pb2.IntrospectTokenRequest(token=refreshed.access_token), metadata=admin
        )
    ).active
    await stub.RevokeToken(
        auth_pb2.RevokeTokenRequest(token=refreshed.access_token), metadata=admin, timeout=10
    )
    assert not (
        await stub.IntrospectToken(
            auth_pb2.IntrospectTokenRequest(token=refreshed.access_token), metadata=admin
        )
    ).active

    # The errors of the token RPC.
    cases: list[tuple[dict[str, Any], str]] = [
        (dict(grant_type="client_credentials", client_secret="dpcs_nope"), "INVALID_CLIENT"),
        (dict(grant_type="password", client_secret=secret), "UNSUPPORTED_GRANT_TYPE"),
        (
            dict(grant_type="client_credentials", client_secret=secret, scopes=["z"]),
            "INVALID_SCOPE",
        ),
        (
            dict(grant_type="client_credentials", client_secret=secret, audience="datapunk:stream"),
            "INVALID_TARGET",
        ),
        (
            dict(
                grant_type="refresh_token", client_secret=secret, refresh_token=issued.refresh_token
            ),
            "INVALID_GRANT",
        ),
    ]
    for fields, want in cases:
        code, reason, _ = await failure(
            stub.IssueToken(auth_pb2.IssueTokenRequest(client_id=client.client_id, **fields))
        )
        assert reason == want
        expected = (
            grpc.StatusCode.UNAUTHENTICATED
            if want in ("INVALID_CLIENT", "INVALID_GRANT")
            else grpc.StatusCode.INVALID_ARGUMENT
        )
        assert code == expected
    # The replay above revoked the family: the newest refresh token is dead too.
    code, reason, _ = await failure(
        stub.IssueToken(
            auth_pb2.IssueTokenRequest(
                grant_type="refresh_token",
                client_id=client.client_id,
                client_secret=secret,
                refresh_token=refreshed.refresh_token,
            )
        )
    )
    assert reason == "INVALID_GRANT"


async def test_signing_keys(oauth: OAuthHarness, stub: Any) -> None:
    client, secret = await oauth.client(tenant="platform", roles=("platform-admin",))
    old_token = await token_for(stub, client.client_id, secret)
    admin = bearer(old_token)
    before = await stub.ListSigningKeys(auth_pb2.ListSigningKeysRequest(), metadata=admin)
    active = [k for k in before.keys if k.active]
    assert len(active) == 1
    assert json.loads(active[0].public_jwk)["kid"] == active[0].kid
    assert '"d"' not in active[0].public_jwk

    rotated = await stub.RotateSigningKey(auth_pb2.RotateSigningKeyRequest(), metadata=admin)
    assert rotated.key.active
    assert rotated.key.kid != active[0].kid
    new_admin = bearer(await token_for(stub, client.client_id, secret))

    page = await stub.ListSigningKeys(
        auth_pb2.ListSigningKeysRequest(page_size=1), metadata=new_admin
    )
    assert [k.kid for k in page.keys] == [rotated.key.kid]  # newest first
    assert page.next_page_token
    rest = await stub.ListSigningKeys(
        auth_pb2.ListSigningKeysRequest(page_size=1, page_token=page.next_page_token),
        metadata=new_admin,
    )
    assert [k.kid for k in rest.keys] == [active[0].kid]

    code, reason, _ = await failure(
        stub.DeleteSigningKey(
            auth_pb2.DeleteSigningKeyRequest(name=f"signingKeys/{rotated.key.kid}"),
            metadata=new_admin,
        )
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SIGNING_KEY_ACTIVE")
    code, reason, _ = await failure(
        stub.DeleteSigningKey(
            auth_pb2.DeleteSigningKeyRequest(name="signingKeys/no-such-key"), metadata=new_admin
        )
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "SIGNING_KEY_NOT_FOUND")
    code, _, fields = await failure(
        stub.DeleteSigningKey(
            auth_pb2.DeleteSigningKeyRequest(name="signingKeys/../../etc"), metadata=new_admin
        )
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["name"])

    # The old key still verifies tokens during its overlap; once deleted, it does not.
    await stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=admin, timeout=10)
    await stub.DeleteSigningKey(
        auth_pb2.DeleteSigningKeyRequest(name=f"signingKeys/{active[0].kid}"), metadata=new_admin
    )
    code, reason, _ = await failure(stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=admin))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNKNOWN_KEY")
    await stub.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=new_admin, timeout=10)


async def test_auth_service_over_rest(oauth: OAuthHarness, stub: Any) -> None:
    # The REST edge enforces access as Nexus's does: it verifies the client's token,
    # decides with the tenant's policy (the built-in admin role may manage clients),
    # and calls AuthService with its own service token on the client's behalf.
    client, secret = await oauth.client(tenant="acme", roles=("admin",))
    reader, reader_secret = await oauth.client(tenant="acme", roles=("reader",))
    async with aiohttp.ClientSession(base_url=oauth.url) as http:

        async def issue(client_id: str, client_secret: str) -> dict[str, Any]:
            async with http.post(
                "/v1/nexus/auth/tokens:issue",
                json={
                    "grantType": "client_credentials",
                    "clientId": client_id,
                    "clientSecret": client_secret,
                },
            ) as response:
                assert response.status == 200, await response.text()
                issued: dict[str, Any] = await response.json()
            return issued

        issued = await issue(client.client_id, secret)
        headers = {"Authorization": f"Bearer {issued['accessToken']}"}
        async with http.get("/v1/nexus/auth/whoami", headers=headers) as response:
            assert response.status == 200, await response.text()
            me = await response.json()
        # AuthService sees the edge, acting for the client.
        assert me["subject"] == "service:nexus"
        assert me["onBehalfOf"]["subject"] == f"client:{client.client_id}"
        assert me["onBehalfOf"]["tenant"] == "acme"
        async with http.post(
            "/v1/nexus/auth/clients",
            json={"clientId": "acme-over-rest", "allowedScopes": ["x"]},
            headers=headers,
        ) as response:
            assert response.status == 200, await response.text()
            created = await response.json()
        assert created["client"]["tenant"] == "acme"

        # A reader may not manage clients: refused at the edge, with what it lacked.
        read_only = await issue(reader.client_id, reader_secret)
        async with http.post(
            "/v1/nexus/auth/clients",
            json={"clientId": "acme-by-reader"},
            headers={"Authorization": f"Bearer {read_only['accessToken']}"},
        ) as response:
            assert response.status == 403, await response.text()
            denied = await response.json()
        info = next(d for d in denied["details"] if d["@type"].endswith("ErrorInfo"))
        assert info["reason"] == "PERMISSION_DENIED"
        assert info["metadata"]["action"] == "admin"
        assert info["metadata"]["resource"] == "route/datapunk.nexus.v1.AuthService.CreateClient"

        async with http.get("/v1/nexus/auth/whoami") as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            error = await response.json()
        info = next(d for d in error["details"] if d["@type"].endswith("ErrorInfo"))
        assert info["reason"] == "MISSING_CREDENTIALS"


async def test_a_caller_without_a_valid_tenant_manages_nothing(
    oauth: OAuthHarness, stub: Any
) -> None:
    odd = await admin_of(oauth, stub, "Not_A_Tenant")
    code, reason, _ = await failure(
        stub.CreateClient(
            auth_pb2.CreateClientRequest(client=auth_pb2.Client(client_id="odd-client")),
            metadata=odd,
        )
    )
    # A token naming a tenant that is not a tenant id is refused when it is verified,
    # before any servicer sees it.
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "MALFORMED_TOKEN")
