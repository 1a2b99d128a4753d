"""The OAuth 2.0 endpoints over real HTTP on a real REST edge, against a real
PostgreSQL: metadata (RFC 8414) and JWKS, the token endpoint (RFC 6749) with both client
authentication methods and every error it owes, refresh-token rotation and reuse
detection, revocation (RFC 7009), introspection (RFC 7662), key rotation and deletion,
and no secret or token in any log line. Tokens are checked with the shared
``TokenVerifier`` and the JWKS discovered from the metadata, as a resource server would."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import structlog
from datapunk_shared.auth.claims import datapunk_claims
from datapunk_shared.auth.jwks import JwksCachePolicy, JwksKeySource
from datapunk_shared.auth.tokens import IssuerPolicy, TokenVerifier
from datapunk_shared.config import Settings
from datapunk_shared.errors import Unauthenticated

from tests.integration.test_oauth_support import OAuthHarness, oauth_harness

FORM = "application/x-www-form-urlencoded"


@pytest.fixture(scope="module")
async def oauth(settings: Settings) -> AsyncIterator[OAuthHarness]:
    async with oauth_harness(settings) as harness:
        yield harness


async def post_form(
    url: str,
    fields: Mapping[str, str] | str,
    *,
    basic: tuple[str, str] | None = None,
    content_type: str = FORM,
) -> tuple[int, dict[str, str], Any]:
    """POST a form (or raw text); returns status, headers (lower-case) and JSON body."""
    headers = {"Content-Type": content_type}
    if basic is not None:
        pair = f"{quote(basic[0], safe='')}:{quote(basic[1], safe='')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    body = (
        fields
        if isinstance(fields, str)
        else "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in fields.items())
    )
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as r:
        raw = await r.read()
        document = json.loads(raw) if raw else None
        return r.status, {k.lower(): v for k, v in r.headers.items()}, document


async def client_token(
    oauth: OAuthHarness, client_id: str, secret: str, **extra: str
) -> dict[str, Any]:
    status, _, body = await post_form(
        oauth.url + "/oauth/token",
        {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
        | extra,
    )
    assert status == 200, body
    return dict(body)


async def refresh(oauth: OAuthHarness, client_id: str, secret: str, token: str) -> tuple[int, Any]:
    status, _, body = await post_form(
        oauth.url + "/oauth/token",
        {"grant_type": "refresh_token", "refresh_token": token},
        basic=(client_id, secret),
    )
    return status, body


async def introspect(oauth: OAuthHarness, client_id: str, secret: str, token: str) -> Any:
    status, headers, body = await post_form(
        oauth.url + "/oauth/introspect", {"token": token}, basic=(client_id, secret)
    )
    assert status == 200, body
    assert headers["cache-control"] == "no-store"
    return body


def verifier_for(oauth: OAuthHarness, **kwargs: Any) -> tuple[TokenVerifier, JwksKeySource]:
    """A resource server's verifier: keys found by discovery from the issuer's metadata."""
    keys = JwksKeySource(
        {oauth.url: None},
        policy=JwksCachePolicy(min_ttl=1, default_ttl=1, max_ttl=1, refetch_interval=0),
    )
    policy = IssuerPolicy(
        issuer=oauth.url,
        audiences=frozenset({"datapunk"}),
        algorithms=frozenset({"ES256"}),
        mapper=datapunk_claims,
    )
    return TokenVerifier([policy], keys, **kwargs), keys


def b64json(document: Mapping[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    return _json_segment(header), _json_segment(payload)


def _json_segment(segment: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    )
    return document


# --- metadata and keys ------------------------------------------------------------------


async def test_metadata_with_curl(oauth: OAuthHarness) -> None:
    # The edge runs in this test's event loop: curl must not block it.
    curl = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--fail",
        "--max-time",
        "10",
        oauth.url + "/.well-known/oauth-authorization-server",
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await curl.communicate()
    assert curl.returncode == 0
    metadata = json.loads(stdout)
    assert metadata["issuer"] == oauth.url
    assert metadata["token_endpoint"] == oauth.url + "/oauth/token"
    assert metadata["jwks_uri"] == oauth.url + "/.well-known/jwks.json"
    assert metadata["revocation_endpoint"] == oauth.url + "/oauth/revoke"
    assert metadata["introspection_endpoint"] == oauth.url + "/oauth/introspect"
    assert metadata["grant_types_supported"] == ["client_credentials", "refresh_token"]
    assert metadata["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
    ]


async def test_jwks_publishes_the_active_key(oauth: OAuthHarness) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(oauth.url + "/.well-known/jwks.json", headers={"x-request-id": "jwks-1"}) as r,
    ):
        assert r.status == 200
        jwks = await r.json()
        # The edge's own headers are on its plain routes too.
        assert r.headers["X-Request-Id"] == "jwks-1"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    kids = [key["kid"] for key in jwks["keys"]]
    assert oauth.ring.active_signer().kid in kids
    assert all("d" not in key for key in jwks["keys"])  # public halves only
    assert all(key["kty"] == "EC" and key["alg"] == "ES256" for key in jwks["keys"])


async def test_other_methods_on_the_token_endpoint_are_405(oauth: OAuthHarness) -> None:
    async with aiohttp.ClientSession() as http, http.get(oauth.url + "/oauth/token") as r:
        assert r.status == 405
        assert r.headers["Allow"] == "POST"


# --- the token endpoint -----------------------------------------------------------------


async def _curl(*args: str) -> Any:
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--fail-with-body", "--max-time", "10", *args, stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await process.communicate()
    assert process.returncode == 0, stdout
    return json.loads(stdout)


async def test_the_token_flow_with_curl(oauth: OAuthHarness) -> None:
    """curl, a client we did not write, does Basic authentication its own way."""
    client, secret = await oauth.client()
    issued = await _curl(
        "-u",
        f"{client.client_id}:{secret}",
        "-d",
        "grant_type=client_credentials",
        "-d",
        "scope=lake.read",
        oauth.url + "/oauth/token",
    )
    assert issued["scope"] == "lake.read"
    report = await _curl(
        "-u",
        f"{client.client_id}:{secret}",
        "--data-urlencode",
        f"token={issued['access_token']}",
        oauth.url + "/oauth/introspect",
    )
    assert (report["active"], report["scope"], report["client_id"]) == (
        True,
        "lake.read",
        client.client_id,
    )


async def test_client_credentials_token_verifies_against_the_published_jwks(
    oauth: OAuthHarness,
) -> None:
    client, secret = await oauth.client(roles=("reader", "writer"))
    status, headers, body = await post_form(
        oauth.url + "/oauth/token",
        {
            "grant_type": "client_credentials",
            "client_id": client.client_id,
            "client_secret": secret,
        },
    )
    assert status == 200, body
    assert headers["cache-control"] == "no-store"
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "lake.read lake.write"
    assert "refresh_token" not in body  # this client may not have one

    header, claims = segments(body["access_token"])
    assert header == {"alg": "ES256", "kid": oauth.ring.active_signer().kid, "typ": "at+jwt"}
    assert claims["iss"] == oauth.url
    assert claims["aud"] == "datapunk"
    assert claims["sub"] == f"client:{client.client_id}"
    assert claims["client_id"] == client.client_id
    assert claims["exp"] - claims["iat"] == 300
    assert claims["nbf"] == claims["iat"]
    assert len(claims["jti"]) >= 22

    verifier, keys = verifier_for(oauth)
    try:
        identity = await verifier.verify(body["access_token"])
    finally:
        await keys.aclose()
    assert identity.subject == f"client:{client.client_id}"
    assert identity.kind == "client"
    assert identity.tenant == "acme"
    assert identity.roles == {"reader", "writer"}
    assert identity.scopes == {"lake.read", "lake.write"}
    assert identity.credential_id == claims["jti"]


async def test_basic_and_post_client_authentication(oauth: OAuthHarness) -> None:
    client, secret = await oauth.client()
    token_url = oauth.url + "/oauth/token"
    status, _, body = await post_form(
        token_url, {"grant_type": "client_credentials"}, basic=(client.client_id, secret)
    )
    assert status == 200, body
    status, _, body = await post_form(
        token_url,
        {
            "grant_type": "client_credentials",
            "client_id": client.client_id,
            "client_secret": secret,
        },
    )
    assert status == 200, body
    # Both at once is refused (RFC 6749 section 2.3).
    status, _, body = await post_form(
        token_url,
        {
            "grant_type": "client_credentials",
            "client_id": client.client_id,
            "client_secret": secret,
        },
        basic=(client.client_id, secret),
    )
    assert (status, body["error"]) == (400, "invalid_request")


@pytest.mark.parametrize("how", ["wrong_secret", "unknown_client", "no_credentials", "bad_basic"])
async def test_client_authentication_failures_are_401_invalid_client(
    oauth: OAuthHarness, how: str
) -> None:
    client, secret = await oauth.client()
    fields = {"grant_type": "client_credentials"}
    basic: tuple[str, str] | None = None
    if how == "wrong_secret":
        basic = (client.client_id, secret[:-2] + "xx")
    elif how == "unknown_client":
        basic = ("nobody-here", secret)
    status, headers, body = await post_form(oauth.url + "/oauth/token", fields, basic=basic)
    if how == "bad_basic":
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                oauth.url + "/oauth/token",
                data="grant_type=client_credentials",
                headers={"Content-Type": FORM, "Authorization": "Basic !!!not-base64"},
            ) as r,
        ):
            status, headers, body = (
                r.status,
                {k.lower(): v for k, v in r.headers.items()},
                await r.json(),
            )
    assert status == 401
    assert body["error"] == "invalid_client"
    assert headers["www-authenticate"].startswith("Basic ")
    assert headers["cache-control"] == "no-store"


async def test_token_request_errors(oauth: OAuthHarness) -> None:
    client, secret = await oauth.client(audiences=("datapunk:lake",))
    token_url = oauth.url + "/oauth/token"
    auth = (client.client_id, secret)

    async def error_of(fields: Mapping[str, str] | str, **kwargs: Any) -> tuple[int, str]:
        status, headers, body = await post_form(token_url, fields, basic=auth, **kwargs)
        assert headers["content-type"].startswith("application/json")
        assert set(body) == {"error", "error_description"}
        assert secret not in json.dumps(body)
        return status, body["error"]

    assert await error_of({"grant_type": "password"}) == (400, "unsupported_grant_type")
    assert await error_of({"grant_type": "authorization_code"}) == (400, "unsupported_grant_type")
    assert await error_of({"scope": "lake.read"}) == (400, "invalid_request")  # no grant_type
    assert await error_of({"grant_type": "client_credentials", "scope": "lake.admin"}) == (
        400,
        "invalid_scope",
    )
    assert await error_of({"grant_type": "client_credentials", "scope": 'bad"scope'}) == (
        400,
        "invalid_scope",
    )
    assert await error_of({"grant_type": "client_credentials", "audience": "datapunk:stream"}) == (
        400,
        "invalid_target",
    )
    # A JSON body is not a token request (RFC 6749 section 3.2).
    assert await error_of(
        json.dumps({"grant_type": "client_credentials"}), content_type="application/json"
    ) == (400, "invalid_request")
    # Parameters may not be repeated.
    assert await error_of("grant_type=client_credentials&grant_type=client_credentials") == (
        400,
        "invalid_request",
    )
    assert await error_of({"grant_type": "refresh_token"}) == (400, "invalid_request")
    assert await error_of({"grant_type": "refresh_token", "refresh_token": "dprt_nope"}) == (
        400,
        "invalid_grant",
    )
    status, _, _ = await post_form(token_url, "x=" + "a" * 70_000, basic=auth)
    assert status == 413


async def test_a_form_arriving_in_pieces(oauth: OAuthHarness) -> None:
    client, secret = await oauth.client()
    form = f"grant_type=client_credentials&client_id={client.client_id}&client_secret={secret}"

    async def pieces(text: str, size: int) -> AsyncIterator[bytes]:
        for start in range(0, len(text), size):
            yield text[start : start + size].encode()
            await asyncio.sleep(0.01)  # each piece its own chunk on the wire

    async with aiohttp.ClientSession() as http:
        headers = {"Content-Type": FORM}
        async with http.post(
            oauth.url + "/oauth/token", data=pieces(form, 7), headers=headers
        ) as r:
            assert r.status == 200, await r.text()
        # No Content-Length to refuse up front: the limit holds while reading.
        big = form + "&x=" + "a" * 70_000
        async with http.post(
            oauth.url + "/oauth/token", data=pieces(big, 8192), headers=headers
        ) as r:
            assert r.status == 413


async def test_scopes_and_audience_a_client_may_ask_for(oauth: OAuthHarness) -> None:
    client, secret = await oauth.client(audiences=("datapunk:lake",))
    body = await client_token(
        oauth, client.client_id, secret, scope="lake.read", resource="datapunk:lake"
    )
    _, claims = segments(body["access_token"])
    assert (claims["scope"], claims["aud"]) == ("lake.read", "datapunk:lake")
    assert body["scope"] == "lake.read"


# --- refresh tokens ---------------------------------------------------------------------


async def test_refresh_tokens_rotate_and_a_replay_revokes_the_family(oauth: OAuthHarness) -> None:
    client, secret = await oauth.client(refresh=True)
    first = await client_token(oauth, client.client_id, secret)
    old_refresh = first["refresh_token"]
    assert old_refresh.startswith("dprt_")
    assert len(old_refresh) >= 5 + 43  # 256 random bits, base64url

    status, second = await refresh(oauth, client.client_id, secret, old_refresh)
    assert status == 200, second
    new_refresh = second["refresh_token"]
    assert new_refresh != old_refresh
    assert second["access_token"] != first["access_token"]
    assert (await introspect(oauth, client.client_id, secret, second["access_token"]))["active"]

    # The rotated-out token comes back (a thief, or a replay): refused, family revoked.
    status, replay = await refresh(oauth, client.client_id, secret, old_refresh)
    assert (status, replay["error"]) == (400, "invalid_grant")
    status, after = await refresh(oauth, client.client_id, secret, new_refresh)
    assert (status, after["error"]) == (400, "invalid_grant")
    # ...and the access token issued with the family's latest refresh is revoked too.
    assert await introspect(oauth, client.client_id, secret, second["access_token"]) == {
        "active": False
    }


async def test_refresh_keeps_scopes_within_the_original_grant(oauth: OAuthHarness) -> None:
    client, secret = await oauth.client(refresh=True)
    first = await client_token(oauth, client.client_id, secret, scope="lake.read")
    status, _, body = await post_form(
        oauth.url + "/oauth/token",
        {
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "scope": "lake.write",
        },
        basic=(client.client_id, secret),
    )
    assert (status, body["error"]) == (400, "invalid_scope")
    # The refused request did not consume the token.
    status, body = await refresh(oauth, client.client_id, secret, first["refresh_token"])
    assert status == 200, body
    assert body["scope"] == "lake.read"


async def test_concurrent_uses_of_one_refresh_token_exactly_one_wins(oauth: OAuthHarness) -> None:
    client, secret = await oauth.client(refresh=True)
    first = await client_token(oauth, client.client_id, secret)
    results = await asyncio.gather(
        *(refresh(oauth, client.client_id, secret, first["refresh_token"]) for _ in range(2))
    )
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 400]
    loser = next(body for status, body in results if status == 400)
    assert loser["error"] == "invalid_grant"


async def test_a_refresh_token_of_another_client_is_refused(oauth: OAuthHarness) -> None:
    owner, owner_secret = await oauth.client(refresh=True)
    other, other_secret = await oauth.client(refresh=True)
    first = await client_token(oauth, owner.client_id, owner_secret)
    status, body = await refresh(oauth, other.client_id, other_secret, first["refresh_token"])
    assert (status, body["error"]) == (400, "invalid_grant")
    # A stolen refresh token is treated as compromised: its family is revoked.
    status, body = await refresh(oauth, owner.client_id, owner_secret, first["refresh_token"])
    assert (status, body["error"]) == (400, "invalid_grant")


# --- revocation and introspection -------------------------------------------------------


async def test_revoking_an_access_token(oauth: OAuthHarness) -> None:
    client, secret = await oauth.client()
    token = (await client_token(oauth, client.client_id, secret))["access_token"]
    _, claims = segments(token)

    report = await introspect(oauth, client.client_id, secret, token)
    assert report == {
        "active": True,
        "client_id": client.client_id,
        "sub": f"client:{client.client_id}",
        "token_type": "Bearer",
        "scope": "lake.read lake.write",
        "exp": claims["exp"],
        "iat": claims["iat"],
        "nbf": claims["nbf"],
        "aud": "datapunk",
        "iss": oauth.url,
        "jti": claims["jti"],
        "tenant": "acme",
        "roles": ["reader"],
    }

    # Another client may not revoke it: answered 200 (RFC 7009), nothing changes.
    other, other_secret = await oauth.client()
    status, _, _ = await post_form(
        oauth.url + "/oauth/revoke", {"token": token}, basic=(other.client_id, other_secret)
    )
    assert status == 200
    assert (await introspect(oauth, client.client_id, secret, token))["active"]

    status, headers, body = await post_form(
        oauth.url + "/oauth/revoke",
        {"token": token, "token_type_hint": "access_token"},
        basic=(client.client_id, secret),
    )
    assert (status, body) == (200, None)
    assert headers["cache-control"] == "no-store"
    assert await introspect(oauth, client.client_id, secret, token) == {"active": False}

    verifier, keys = verifier_for(oauth, is_revoked=oauth.server.revocations.is_revoked)
    try:
        with pytest.raises(Unauthenticated) as caught:
            await verifier.verify(token)
    finally:
        await keys.aclose()
    assert caught.value.reason == "TOKEN_REVOKED"


async def test_revoking_a_refresh_token_revokes_its_family(oauth: OAuthHarness) -> None:
    client, secret = await oauth.client(refresh=True)
    first = await client_token(oauth, client.client_id, secret)
    status, second = await refresh(oauth, client.client_id, secret, first["refresh_token"])
    assert status == 200
    status, _, _ = await post_form(
        oauth.url + "/oauth/revoke",
        {"token": second["refresh_token"], "token_type_hint": "refresh_token"},
        basic=(client.client_id, secret),
    )
    assert status == 200
    status, body = await refresh(oauth, client.client_id, secret, second["refresh_token"])
    assert (status, body["error"]) == (400, "invalid_grant")
    assert await introspect(oauth, client.client_id, secret, second["access_token"]) == {
        "active": False
    }


async def test_revoking_unknown_tokens_is_ok(oauth: OAuthHarness) -> None:
    client, secret = await oauth.client()
    for token in ("dprt_" + "A" * 43, "not-a-token", "a.b.c", "x" * 5000):
        status, _, _ = await post_form(
            oauth.url + "/oauth/revoke", {"token": token}, basic=(client.client_id, secret)
        )
        assert status == 200
    status, _, body = await post_form(
        oauth.url + "/oauth/revoke", {"token": "x"}, basic=(client.client_id, "dpcs_wrong")
    )
    assert (status, body["error"]) == (401, "invalid_client")
    status, _, body = await post_form(
        oauth.url + "/oauth/revoke", {}, basic=(client.client_id, secret)
    )
    assert (status, body["error"]) == (400, "invalid_request")


async def test_introspection_reports_only_access_tokens_of_the_callers_tenant(
    oauth: OAuthHarness,
) -> None:
    client, secret = await oauth.client(refresh=True)
    issued = await client_token(oauth, client.client_id, secret)

    # A refresh token presented as an access token.
    assert await introspect(oauth, client.client_id, secret, issued["refresh_token"]) == {
        "active": False
    }
    verifier, keys = verifier_for(oauth)
    try:
        with pytest.raises(Unauthenticated) as caught:
            await verifier.verify(issued["refresh_token"])
        assert caught.value.reason == "MALFORMED_TOKEN"

        # An ID-token-shaped JWT, signed by Nexus's own active key.
        _, claims = segments(issued["access_token"])
        signer = oauth.ring.active_signer()
        head = b64json({"alg": "ES256", "typ": "JWT", "kid": signer.kid})
        body = b64json(claims | {"jti": "id-token-1"})
        signature = base64.urlsafe_b64encode(signer.sign(f"{head}.{body}".encode()))
        id_token = f"{head}.{body}.{signature.rstrip(b'=').decode()}"
        assert await introspect(oauth, client.client_id, secret, id_token) == {"active": False}
        with pytest.raises(Unauthenticated) as caught:
            await verifier.verify(id_token)
        assert caught.value.reason == "WRONG_TOKEN_TYPE"
    finally:
        await keys.aclose()

    # A client of another tenant sees nothing of this tenant's tokens.
    stranger, stranger_secret = await oauth.client(tenant="globex")
    assert await introspect(oauth, stranger.client_id, stranger_secret, issued["access_token"]) == {
        "active": False
    }
    # Garbage is inactive, never an error.
    for junk in ("", "a.b.c", "x" * 9000):
        if junk:
            assert await introspect(oauth, client.client_id, secret, junk) == {"active": False}


# --- signing keys -----------------------------------------------------------------------


async def test_key_rotation_overlap_and_key_deletion(oauth: OAuthHarness) -> None:
    client, secret = await oauth.client()
    old_token = (await client_token(oauth, client.client_id, secret))["access_token"]
    old_kid = segments(old_token)[0]["kid"]

    await oauth.server.rotate_signing_key()
    new_token = (await client_token(oauth, client.client_id, secret))["access_token"]
    assert segments(new_token)[0]["kid"] != old_kid

    verifier, keys = verifier_for(oauth)
    try:
        # The old key is still published: tokens it signed keep verifying.
        assert (await verifier.verify(old_token)).credential_id == segments(old_token)[1]["jti"]
        await verifier.verify(new_token)
        assert (await introspect(oauth, client.client_id, secret, old_token))["active"]

        await oauth.server.delete_signing_key(old_kid)
        assert await introspect(oauth, client.client_id, secret, old_token) == {"active": False}
        await asyncio.sleep(1.1)  # the resource server's key cache (1 s here) runs out
        with pytest.raises(Unauthenticated) as caught:
            await verifier.verify(old_token)
        assert caught.value.reason == "UNKNOWN_KEY"
        await verifier.verify(new_token)
    finally:
        await keys.aclose()


# --- logs -------------------------------------------------------------------------------


async def test_no_secret_or_token_in_any_log_line(
    oauth: OAuthHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as events:
        client, secret = await oauth.client(refresh=True)
        issued = await client_token(oauth, client.client_id, secret)
        status, renewed = await refresh(oauth, client.client_id, secret, issued["refresh_token"])
        assert status == 200
        await refresh(oauth, client.client_id, secret, issued["refresh_token"])  # a replay
        await post_form(
            oauth.url + "/oauth/token",
            {"grant_type": "client_credentials"},
            basic=(client.client_id, secret + "x"),
        )
        await introspect(oauth, client.client_id, secret, renewed["access_token"])
        await post_form(
            oauth.url + "/oauth/revoke",
            {"token": renewed["access_token"]},
            basic=(client.client_id, secret),
        )
        # A secret typed into the client id field is not logged either.
        await post_form(
            oauth.url + "/oauth/token", {"grant_type": "client_credentials"}, basic=(secret, secret)
        )
    logged = json.dumps(events, default=str) + "\n".join(r.getMessage() for r in caplog.records)
    assert "oauth token issued" in logged  # the capture did see the flow
    assert "oauth client authentication failed" in logged
    secrets = [secret, issued["access_token"], issued["refresh_token"], renewed["access_token"]]
    secrets += [renewed["refresh_token"]]
    for value in secrets:
        assert value not in logged
        # Not even a recognizable piece of one (the signature or random part).
        assert value[-20:] not in logged
