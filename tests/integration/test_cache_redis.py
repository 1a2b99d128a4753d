"""The response cache on the stack's Redis, with two instances (each its own
connections, subscriber and local LRU, as two Nexus processes have): answers are shared
through Redis, a write through one instance drops the entries of both, an answer that
raced with an invalidation is never served, and a Redis outage costs misses, not errors
or stale answers."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from datapunk.lake.v1 import vectors_pb2
from datapunk_nexus.cache import TieredCache, build_cache, publish_invalidation
from datapunk_nexus.policy import CallInfo
from datapunk_nexus.policy_factory import command_client
from datapunk_shared.config import CacheRule, CacheSettings, Settings
from datapunk_shared.errors import Unavailable
from redis.asyncio import Redis

from tests.support import free_port

VS = "/datapunk.lake.v1.VectorService/"


def settings_for(prefix: str) -> CacheSettings:
    return CacheSettings(
        backend="redis",
        rules=[CacheRule(methods=[VS + "Get*", VS + "Search*"], ttl=60)],
        key_prefix=prefix,
        channel=prefix + "invalidate",
        redis_timeout=2,
    )


@asynccontextmanager
async def instance(
    url: str, settings: CacheSettings, *, wait: bool = True
) -> AsyncIterator[TieredCache]:
    client = command_client(url, settings.redis_timeout)
    listener = Redis.from_url(url, socket_timeout=None, socket_connect_timeout=1)
    cache, subscriber = build_cache(settings, client, listener)
    assert subscriber is not None
    subscriber.start()
    try:
        if wait:
            assert await subscriber.wait_subscribed(10)
        yield cache
    finally:
        await subscriber.stop()
        await listener.aclose()
        await client.aclose()


def get_call(principal: str = "alice", name: str = "collections/docs") -> CallInfo:
    request = vectors_pb2.GetCollectionRequest(name=name).SerializeToString()
    return CallInfo(VS + "GetCollection", "10.0.0.1", principal, request=request)


def upsert_call() -> CallInfo:
    request = vectors_pb2.UpsertPointsRequest(collection="collections/docs").SerializeToString()
    return CallInfo(VS + "UpsertPoints", "10.0.0.1", "writer", request=request)


async def eventually(check: object, timeout: float = 10) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.fixture
def cache_settings() -> CacheSettings:
    return settings_for(f"test:cache:{uuid.uuid4().hex}:")


async def test_answers_are_shared_between_instances(
    settings: Settings, cache_settings: CacheSettings
) -> None:
    url = settings.engines.redis.url
    async with instance(url, cache_settings) as one, instance(url, cache_settings) as two:
        assert await one.get(get_call()) is None
        await one.put(get_call(), b"docs v1")
        assert await two.get(get_call()) == b"docs v1"  # from Redis, now in two's LRU too
        assert await two.get(get_call(principal="bob")) is None


async def test_a_write_through_one_instance_invalidates_both(
    settings: Settings, cache_settings: CacheSettings
) -> None:
    url = settings.engines.redis.url
    async with instance(url, cache_settings) as one, instance(url, cache_settings) as two:
        await one.get(get_call())
        await one.put(get_call(), b"docs v1")
        await one.get(get_call(name="collections/other"))
        await one.put(get_call(name="collections/other"), b"other v1")
        assert await two.get(get_call()) == b"docs v1"
        assert await two.get(get_call(name="collections/other")) == b"other v1"

        await one.after_call(upsert_call())
        assert await one.get(get_call()) is None

        # Two's local copy goes when the channel message arrives (milliseconds); Redis's
        # copy is invalid at once (its generation changed).
        async def dropped() -> bool:
            return len(two._lru) == 1

        await eventually(dropped)
        assert await two.get(get_call()) is None
        assert await two.get(get_call(name="collections/other")) == b"other v1"


async def test_invalidations_published_by_another_service_are_heard(
    settings: Settings, cache_settings: CacheSettings
) -> None:
    url = settings.engines.redis.url
    async with instance(url, cache_settings) as one:
        await one.get(get_call())
        await one.put(get_call(), b"docs v1")
        assert len(one._lru) == 1
        writer = Redis.from_url(url)
        try:
            await publish_invalidation(
                writer,
                ["default/lake/collections/docs"],  # a tenantless caller's: the default
                prefix=cache_settings.key_prefix,
                channel=cache_settings.channel,
            )
        finally:
            await writer.aclose()

        async def dropped() -> bool:
            return len(one._lru) == 0

        await eventually(dropped)
        assert await one.get(get_call()) is None


async def test_an_answer_fetched_across_an_invalidation_is_never_served(
    settings: Settings, cache_settings: CacheSettings
) -> None:
    url = settings.engines.redis.url
    async with instance(url, cache_settings) as one, instance(url, cache_settings) as two:
        assert await one.get(get_call()) is None  # one misses and asks the backend...
        await two.after_call(upsert_call())  # ...a write lands through the other instance
        await one.put(get_call(), b"fetched before the write")  # the old answer arrives
        assert await two.get(get_call()) is None
        assert await one.get(get_call()) is None


async def test_redis_down_means_misses_and_no_local_serving(cache_settings: CacheSettings) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    down = cache_settings.model_copy(update={"redis_timeout": 0.3})
    async with instance(url, down, wait=False) as cache:
        assert not cache.local_usable
        for _ in range(3):
            assert await cache.get(get_call()) is None
            await cache.put(get_call(), b"answer")
        assert len(cache._lru) == 0, "without invalidations the local LRU must not fill"
        with pytest.raises(Unavailable) as caught:
            await cache.invalidate(["lake/collections/docs"])
        assert caught.value.reason == "CACHE_UNAVAILABLE"
