"""The request gate in process: which rule applies, per-key buckets, the refusal
(ResourceExhausted with retry information and RateLimit metadata) and the headers."""

from __future__ import annotations

import pytest
from datapunk_nexus.limits import build_gate
from datapunk_nexus.policy import CallInfo, rejection_headers
from datapunk_shared.config import RateLimitRule, RateLimitSettings
from datapunk_shared.errors import ResourceExhausted, Unavailable

SEARCH = "/datapunk.lake.v1.VectorService/SearchPoints"
GET = "/datapunk.lake.v1.VectorService/GetCollection"


def gate(*rules: RateLimitRule):  # type: ignore[no-untyped-def]
    return build_gate(RateLimitSettings(backend="memory", rules=list(rules)), None)


def call(
    method: str = SEARCH,
    *,
    client_ip: str = "10.0.0.1",
    principal: str | None = None,
    tenant: str | None = None,
    api_key_id: str | None = None,
) -> CallInfo:
    return CallInfo(method, client_ip, principal, tenant, api_key_id)


async def admit_count(g, c: CallInfo, n: int) -> int:  # type: ignore[no-untyped-def]
    admitted = 0
    for _ in range(n):
        try:
            async with g.admit(c):
                admitted += 1
        except ResourceExhausted:
            pass
    return admitted


async def test_caller_key_is_principal_then_api_key_then_ip() -> None:
    g = gate(RateLimitRule(name="per-caller", rate=1, period=60, burst=2))
    assert await admit_count(g, call(principal="alice"), 5) == 2
    assert await admit_count(g, call(principal="bob"), 5) == 2
    assert await admit_count(g, call(api_key_id="key-1"), 5) == 2
    assert await admit_count(g, call(client_ip="10.0.0.9"), 5) == 2
    # Alice from another address is still Alice.
    assert await admit_count(g, call(principal="alice", client_ip="10.9.9.9"), 1) == 0


async def test_method_globs_and_per_method_buckets() -> None:
    g = gate(
        RateLimitRule(
            name="searches",
            methods=["/datapunk.lake.v1.*/Search*"],
            key="global",
            per_method=True,
            rate=1,
            period=60,
            burst=1,
        )
    )
    assert await admit_count(g, call(SEARCH), 3) == 1
    assert await admit_count(g, call("/datapunk.lake.v1.SpatialService/SearchNearest"), 3) == 1
    assert await admit_count(g, call(GET), 3) == 3  # not matched


async def test_tenant_rule_skips_calls_without_tenant() -> None:
    g = gate(RateLimitRule(name="tenant", key="tenant", rate=1, period=60, burst=1))
    assert await admit_count(g, call(), 3) == 3
    assert await admit_count(g, call(tenant="acme", principal="a"), 3) == 1
    assert await admit_count(g, call(tenant="acme", principal="b"), 3) == 0


async def test_refusal_carries_retry_after_and_ratelimit_metadata() -> None:
    g = gate(RateLimitRule(name="tight", rate=2, period=10, burst=2))
    async with g.admit(call()) as headers:
        assert headers == {
            "RateLimit-Limit": "2",
            "RateLimit-Remaining": "1",
            "RateLimit-Reset": "5",
        }
    async with g.admit(call()) as headers:
        assert headers["RateLimit-Remaining"] == "0"
    with pytest.raises(ResourceExhausted) as caught:
        async with g.admit(call()):
            pytest.fail("admitted over the limit")
    error = caught.value
    assert error.reason == "RATE_LIMITED"
    assert error.retry_after is not None
    assert 0 < error.retry_after <= 5
    assert error.metadata["rule"] == "tight"
    assert error.metadata["limit"] == "2"
    assert error.metadata["remaining"] == "0"
    assert int(error.metadata["reset"]) == 10
    headers = rejection_headers(error)
    assert headers["Retry-After"] == "5"
    assert headers["RateLimit-Limit"] == "2"
    assert headers["RateLimit-Remaining"] == "0"
    assert headers["RateLimit-Reset"] == "10"


async def test_tightest_rule_sets_the_headers() -> None:
    g = gate(
        RateLimitRule(name="loose", rate=100, period=1, burst=100),
        RateLimitRule(name="tight", key="global", rate=1, period=60, burst=5),
    )
    async with g.admit(call()) as headers:
        assert headers["RateLimit-Limit"] == "5"
        assert headers["RateLimit-Remaining"] == "4"


def test_rejection_headers_for_a_shed_call() -> None:
    error = Unavailable("busy", retry_after=0.05, reason="OVERLOADED")
    assert rejection_headers(error) == {"Retry-After": "1"}
