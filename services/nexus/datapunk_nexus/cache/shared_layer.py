"""The shared cache layer in Redis, with invalidation by tag generations.

Every tag has two counters in Redis: ``node`` (bumped when something below the tag is
invalidated) and ``tree`` (bumped when the tag itself is). An entry is stored with the
counters it depends on — its tag's ``node`` and the ``tree`` of its tag and of each
ancestor — as they were read *before* the answer was fetched from the backend, and is
valid only while they are unchanged. So an invalidation is a few INCRs (no scan), and an
answer fetched while a write was being invalidated can never be served afterwards. Reads
are one round trip (MGET of the entry and its counters, plus its PTTL, pipelined).

Invalidations are published on a channel too, in the same MULTI, for the local LRUs of
every instance (see ``subscriber``). Message: JSON ``{"tags": ["acme/lake/collections/docs"]}``
(tags scoped by tenant). The services that own data publish the same for their own
writes (``datapunk_shared.invalidation``, which holds ``publish_invalidation``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from datapunk_shared.invalidation import (
    GENERATION_TTL_SECONDS,
    node_key,
    publish_invalidation,
    tree_key,
)
from redis.asyncio import Redis

from datapunk_nexus.cache.tags import ancestors

__all__ = ["GENERATION_TTL_SECONDS", "SharedLayer", "publish_invalidation"]


class SharedLayer:
    def __init__(self, redis: Redis, *, prefix: str, channel: str, timeout: float) -> None:
        self._redis = redis
        self._prefix = prefix
        self._channel = channel
        self._timeout = timeout

    def _generation_keys(self, tag: str) -> list[str]:
        p = self._prefix
        return [node_key(p, tag), *(tree_key(p, t) for t in (*ancestors(tag), tag))]

    async def get(self, key: str, tag: str) -> tuple[bytes | None, bytes, float]:
        """The valid entry (or None), the stamp to store a fresh answer with, and the
        entry's remaining TTL in seconds."""
        entry_key = f"{self._prefix}e:{key}"
        pipe: Any = self._redis.pipeline(transaction=False)
        pipe.mget([entry_key, *self._generation_keys(tag)])
        pipe.pttl(entry_key)
        async with asyncio.timeout(self._timeout):
            values, pttl = await pipe.execute()
        stamp = b",".join(v or b"0" for v in values[1:])
        raw: bytes | None = values[0]
        if raw is not None:
            header, _, payload = raw.partition(b"\n")
            if header == stamp and pttl > 0:
                return payload, stamp, pttl / 1000
        return None, stamp, 0.0

    async def put(self, key: str, stamp: bytes, value: bytes, ttl: float) -> None:
        async with asyncio.timeout(self._timeout):
            await self._redis.set(
                f"{self._prefix}e:{key}", stamp + b"\n" + value, px=max(1, int(ttl * 1000))
            )

    async def invalidate(self, tags: Sequence[str]) -> None:
        async with asyncio.timeout(self._timeout):
            await publish_invalidation(
                self._redis, tags, prefix=self._prefix, channel=self._channel
            )
