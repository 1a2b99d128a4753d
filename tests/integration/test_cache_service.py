"""CacheService.InvalidateCache on a real Nexus process: the invalidation reaches every
instance through Redis (generations bumped, channel message published), bad tags get
INVALID_ARGUMENT with field violations — called the way an administrator calls it, with
its API key through the gRPC entry. And two real Nexus processes share a rate limit
through their gRPC entries."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import grpc
import pytest
from datapunk.nexus.v1 import cache_pb2, cache_pb2_grpc, status_pb2, status_pb2_grpc
from datapunk_shared.config import Settings
from datapunk_shared.rpc.status_codes import STATUS_DETAILS_KEY
from google.rpc import error_details_pb2
from google.rpc import status_pb2 as rpc_status_pb2
from grpc_health.v1 import health_pb2
from redis.asyncio import Redis

from tests.auth_support import entry_channel
from tests.support import free_port, run_service, wait_until


def nexus_env(settings: Settings, prefix: str, **extra: str) -> dict[str, str]:
    return {
        "DATAPUNK_ENGINES__POSTGRES__URL": settings.engines.postgres.url,
        "DATAPUNK_ENGINES__REDIS__URL": settings.engines.redis.url,
        "DATAPUNK_NEXUS__CACHE__RULES": json.dumps(
            [{"methods": ["/datapunk.lake.v1.VectorService/Get*"], "ttl": 60}]
        ),
        "DATAPUNK_NEXUS__CACHE__KEY_PREFIX": prefix,
        "DATAPUNK_NEXUS__CACHE__CHANNEL": prefix + "invalidate",
        **extra,
    }


async def test_invalidate_cache_reaches_redis_and_the_channel(
    settings: Settings, tmp_path: Path
) -> None:
    prefix = f"test:cachesvc:{uuid.uuid4().hex}:"
    redis = Redis.from_url(settings.engines.redis.url)
    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(prefix + "invalidate")
        entry = free_port()
        env = nexus_env(settings, prefix, DATAPUNK_NEXUS__GRPC_ENTRY__PORT=str(entry))
        with run_service("nexus", tmp_path, env) as nexus:
            # Serving: its signing keys (for its call to itself) and administrator exist.
            serving = health_pb2.HealthCheckResponse.SERVING
            wait_until(lambda: nexus.health() == serving, timeout=30)
            async with entry_channel(f"127.0.0.1:{entry}") as channel:
                stub = cache_pb2_grpc.CacheServiceStub(channel)
                tags = ["lake/collections/docs", "lake/layers/roads/features/7"]
                response = await stub.InvalidateCache(
                    cache_pb2.InvalidateCacheRequest(tags=tags), timeout=10
                )
                assert list(response.tags) == tags

                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.InvalidateCache(
                        cache_pb2.InvalidateCacheRequest(tags=["Bad Tag", "lake//x"]), timeout=10
                    )
        error = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = dict(error.trailing_metadata() or ())[STATUS_DETAILS_KEY]
        status = rpc_status_pb2.Status.FromString(details)
        bad = error_details_pb2.BadRequest()
        assert any(d.Unpack(bad) for d in status.details)
        assert {v.field for v in bad.field_violations} == {"tags[0]", "tags[1]"}

        message = None
        async with asyncio.timeout(10):
            while message is None:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        # Scoped to the caller's tenant (the bootstrap administrator's, ``default``).
        assert json.loads(message["data"]) == {"tags": [f"default/{tag}" for tag in tags]}
        assert await redis.get(prefix + "g:t:default/lake/collections/docs") == b"1"
        assert await redis.get(prefix + "g:n:default/lake/layers/roads/features") == b"1"
        assert await redis.get(prefix + "g:n:default/lake/collections/other") is None
    finally:
        await pubsub.aclose()
        await redis.aclose()


async def test_two_nexus_processes_share_a_rate_limit(settings: Settings, tmp_path: Path) -> None:
    prefix = f"test:rl2:{uuid.uuid4().hex}:"
    rules = [
        {
            "name": "status",
            "methods": ["/datapunk.nexus.v1.StatusService/*"],
            "key": "global",
            "rate": 1,
            "period": 60,
            "burst": 6,
        }
    ]
    common = {
        "DATAPUNK_NEXUS__RATE_LIMITS__RULES": json.dumps(rules),
        "DATAPUNK_NEXUS__RATE_LIMITS__KEY_PREFIX": prefix,
    }
    entries = [free_port(), free_port()]
    with (
        run_service(
            "nexus",
            tmp_path,
            nexus_env(settings, prefix, **common, DATAPUNK_NEXUS__GRPC_ENTRY__PORT=str(entries[0])),
        ) as one,
        run_service(
            "nexus",
            tmp_path,
            nexus_env(settings, prefix, **common, DATAPUNK_NEXUS__GRPC_ENTRY__PORT=str(entries[1])),
        ) as two,
    ):
        # Both serving (their keys loaded): a call forwarded before is UNAVAILABLE.
        serving = health_pb2.HealthCheckResponse.SERVING
        wait_until(lambda: one.health() == serving and two.health() == serving, timeout=40)
        codes = []
        for i in range(12):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{entries[i % 2]}") as channel:
                stub = status_pb2_grpc.StatusServiceStub(channel)
                try:
                    await stub.GetStatus(status_pb2.GetStatusRequest(), timeout=10)
                    codes.append("OK")
                except grpc.aio.AioRpcError as exc:
                    codes.append(exc.code().name)
    assert codes == ["OK"] * 6 + ["RESOURCE_EXHAUSTED"] * 6
