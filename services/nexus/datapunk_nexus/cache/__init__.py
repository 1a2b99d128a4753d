"""Response caching for Nexus's entries, behind the ``ResponseCache`` seam: a local LRU
backed by Redis, per principal, method and request, invalidated by resource tags."""

from __future__ import annotations

from pathlib import Path

from datapunk_shared.auth.tenancy import DEFAULT_TENANT
from datapunk_shared.config import CacheSettings
from redis.asyncio import Redis

from datapunk_nexus.cache.lru import LocalLru
from datapunk_nexus.cache.shared_layer import SharedLayer, publish_invalidation
from datapunk_nexus.cache.subscriber import InvalidationSubscriber
from datapunk_nexus.cache.tags import ResourceTags
from datapunk_nexus.cache.tiered import TieredCache

__all__ = [
    "InvalidationSubscriber",
    "TieredCache",
    "build_cache",
    "publish_invalidation",
]


def build_cache(
    settings: CacheSettings,
    redis: Redis | None,
    subscriber_redis: Redis | None,
    descriptor_set: Path | None = None,
    *,
    default_tenant: str = DEFAULT_TENANT,
) -> tuple[TieredCache, InvalidationSubscriber | None]:
    """The cache for ``settings`` and, with the Redis backend, the (not yet started)
    subscriber that keeps its local LRU in step with the other instances (and with the
    invalidations the services publish for their own writes).
    ``subscriber_redis`` must have no socket timeout: it waits for messages.
    ``default_tenant`` is the tenant of calls without one (``auth.default_tenant``)."""
    tags = ResourceTags(descriptor_set)
    lru = LocalLru(max_entries=settings.max_entries, max_bytes=settings.max_bytes)
    shared = None
    if settings.backend == "redis":
        if redis is None or subscriber_redis is None:
            raise ValueError("cache.backend is redis but no Redis client was given")
        shared = SharedLayer(
            redis,
            prefix=settings.key_prefix,
            channel=settings.channel,
            timeout=settings.redis_timeout,
        )
    cache = TieredCache(
        settings.rules,
        settings.read_methods,
        tags,
        lru,
        shared=shared,
        max_entry_bytes=settings.max_entry_bytes,
        default_tenant=default_tenant,
    )
    if shared is None or subscriber_redis is None:
        return cache, None
    subscriber = InvalidationSubscriber(
        subscriber_redis,
        settings.channel,
        on_tags=cache.drop_local,
        on_subscribed=cache.reset_local,
        on_state=cache.set_local_usable,
    )
    return cache, subscriber
