"""GCRA buckets in Redis, shared by every Nexus instance: one atomic Lua script per
decision (all of a call's buckets at once), on the Redis server's clock."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from datapunk_nexus.limits.gcra import GCRA_LUA, BucketState, Decision

__all__ = ["RedisGcra"]


class RedisGcra:
    """Decides in Redis; raises whatever the client raises (or TimeoutError after
    ``timeout`` seconds) when Redis cannot answer — the gate decides what that means."""

    def __init__(self, redis: Redis, *, timeout: float) -> None:
        self._script = redis.register_script(GCRA_LUA)
        self._timeout = timeout

    async def decide(self, keys: list[str], params: list[tuple[int, int]]) -> Decision:
        args: list[int] = []
        for interval, offset in params:
            args += (interval, offset)
        async with asyncio.timeout(self._timeout):
            reply: Any = await self._script(keys=keys, args=args)
        values = [int(v) for v in reply]
        states = tuple(
            BucketState(
                allowed=values[1 + 3 * i + 1] == 0,
                remaining=values[1 + 3 * i],
                retry_after_us=values[1 + 3 * i + 1],
                reset_after_us=values[1 + 3 * i + 2],
            )
            for i in range(len(keys))
        )
        return Decision(values[0] == 1, states)
