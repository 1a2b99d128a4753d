"""Rate limits counted in the stack's Redis: two gates with their own connections (as two
Nexus instances would have) share every limit exactly, and a Redis that goes away is
handled as configured (open, closed, or counted locally), then used again when back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from datapunk_nexus.limits import LimitsGate, build_gate
from datapunk_nexus.policy import CallInfo
from datapunk_nexus.policy_factory import build_policies, command_client
from datapunk_shared.config import RateLimitRule, RateLimitSettings, Settings
from datapunk_shared.errors import ResourceExhausted, Unavailable
from redis.asyncio import Redis

from tests.support import free_port, private_redis_server, wait_until

SEARCH = "/datapunk.lake.v1.VectorService/SearchPoints"


def limits(prefix: str, **overrides: object) -> RateLimitSettings:
    rule = RateLimitRule(name="shared", key="caller", rate=1, period=60, burst=10)
    fields: dict[str, object] = {"backend": "redis", "key_prefix": prefix, "rules": [rule]}
    fields.update(overrides)
    return RateLimitSettings.model_validate(fields)


@asynccontextmanager
async def redis_gate(url: str, settings: RateLimitSettings) -> AsyncIterator[LimitsGate]:
    client = command_client(url, settings.redis_timeout)
    try:
        yield build_gate(settings, client)
    finally:
        await client.aclose()


async def try_admit(gate: LimitsGate, call: CallInfo) -> bool:
    try:
        async with gate.admit(call):
            return True
    except ResourceExhausted:
        return False


@pytest.fixture
def prefix() -> str:
    return f"test:rl:{uuid.uuid4().hex}:"


async def test_two_instances_share_a_limit(settings: Settings, prefix: str) -> None:
    url = settings.engines.redis.url
    call = CallInfo(SEARCH, "10.1.1.1", principal="alice")
    async with redis_gate(url, limits(prefix)) as one, redis_gate(url, limits(prefix)) as two:
        admitted = [await try_admit(one if i % 2 else two, call) for i in range(30)]
        assert sum(admitted) == 10
        assert admitted[:10] == [True] * 10
        # Someone else has a bucket of their own, on both instances.
        other = CallInfo(SEARCH, "10.1.1.1", principal="bob")
        assert await try_admit(one, other)
        assert await try_admit(two, other)


async def test_concurrent_decisions_are_atomic(settings: Settings, prefix: str) -> None:
    url = settings.engines.redis.url
    call = CallInfo(SEARCH, "10.1.1.2")
    generous = limits(prefix, redis_timeout=10)  # a timeout would fail open: not this test
    async with redis_gate(url, generous) as one, redis_gate(url, generous) as two:
        results = await asyncio.gather(
            *(try_admit(one if i % 2 else two, call) for i in range(200))
        )
    assert sum(results) == 10


async def test_refusal_from_redis_has_retry_information(settings: Settings, prefix: str) -> None:
    url = settings.engines.redis.url
    call = CallInfo(SEARCH, "10.1.1.3")
    async with redis_gate(url, limits(prefix)) as gate:
        async with gate.admit(call) as headers:
            assert headers == {
                "RateLimit-Limit": "10",
                "RateLimit-Remaining": "9",
                "RateLimit-Reset": "60",
            }
        for _ in range(9):
            assert await try_admit(gate, call)
        with pytest.raises(ResourceExhausted) as caught:
            async with gate.admit(call):
                pass
    error = caught.value
    assert error.reason == "RATE_LIMITED"
    assert error.retry_after is not None
    assert 59 < error.retry_after <= 60
    assert error.metadata["limit"] == "10"
    assert error.metadata["reset"] == "600"


async def test_buckets_expire_in_redis(settings: Settings, prefix: str) -> None:
    url = settings.engines.redis.url
    async with redis_gate(url, limits(prefix)) as gate:
        assert await try_admit(gate, CallInfo(SEARCH, "10.1.1.4"))
        client = Redis.from_url(url)
        try:
            keys = [k async for k in client.scan_iter(match=prefix + "*")]
            assert len(keys) == 1
            ttl = await client.pttl(keys[0])
            assert 0 < ttl <= 60_000  # one emission interval: 60 s / 1 call
        finally:
            await client.aclose()


def tight(prefix: str, on_error: str) -> RateLimitSettings:
    rule = RateLimitRule(name="tight", key="caller", rate=1, period=60, burst=2)
    return RateLimitSettings(
        backend="redis",
        key_prefix=prefix,
        rules=[rule],
        on_redis_error=on_error,  # type: ignore[arg-type]
        redis_timeout=0.5,
        redis_retry_interval=0.2,
    )


@pytest.mark.parametrize("on_error", ["open", "closed", "local"])
async def test_redis_down_then_back(on_error: str, prefix: str) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    call = CallInfo(SEARCH, "10.2.2.2")
    async with redis_gate(url, tight(prefix, on_error)) as gate:
        # Down from the start: nothing listens on the port.
        outcomes = []
        for _ in range(4):
            try:
                async with gate.admit(call):
                    outcomes.append("admitted")
            except ResourceExhausted:
                outcomes.append("limited")
            except Unavailable as exc:
                outcomes.append(f"refused {exc.reason} {exc.retry_after}")
        expected = {
            "open": ["admitted"] * 4,
            "closed": ["refused RATE_LIMITER_UNAVAILABLE 0.2"] * 4,
            "local": ["admitted", "admitted", "limited", "limited"],
        }[on_error]
        assert outcomes == expected

        with private_redis_server(port) as _server:
            client = Redis.from_url(url)
            try:
                wait_until(lambda: _ping(port), timeout=10)
                await asyncio.sleep(0.3)  # past redis_retry_interval
                # Redis counts again: two calls of burst, then limited.
                counted = [await try_admit(gate, CallInfo(SEARCH, "10.3.3.3")) for _ in range(3)]
                assert counted == [True, True, False]
                assert [k async for k in client.scan_iter(match=prefix + "*")]
            finally:
                await client.aclose()


def _ping(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


async def test_build_policies_from_the_configured_url(settings: Settings, prefix: str) -> None:
    configured = settings.model_copy(
        update={
            "nexus": settings.nexus.model_copy(update={"rate_limits": limits(prefix)}),
        }
    )
    cleanups: list = []  # type: ignore[type-arg]
    gate, cache = await build_policies(configured, settings.engines.redis.url, cleanups=cleanups)
    try:
        assert not cache.cacheable(SEARCH)
        async with gate.admit(CallInfo(SEARCH, "10.4.4.4")) as headers:
            assert headers["RateLimit-Remaining"] == "9"
    finally:
        for cleanup in reversed(cleanups):
            await cleanup()
