"""The CacheService servicer: converts between protobuf and the cache's invalidation.

The tags a caller names are about its own tenant's objects (``<tenant>/<tag>`` in the
cache): a tenant's administrator drops that tenant's cached answers, never another's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from datapunk.nexus.v1 import cache_pb2, cache_pb2_grpc
from datapunk_shared.auth.tenancy import current_tenant
from datapunk_shared.resource_tags import scoped
from datapunk_shared.rpc.server import ServiceContext

from datapunk_nexus.cache.tiered import TieredCache
from datapunk_nexus.policy import ResponseCache

__all__ = ["CacheServicer", "add_cache_service"]

Invalidate = Callable[[Sequence[str]], Awaitable[None]]


async def _nothing_cached(tags: Sequence[str]) -> None:
    return None


class CacheServicer(cache_pb2_grpc.CacheServiceServicer):
    def __init__(self, invalidate: Invalidate) -> None:
        self._invalidate = invalidate

    async def InvalidateCache(
        self, request: cache_pb2.InvalidateCacheRequest, context: Any
    ) -> cache_pb2.InvalidateCacheResponse:
        tags = list(request.tags)
        tenant = current_tenant()
        await self._invalidate([scoped(tenant, tag) for tag in tags])
        return cache_pb2.InvalidateCacheResponse(tags=tags)


def add_cache_service(context: ServiceContext, cache: ResponseCache) -> None:
    """Register CacheService; with caching off in this instance it succeeds doing nothing."""
    invalidate = cache.invalidate if isinstance(cache, TieredCache) else _nothing_cached
    cache_pb2_grpc.add_CacheServiceServicer_to_server(  # type: ignore[no-untyped-call]
        CacheServicer(invalidate), context.server
    )
    context.service_names.append(cache_pb2.DESCRIPTOR.services_by_name["CacheService"].full_name)
