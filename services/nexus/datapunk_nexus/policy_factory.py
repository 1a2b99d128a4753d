"""Builds Nexus's request gate and response cache from the configuration: the one call
the entries' registration makes (``build_policies``); both entries share what it returns,
so limits and cached answers are the same whichever entry a call comes through."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from datapunk_shared.config import Settings
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from datapunk_nexus.cache import build_cache
from datapunk_nexus.limits import build_gate
from datapunk_nexus.policy import NoCache, OpenGate, RequestGate, ResponseCache

__all__ = ["build_policies", "command_client"]

_MAX_REDIS_CONNECTIONS = 64
"""Redis connections for decisions and cache reads; more concurrent calls wait for one
(at most the configured Redis timeout), so connections stay bounded under load."""


def command_client(url: str, timeout: float) -> Redis:
    """A client for decisions and cache operations: bounded connections, no retries."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=_MAX_REDIS_CONNECTIONS,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # One attempt: the caller bounds every operation by its own timeout and decides
        # what a failure means (fail open or closed; a cache miss).
        retry=Retry(NoBackoff(), 0),
    )
    return Redis.from_pool(pool)  # closing the client closes the pool


def _subscriber_client(redis: Redis | str, timeout: float) -> Redis:
    """A client without a read timeout, for waiting on the invalidation channel."""
    if isinstance(redis, str):
        return Redis.from_url(redis, socket_timeout=None, socket_connect_timeout=timeout)
    pool = redis.connection_pool
    kwargs = {**pool.connection_kwargs, "socket_timeout": None}
    return Redis.from_pool(ConnectionPool(connection_class=pool.connection_class, **kwargs))


async def build_policies(
    settings: Settings,
    redis: Redis | str | None,
    *,
    cleanups: list[Callable[[], Awaitable[None]]],
) -> tuple[RequestGate, ResponseCache]:
    """The gate and the cache for ``settings.nexus``. ``redis`` is a client (bytes
    responses, ``decode_responses=False``) or a URL (normally
    ``settings.engines.redis.url``); it is needed only when a Redis backend is
    configured. What must be closed at shutdown is appended to ``cleanups`` (the
    service's ``ServiceContext.cleanups``)."""
    limits, cache_settings = settings.nexus.rate_limits, settings.nexus.cache
    wants_redis = (limits.backend == "redis" and bool(limits.rules)) or (
        cache_settings.backend == "redis" and bool(cache_settings.rules)
    )
    client: Redis | None = None
    if wants_redis:
        if redis is None:
            raise ValueError("a Redis backend is configured but no Redis was given")
        timeout = max(limits.redis_timeout, cache_settings.redis_timeout)
        client = command_client(redis, timeout) if isinstance(redis, str) else redis
        if isinstance(redis, str):
            owned = client
            cleanups.append(owned.aclose)

    gate: RequestGate = OpenGate()
    if limits.rules or limits.concurrency:
        gate = build_gate(limits, client)

    cache: ResponseCache = NoCache()
    if cache_settings.rules:
        subscriber_client = None
        if cache_settings.backend == "redis" and redis is not None:
            subscriber_client = _subscriber_client(redis, cache_settings.redis_timeout)
            cleanups.append(subscriber_client.aclose)
        tiered, subscriber = build_cache(
            cache_settings,
            client,
            subscriber_client,
            settings.nexus.descriptor_set,
            default_tenant=settings.auth.default_tenant,
        )
        if subscriber is not None:
            subscriber.start()
            cleanups.append(subscriber.stop)
        cache = tiered
    return gate, cache
