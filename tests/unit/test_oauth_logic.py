"""The authorization server's pure logic, without engines: scopes, access-token minting
(checked with the shared TokenVerifier), client-secret hashing, the HTTP endpoints'
client authentication and form rules, introspection documents and metadata."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from datapunk_nexus.identity.oauth import http as oauth_http
from datapunk_nexus.identity.oauth.access import AccessTokenMinter
from datapunk_nexus.identity.oauth.client_secrets import SecretHasher, new_client_secret
from datapunk_nexus.identity.oauth.clients import OAuthClient
from datapunk_nexus.identity.oauth.keyring import RingKeySource
from datapunk_nexus.identity.oauth.refresh import looks_like_refresh_token, refresh_token_hash
from datapunk_nexus.identity.oauth.revocation import RevocationList
from datapunk_nexus.identity.oauth.server import (
    Introspection,
    _granted_scopes,
    _unverified_audiences,
)
from datapunk_nexus.identity.signing import SoftwareSigner
from datapunk_shared.auth.claims import datapunk_claims
from datapunk_shared.auth.tokens import IssuerPolicy, StaticKeySource, TokenVerifier
from datapunk_shared.config import OAuthSettings
from datapunk_shared.errors import InvalidArgument, Unauthenticated
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

ISSUER = "https://nexus.example"
NOW = 1_800_000_000.0


def _client(**changes: Any) -> OAuthClient:
    fields: dict[str, Any] = {
        "client_id": "ingest-bot",
        "tenant": "acme",
        "display_name": "",
        "roles": ("writer", "reader"),
        "allowed_scopes": ("lake.read", "lake.write"),
        "allowed_audiences": (),
        "allow_refresh_tokens": False,
        "create_time": datetime.now(UTC),
        "secret_create_time": datetime.now(UTC),
    }
    return OAuthClient(**(fields | changes))


# --- scopes -----------------------------------------------------------------------------


def test_no_scope_asked_grants_every_allowed_scope() -> None:
    assert _granted_scopes(None, ("a", "b")) == ("a", "b")
    assert _granted_scopes((), ("a", "b")) == ("a", "b")


def test_scopes_asked_are_granted_once_each_in_order() -> None:
    assert _granted_scopes(("b", "a", "b"), ("a", "b", "c")) == ("b", "a")


def test_a_scope_not_allowed_is_invalid_scope() -> None:
    with pytest.raises(InvalidArgument) as caught:
        _granted_scopes(("a", "admin"), ("a",))
    assert caught.value.reason == "INVALID_SCOPE"
    assert [v.field for v in caught.value.violations] == ["scope"]


# --- access tokens ----------------------------------------------------------------------


async def test_minted_tokens_pass_the_shared_verifier() -> None:
    signer = SoftwareSigner.generate()
    minter = AccessTokenMinter(lambda: signer, issuer=ISSUER, ttl=300, clock=lambda: NOW)
    token = minter.mint(_client(), ("lake.read",), "datapunk")
    assert token.expires_in == 300
    assert token.expires_at == int(NOW) + 300

    verifier = TokenVerifier(
        [
            IssuerPolicy(
                issuer=ISSUER,
                audiences=frozenset({"datapunk"}),
                algorithms=frozenset({"ES256"}),
                mapper=datapunk_claims,
            )
        ],
        StaticKeySource({ISSUER: {"keys": [signer.public_jwk()]}}),
        clock=lambda: NOW + 10,
    )
    identity = await verifier.verify(token.token)
    assert identity.subject == "client:ingest-bot"
    assert identity.tenant == "acme"
    assert identity.roles == {"reader", "writer"}
    assert identity.scopes == {"lake.read"}
    assert identity.credential_id == token.jti

    header = json.loads(base64.urlsafe_b64decode(token.token.split(".")[0] + "=="))
    assert header == {"alg": "ES256", "kid": signer.kid, "typ": "at+jwt"}


def test_every_token_has_its_own_jti() -> None:
    signer = SoftwareSigner.generate()
    minter = AccessTokenMinter(lambda: signer, issuer=ISSUER, ttl=60)
    jtis = {minter.mint(_client(), (), "datapunk").jti for _ in range(200)}
    assert len(jtis) == 200


@given(st.text(max_size=300))
def test_reading_the_audience_before_verification_never_fails(text: str) -> None:
    assert isinstance(_unverified_audiences(text), frozenset)


def test_unverified_audiences() -> None:
    def token(payload: Any) -> str:
        body = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
        return f"e30.{body}.sig"

    assert _unverified_audiences(token({"aud": "a"})) == {"a"}
    assert _unverified_audiences(token({"aud": ["a", "b"]})) == {"a", "b"}
    assert _unverified_audiences(token({"aud": [1]})) == frozenset()
    assert _unverified_audiences(token([1, 2])) == frozenset()
    assert _unverified_audiences("x" * 10_000) == frozenset()


# --- client secrets and refresh tokens --------------------------------------------------


async def test_client_secrets_hash_and_check() -> None:
    hasher = SecretHasher(OAuthSettings(secret_time_cost=1, secret_memory_kib=1024))
    secret = new_client_secret()
    assert secret.startswith("dpcs_")
    assert len(secret) == 5 + 43  # 256 random bits
    stored = await hasher.hash(secret)
    assert stored.startswith("$argon2id$")
    assert secret not in stored
    assert await hasher.check(stored, secret)
    assert not await hasher.check(stored, secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    assert not await hasher.check(None, secret)  # unknown client: decoy, never a match
    assert not await hasher.check(stored, "not-one-of-ours")
    assert not await hasher.check("garbage", secret)
    stronger = SecretHasher(OAuthSettings(secret_time_cost=2, secret_memory_kib=1024))
    assert stronger.needs_rehash(stored)
    assert not hasher.needs_rehash(stored)


def test_refresh_tokens_are_recognizable_and_stored_hashed() -> None:
    assert looks_like_refresh_token("dprt_abc")
    assert not looks_like_refresh_token("eyJhbGciOi.x.y")
    digest = refresh_token_hash("dprt_abc")
    assert len(digest) == 32
    assert refresh_token_hash("\udcff") != digest  # lone surrogates hash, never crash


def test_settings_refuse_a_family_shorter_than_its_tokens() -> None:
    with pytest.raises(ValidationError):
        OAuthSettings(refresh_token_ttl=7200, refresh_family_lifetime=3600)
    with pytest.raises(ValidationError):
        OAuthSettings(issuer="https://nexus.example/")


# --- the HTTP endpoints' rules ----------------------------------------------------------


def _request(headers: dict[str, str]) -> Any:
    return make_mocked_request("POST", "/oauth/token", headers=headers)


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_credentials_are_form_decoded() -> None:
    # RFC 6749 section 2.3.1: id and secret are form-encoded before Basic encoding.
    request = _request(_basic("my%3Aclient", "se+cr%2Bet"))
    assert oauth_http._client_credentials(request, {}) == ("my:client", "se cr+et")


def test_post_credentials() -> None:
    form = {"client_id": "bot", "client_secret": "dpcs_x"}
    assert oauth_http._client_credentials(_request({}), form) == ("bot", "dpcs_x")


@pytest.mark.parametrize(
    ("headers", "form", "error"),
    [
        (_basic("bot", "s"), {"client_id": "bot"}, "invalid_request"),  # both methods
        ({"Authorization": "Basic %%%"}, {}, "invalid_client"),
        (
            {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
            {},
            "invalid_client",
        ),
        (
            {"Authorization": "Basic " + base64.b64encode(b"\xff:\xfe").decode()},
            {},
            "invalid_client",
        ),
        ({}, {}, "invalid_client"),
        ({}, {"client_id": "bot"}, "invalid_client"),
        ({"Authorization": "Bearer abc"}, {}, "invalid_client"),
    ],
)
def test_client_authentication_errors(
    headers: dict[str, str], form: dict[str, str], error: str
) -> None:
    with pytest.raises(oauth_http._OAuthError) as caught:
        oauth_http._client_credentials(_request(headers), form)
    assert caught.value.error == error
    assert caught.value.status == (401 if error == "invalid_client" else 400)


def test_scope_parameter() -> None:
    assert oauth_http._scopes({}) is None
    assert oauth_http._scopes({"scope": " "}) is None
    assert oauth_http._scopes({"scope": "a b:c"}) == ("a", "b:c")
    for bad in ('a"b', "a\\b", "a  b", "a\tb", "é"):
        with pytest.raises(oauth_http._OAuthError) as caught:
            oauth_http._scopes({"scope": bad})
        assert caught.value.error == "invalid_scope"


def test_audience_and_resource_must_agree() -> None:
    assert oauth_http._audience({"resource": "lake"}) == "lake"
    assert oauth_http._audience({"audience": "lake", "resource": "lake"}) == "lake"
    with pytest.raises(oauth_http._OAuthError) as caught:
        oauth_http._audience({"audience": "lake", "resource": "stream"})
    assert caught.value.error == "invalid_target"


def test_an_inactive_token_is_reported_with_active_alone() -> None:
    assert oauth_http.introspection_document(Introspection(active=False)) == {"active": False}


def test_oauth_error_codes_for_domain_reasons() -> None:
    for reason, error in [
        ("INVALID_GRANT", "invalid_grant"),
        ("UNSUPPORTED_GRANT_TYPE", "unsupported_grant_type"),
        ("INVALID_SCOPE", "invalid_scope"),
        ("INVALID_TARGET", "invalid_target"),
        ("CONTRACT_VIOLATION", "invalid_request"),
    ]:
        mapped = oauth_http._from_domain(InvalidArgument("x", reason=reason))
        assert (mapped.error, mapped.status) == (error, 400)


async def test_revocation_notifications_that_do_not_parse_are_ignored() -> None:
    revocations = RevocationList(None, "postgresql://unused")  # type: ignore[arg-type]
    revocations._apply("jti-1 1900000000")
    revocations._apply("jti-2 not-a-time")
    revocations._loaded_at = 1.0
    revocations._clock = lambda: 2.0
    assert await revocations.is_revoked("jti-1")
    assert not await revocations.is_revoked("jti-2")


# --- Nexus's own keys -------------------------------------------------------------------


class _Ring:
    """A key ring that only publishes: counts how often its JWKS is read."""

    def __init__(self, *signers: SoftwareSigner) -> None:
        self.signers = list(signers)
        self.reads = 0

    async def jwks(self) -> dict[str, Any]:
        self.reads += 1
        return {"keys": [s.public_jwk() for s in self.signers]}


async def test_ring_keys_are_cached_and_follow_rotation_and_deletion() -> None:
    first, second = SoftwareSigner.generate(), SoftwareSigner.generate()
    ring = _Ring(first)
    now = [0.0]
    keys = RingKeySource(ring, ISSUER, max_age=5, refetch_interval=1, clock=lambda: now[0])  # type: ignore[arg-type]
    for _ in range(100):
        assert (await keys.key(ISSUER, first.kid)).kid == first.kid
    assert ring.reads == 1

    # Forged kids cost one read per refetch interval at most.
    for _ in range(50):
        with pytest.raises(Unauthenticated) as caught:
            await keys.key(ISSUER, "forged")
        assert caught.value.reason == "UNKNOWN_KEY"
    now[0] = 1.5
    with pytest.raises(Unauthenticated):
        await keys.key(ISSUER, "forged")
    assert ring.reads == 2

    # A rotation elsewhere: the new kid is read as soon as the interval allows.
    ring.signers.append(second)
    now[0] = 3.0
    assert (await keys.key(ISSUER, second.kid)).kid == second.kid
    # A deletion elsewhere is noticed within max_age...
    ring.signers.remove(first)
    now[0] = 8.5
    with pytest.raises(Unauthenticated):
        await keys.key(ISSUER, first.kid)
    # ...and one made here at once.
    ring.signers.append(first)
    keys.invalidate()
    assert (await keys.key(ISSUER, first.kid)).kid == first.kid
    with pytest.raises(Unauthenticated) as caught:
        await keys.key("https://someone.else", first.kid)
    assert caught.value.reason == "UNTRUSTED_ISSUER"
