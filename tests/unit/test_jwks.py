"""The JWKS cache's logic against a scripted provider (httpx's MockTransport) and a
hand-moved clock: discovery and its issuer check, Cache-Control within bounds, rotation
by unknown kid, the refetch rate limit, shared fetches, outages and fail-closed issuers.
The same cache against a real OpenID provider is tests/integration/test_oidc_provider.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import httpx
import pytest
from datapunk_shared.auth.jwks import JwksCachePolicy, JwksKeySource, discovery_urls
from datapunk_shared.auth.keys import import_public_keys
from datapunk_shared.errors import Unauthenticated, Unavailable
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.token_kit import ec_key, jwks

ISSUER = "https://idp.test"
JWKS_URL = "https://idp.test/keys"
POLICY = JwksCachePolicy(
    min_ttl=60, default_ttl=300, max_ttl=3600, max_stale=600, refetch_interval=10
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Provider:
    """A scripted identity provider: its metadata, its key set, and a switch to take it
    down; it counts requests per path."""

    def __init__(self, issuer: str = ISSUER, *keys: Any) -> None:
        self.issuer = issuer
        self.keys = list(keys) or [ec_key("k1")]
        self.metadata: dict[str, Any] = {"issuer": issuer, "jwks_uri": JWKS_URL}
        self.metadata_paths = {"/.well-known/openid-configuration"}
        self.cache_control: str | None = "max-age=300"
        self.up = True
        self.delay = 0.0
        self.requests: list[str] = []
        self.jwks_body: bytes | None = None

    def count(self, path: str) -> int:
        return self.requests.count(path)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url.path)
        if self.delay:
            await asyncio.sleep(self.delay)
        if not self.up:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path in self.metadata_paths:
            return httpx.Response(200, json=self.metadata)
        if str(request.url) == JWKS_URL:
            headers = {"cache-control": self.cache_control} if self.cache_control else {}
            body = self.jwks_body or json.dumps(jwks(*self.keys)).encode()
            return httpx.Response(200, content=body, headers=headers)
        return httpx.Response(404)


def source(
    provider: Provider,
    clock: Clock,
    policy: JwksCachePolicy = POLICY,
    issuers: dict[str, str | None] | None = None,
) -> JwksKeySource:
    http = httpx.AsyncClient(transport=httpx.MockTransport(provider))
    return JwksKeySource(issuers or {ISSUER: None}, policy=policy, http=http, clock=clock)


async def reason_of(call: Callable[[], Awaitable[object]]) -> str:
    with pytest.raises((Unauthenticated, Unavailable)) as caught:
        await call()
    assert isinstance(caught.value, Unauthenticated | Unavailable)
    return caught.value.reason


async def test_discovery_then_keys_then_the_cache() -> None:
    provider, clock = Provider(), Clock()
    keys = source(provider, clock)
    key = await keys.key(ISSUER, "k1")
    assert key.as_dict(private=False) == provider.keys[0].as_dict(private=False)
    assert not key.is_private
    await keys.key(ISSUER, "k1")
    assert provider.requests == ["/.well-known/openid-configuration", "/keys"]


@pytest.mark.parametrize(
    ("issuer", "rfc8414_path"),
    [
        ("https://idp.test", "/.well-known/oauth-authorization-server"),
        ("https://idp.test/tenant/a", "/.well-known/oauth-authorization-server/tenant/a"),
    ],
)
async def test_discovery_falls_back_to_oauth_server_metadata(
    issuer: str, rfc8414_path: str
) -> None:
    provider, clock = Provider(issuer), Clock()
    provider.metadata_paths = {rfc8414_path}
    assert discovery_urls(issuer)[1] == f"https://idp.test{rfc8414_path}"
    keys = source(provider, clock, issuers={issuer: None})
    await keys.key(issuer, "k1")
    assert provider.requests[:2] == [
        f"{issuer.removeprefix('https://idp.test')}/.well-known/openid-configuration",
        rfc8414_path,
    ]


async def test_metadata_for_another_issuer_is_refused() -> None:
    """A discovery document must name exactly the issuer we asked about (OIDC
    Discovery section 4.3): otherwise one provider could speak for another."""
    provider, clock = Provider(), Clock()
    provider.metadata["issuer"] = "https://evil.test"
    keys = source(provider, clock)
    assert await reason_of(lambda: keys.key(ISSUER, "k1")) == "ISSUER_UNAVAILABLE"
    assert "/keys" not in provider.requests


@pytest.mark.parametrize(
    "jwks_uri", ["http://idp.test/keys", "file:///etc/passwd", "/keys", 42, None]
)
async def test_a_jwks_uri_that_is_not_https_is_refused(jwks_uri: Any) -> None:
    provider, clock = Provider(), Clock()
    provider.metadata["jwks_uri"] = jwks_uri
    keys = source(provider, clock)
    assert await reason_of(lambda: keys.key(ISSUER, "k1")) == "ISSUER_UNAVAILABLE"


async def test_a_configured_jwks_url_skips_discovery() -> None:
    provider, clock = Provider(), Clock()
    keys = source(provider, clock, issuers={ISSUER: JWKS_URL})
    await keys.key(ISSUER, "k1")
    assert provider.requests == ["/keys"]


@pytest.mark.parametrize(
    ("cache_control", "lifetime"),
    [
        ("max-age=120", 120),
        ("public, max-age=900, must-revalidate", 900),
        ("max-age=5", 60),  # raised to min_ttl
        ("max-age=999999999", 3600),  # lowered to max_ttl
        ("no-store", 60),
        ("no-cache, max-age=900", 60),
        (None, 300),  # default_ttl
        ("max-age=banana", 300),
    ],
)
async def test_keys_live_as_long_as_cache_control_says_within_bounds(
    cache_control: str | None, lifetime: float
) -> None:
    provider, clock = Provider(), Clock()
    provider.cache_control = cache_control
    keys = source(provider, clock)
    await keys.key(ISSUER, "k1")
    clock.now += lifetime - 1
    await keys.key(ISSUER, "k1")
    assert provider.count("/keys") == 1
    clock.now += 2
    await keys.key(ISSUER, "k1")
    assert provider.count("/keys") == 2


async def test_an_unknown_kid_refetches_and_follows_a_rotation() -> None:
    provider, clock = Provider(), Clock()
    keys = source(provider, clock)
    await keys.key(ISSUER, "k1")
    clock.now += POLICY.refetch_interval
    provider.keys = [ec_key("k2")]  # the provider rotated: k1 is gone, k2 is new
    assert (await keys.key(ISSUER, "k2")).kid == "k2"
    assert provider.count("/keys") == 2
    assert await reason_of(lambda: keys.key(ISSUER, "k1")) == "UNKNOWN_KEY"


async def test_a_flood_of_random_kids_costs_one_fetch_per_interval() -> None:
    provider, clock = Provider(), Clock()
    keys = source(provider, clock)
    await keys.key(ISSUER, "k1")
    clock.now += POLICY.refetch_interval
    for i in range(500):
        assert await reason_of(partial(keys.key, ISSUER, f"random-{i}")) == "UNKNOWN_KEY"
        clock.now += 0.01  # 5 seconds in all: less than one interval
    assert provider.count("/keys") == 2
    clock.now += POLICY.refetch_interval
    assert await reason_of(lambda: keys.key(ISSUER, "random-x")) == "UNKNOWN_KEY"
    assert provider.count("/keys") == 3
    await keys.key(ISSUER, "k1")  # the real key still works throughout
    assert provider.count("/keys") == 3


async def test_concurrent_lookups_of_a_missing_key_share_one_fetch() -> None:
    provider, clock = Provider(), Clock()
    provider.delay = 0.05
    keys = source(provider, clock)
    results = await asyncio.gather(*(keys.key(ISSUER, "k1") for _ in range(50)))
    assert {key.kid for key in results} == {"k1"}
    assert provider.count("/.well-known/openid-configuration") == 1
    assert provider.count("/keys") == 1


async def test_a_cancelled_waiter_does_not_cancel_the_shared_fetch() -> None:
    provider, clock = Provider(), Clock()
    provider.delay = 0.1
    keys = source(provider, clock)
    first = asyncio.ensure_future(keys.key(ISSUER, "k1"))
    second = asyncio.ensure_future(keys.key(ISSUER, "k1"))
    await asyncio.sleep(0.02)
    first.cancel()
    assert (await second).kid == "k1"
    assert provider.count("/keys") == 1


async def test_cached_keys_outlive_an_outage_until_lifetime_plus_max_stale() -> None:
    provider, clock = Provider(), Clock()
    keys = source(provider, clock)
    await keys.key(ISSUER, "k1")
    provider.up = False
    clock.now += 300 + 500  # past the 300 s lifetime, within max_stale (600 s)
    assert (await keys.key(ISSUER, "k1")).kid == "k1"
    assert provider.requests[-1] == "/keys"  # it tried (the discovered URL is kept)
    # An unknown kid during the outage is still just unknown.
    clock.now += POLICY.refetch_interval
    assert await reason_of(lambda: keys.key(ISSUER, "k9")) == "UNKNOWN_KEY"
    clock.now = 1000 + 300 + 600 + 1  # beyond lifetime + max_stale: fail closed
    with pytest.raises(Unavailable) as caught:
        await keys.key(ISSUER, "k1")
    assert caught.value.reason == "ISSUER_UNAVAILABLE"
    assert caught.value.metadata == {"issuer": ISSUER}
    assert caught.value.retry_after is not None
    assert caught.value.retry_after >= 1
    provider.up = True  # and the provider coming back heals it
    clock.now += POLICY.refetch_interval
    assert (await keys.key(ISSUER, "k1")).kid == "k1"


async def test_an_issuer_never_reached_fails_closed_without_hammering() -> None:
    provider, clock = Provider(), Clock()
    provider.up = False
    keys = source(provider, clock)
    for _ in range(20):
        with pytest.raises(Unavailable) as caught:
            await keys.key(ISSUER, "k1")
        assert caught.value.reason == "ISSUER_UNAVAILABLE"
        assert caught.value.retry_after is not None
        assert 1 <= caught.value.retry_after <= 10
    # One attempt (both discovery locations) in the interval, not twenty.
    assert len(provider.requests) == 2


async def test_untrusted_issuers_are_never_contacted() -> None:
    provider, clock = Provider(), Clock()
    keys = source(provider, clock)
    reason = await reason_of(lambda: keys.key("https://evil.test", "k1"))
    assert reason == "UNTRUSTED_ISSUER"
    assert provider.requests == []


@pytest.mark.parametrize(
    "body",
    [
        b"<html>not json</html>",
        b"[1, 2]",
        b'{"keys": "nope"}',
        b"{" + b" " * 300_000 + b"}",  # larger than max_document_bytes
        json.dumps({"keys": [{"kty": "EC", "kid": "k1"}] * 65}).encode(),
    ],
)
async def test_unusable_key_sets_are_refused_and_keep_the_old_keys(body: bytes) -> None:
    provider, clock = Provider(), Clock()
    keys = source(provider, clock)
    await keys.key(ISSUER, "k1")
    provider.jwks_body = body
    clock.now += 301
    assert (await keys.key(ISSUER, "k1")).kid == "k1"  # stale but valid: still used
    assert provider.count("/keys") == 2


async def test_redirects_are_not_followed() -> None:
    requests: list[str] = []

    def redirecting(request: httpx.Request) -> httpx.Response:
        requests.append(str(request.url))
        return httpx.Response(302, headers={"location": "https://evil.test/jwks"})

    http = httpx.AsyncClient(transport=httpx.MockTransport(redirecting))
    keys = JwksKeySource({ISSUER: JWKS_URL}, policy=POLICY, http=http, clock=Clock())
    assert await reason_of(lambda: keys.key(ISSUER, "k1")) == "ISSUER_UNAVAILABLE"
    assert requests == [JWKS_URL]


@pytest.mark.parametrize(
    ("issuers", "message"),
    [
        ({"idp.test": None}, "issuer"),
        ({"ftp://idp.test": None}, "issuer"),
        ({ISSUER: "http://idp.test/keys"}, "JWKS URL"),
    ],
)
def test_misconfigured_issuers_are_refused(issuers: dict[str, str | None], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JwksKeySource(issuers)


def test_cache_policies_in_the_wrong_order_are_refused() -> None:
    with pytest.raises(ValueError, match="min_ttl"):
        JwksCachePolicy(min_ttl=600, default_ttl=60)


async def test_aclose_closes_only_its_own_client() -> None:
    own = JwksKeySource({ISSUER: None})
    await own.aclose()
    assert own._http.is_closed
    shared = httpx.AsyncClient()
    borrowed = JwksKeySource({ISSUER: None}, http=shared)
    await borrowed.aclose()
    assert not shared.is_closed
    await shared.aclose()


jwk_member = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["EC", "RSA", "OKP", "oct", "P-256", "Ed25519", "sig", "enc", "AQAB"]),
    st.integers(),
    st.none(),
    st.lists(st.text(max_size=5), max_size=3),
)
jwk_entry = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            name: jwk_member
            for name in ("kty", "kid", "use", "alg", "crv", "x", "y", "n", "e", "d", "key_ops")
        },
    ),
    st.builds(lambda k: k.as_dict(private=True), st.sampled_from([ec_key("a"), ec_key("b")])),
    st.text(max_size=10),
)


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.one_of(
        st.dictionaries(st.text(max_size=5), jwk_member),
        st.builds(lambda entries: {"keys": entries}, st.lists(jwk_entry, max_size=8)),
    )
)
def test_fuzzed_key_sets_give_keys_or_value_error(document: dict[str, Any]) -> None:
    try:
        keys = import_public_keys(document)
    except ValueError:
        return
    assert all(not key.is_private and key.kid == kid for kid, key in keys.items())
