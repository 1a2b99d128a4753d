"""Rate limits (GCRA, in Redis or in process) and load shedding (bounded concurrency per
route) for Nexus's entries, behind the ``RequestGate`` seam."""

from __future__ import annotations

from datapunk_shared.config import RateLimitSettings
from redis.asyncio import Redis

from datapunk_nexus.limits.concurrency import ConcurrencyLimits
from datapunk_nexus.limits.gate import LimitsGate
from datapunk_nexus.limits.redis_gcra import RedisGcra
from datapunk_nexus.limits.rules import MethodTable, compile_rules

__all__ = ["LimitsGate", "build_gate"]


def build_gate(settings: RateLimitSettings, redis: Redis | None) -> LimitsGate:
    """The gate for ``settings``; ``redis`` is used when ``backend = "redis"``."""
    shared = None
    if settings.backend == "redis":
        if redis is None:
            raise ValueError("rate_limits.backend is redis but no Redis client was given")
        shared = RedisGcra(redis, timeout=settings.redis_timeout)
    return LimitsGate(
        MethodTable(compile_rules(settings.rules)),
        ConcurrencyLimits(settings.concurrency),
        shared=shared,
        key_prefix=settings.key_prefix,
        on_redis_error=settings.on_redis_error,
        retry_interval=settings.redis_retry_interval,
    )
