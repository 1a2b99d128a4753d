"""From configuration to a working verifier: AuthSettings and OidcSettings validate what
they are given, and build_verifier trusts exactly Nexus (for the service's audience) and
the configured providers, each with its own claims mapping."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from datapunk_shared.auth.tokens import StaticKeySource
from datapunk_shared.auth.verifiers import build_verifier
from datapunk_shared.config import AuthSettings, OidcSettings
from datapunk_shared.errors import Unauthenticated
from pydantic import ValidationError

from tests.token_kit import ISSUER, claims, ec_key, header, jwks, sign

IDP = "https://idp.test/realms/main"
NEXUS_KEY = ec_key("nexus-1")
IDP_KEY = ec_key("idp-1")
AUTH = AuthSettings(issuer=ISSUER)
OIDC = OidcSettings.model_validate(
    {
        "providers": [
            {
                "issuer": IDP,
                "jwks_url": f"{IDP}/certs",
                "audiences": ["datapunk-api"],
                "algorithms": ["ES256"],
                "tenant_claim": "org",
                "roles_claim": "realm_access.roles",
                "role_map": {"data-engineer": "writer"},
                "attribute_claims": {"clearance": "clearance"},
            }
        ]
    }
)


def idp_http() -> httpx.AsyncClient:
    def serve(request: httpx.Request) -> httpx.Response:
        if str(request.url) == f"{IDP}/certs":
            return httpx.Response(200, json=jwks(IDP_KEY))
        return httpx.Response(404)

    return httpx.AsyncClient(transport=httpx.MockTransport(serve))


def idp_token(**overrides: Any) -> str:
    now = int(time.time())
    body = {
        "iss": IDP,
        "sub": "f:1234:alice",
        "aud": "datapunk-api",
        "jti": "idp-jti-1",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "org": "acme",
        "realm_access": {"roles": ["data-engineer", "admin"]},
        "clearance": "internal",
        "scope": "openid profile",
    }
    body.update(overrides)
    return sign(IDP_KEY, body, header(kid="idp-1", typ="application/at+jwt"))


def nexus_token(aud: str) -> str:
    return sign(NEXUS_KEY, claims(aud=aud), header(kid="nexus-1"))


async def test_a_service_trusts_nexus_tokens_for_its_own_audience() -> None:
    nexus_keys = StaticKeySource({ISSUER: jwks(NEXUS_KEY)})
    lake = build_verifier(AUTH, service="lake", nexus_keys=nexus_keys)
    identity = await lake.verify(nexus_token("datapunk:lake"))
    assert identity.subject == "client:ingest-bot"
    with pytest.raises(Unauthenticated) as caught:
        await lake.verify(nexus_token("datapunk:stream"))
    assert caught.value.reason == "WRONG_AUDIENCE"
    # Without OIDC settings, no external provider is trusted.
    async with idp_http() as http:
        plain = build_verifier(AUTH, service="lake", nexus_keys=nexus_keys, http=http)
        with pytest.raises(Unauthenticated) as caught:
            await plain.verify(idp_token())
        assert caught.value.reason == "UNTRUSTED_ISSUER"


async def test_the_edge_adds_audiences_and_the_providers() -> None:
    nexus_keys = StaticKeySource({ISSUER: jwks(NEXUS_KEY)})
    async with idp_http() as http:
        edge = build_verifier(
            AUTH,
            service="nexus",
            extra_audiences=["datapunk"],
            oidc=OIDC,
            nexus_keys=nexus_keys,
            http=http,
        )
        assert edge.issuers == {ISSUER, IDP}
        assert (await edge.verify(nexus_token("datapunk"))).kind == "client"
        assert (await edge.verify(nexus_token("datapunk:nexus"))).kind == "client"
        user = await edge.verify(idp_token())
        assert user.kind == "user"
        assert user.subject == f"user:{IDP}|f:1234:alice"
        assert user.tenant == "acme"
        assert user.roles == {"writer"}
        assert dict(user.attributes) == {"clearance": "internal"}
        # The provider's own audience only: a Nexus audience in its token is not enough.
        with pytest.raises(Unauthenticated) as caught:
            await edge.verify(idp_token(aud="datapunk:nexus"))
        assert caught.value.reason == "WRONG_AUDIENCE"
        # An ID token of the provider (typ JWT) is not an access token.
        id_token = sign(IDP_KEY, {"iss": IDP}, {"alg": "ES256", "typ": "JWT", "kid": "idp-1"})
        with pytest.raises(Unauthenticated) as caught:
            await edge.verify(id_token)
        assert caught.value.reason == "WRONG_TOKEN_TYPE"


async def test_nexus_keys_come_from_its_jwks_when_not_given() -> None:
    def serve(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/jwks.json":
            return httpx.Response(200, json=jwks(NEXUS_KEY))
        return httpx.Response(404)

    auth = AuthSettings(issuer=ISSUER, jwks_url=f"{ISSUER}/.well-known/jwks.json")
    async with httpx.AsyncClient(transport=httpx.MockTransport(serve)) as http:
        stream = build_verifier(auth, service="stream", http=http)
        assert (await stream.verify(nexus_token("datapunk:stream"))).tenant == "acme"
        await stream.aclose()  # a shared client stays the caller's
        assert not http.is_closed


async def test_a_verifier_with_its_own_http_client_closes_it() -> None:
    verifier = build_verifier(AUTH, service="lake", oidc=OIDC)
    await verifier.aclose()


def test_a_provider_may_not_claim_nexuss_issuer() -> None:
    oidc = OidcSettings.model_validate(
        {"providers": [{"issuer": ISSUER, "audiences": ["x"], "tenant": "acme"}]}
    )
    with pytest.raises(ValueError, match="Nexus's issuer"):
        build_verifier(AUTH, service="lake", oidc=oidc)


def test_auth_defaults_and_the_audience_rule() -> None:
    auth = AuthSettings()
    assert auth.issuer == "http://127.0.0.1:8080"
    assert auth.algorithms == ["ES256"]
    assert auth.audience("lake") == "datapunk:lake"
    assert auth.max_token_bytes == 8192


@pytest.mark.parametrize(
    "provider",
    [
        {"issuer": IDP, "audiences": ["a"]},  # no tenant source
        {"issuer": IDP, "audiences": ["a"], "tenant": "acme", "tenant_claim": "org"},
        {"issuer": IDP, "audiences": [], "tenant": "acme"},
        {"issuer": IDP, "audiences": ["a"], "tenant": "acme", "algorithms": ["HS256"]},
        {"issuer": IDP, "audiences": ["a"], "tenant": "acme", "algorithms": ["none"]},
        {"issuer": "idp.test", "audiences": ["a"], "tenant": "acme"},
        {"issuer": IDP, "audiences": ["a"], "tenant": "two words"},
        {"issuer": IDP, "audiences": ["a"], "tenant": "acme", "roles_claim": "a..b"},
        {"issuer": IDP, "audiences": ["a"], "tenant": "acme", "surprise": 1},
    ],
)
def test_bad_provider_settings_are_refused(provider: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        OidcSettings.model_validate({"providers": [provider]})


def test_a_provider_is_configured_once() -> None:
    provider = {"issuer": IDP, "audiences": ["a"], "tenant": "acme"}
    with pytest.raises(ValidationError, match="once"):
        OidcSettings.model_validate({"providers": [provider, provider]})


@pytest.mark.parametrize(
    "values",
    [
        {"algorithms": ["HS256"]},
        {"algorithms": []},
        {"leeway": 301},
        {"max_token_bytes": 100},
        {"audience_prefix": "Datapunk"},
        {"jwks": {"min_ttl": 600, "default_ttl": 60}},
    ],
)
def test_bad_auth_settings_are_refused(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        AuthSettings.model_validate(values)
