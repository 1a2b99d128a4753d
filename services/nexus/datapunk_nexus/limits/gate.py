"""Nexus's request gate: bounded concurrency per route, then the rate limits (GCRA) of
every rule that applies, counted in Redis (shared by the instances) or in this process.

Answers, for the entries to put on the wire (names of the IETF draft
"RateLimit header fields for HTTP", draft-ietf-httpapi-ratelimit-headers):

- admitted: ``RateLimit-Limit`` (the burst of the tightest applicable rule),
  ``RateLimit-Remaining`` (calls left in it now) and ``RateLimit-Reset`` (seconds until it
  is full again);
- over a rate limit: ``ResourceExhausted`` (reason ``RATE_LIMITED``) with ``retry_after``
  and metadata ``rule``, ``limit``, ``remaining``, ``reset`` — see
  ``datapunk_nexus.policy.rejection_headers`` for the headers (``Retry-After`` too);
- over a concurrency bound: ``Unavailable`` (reason ``OVERLOADED``) with ``retry_after``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Literal, Protocol

from datapunk_shared.errors import ResourceExhausted, Unavailable
from datapunk_shared.logging import get_logger

from datapunk_nexus.limits.concurrency import ConcurrencyLimits, RouteSlots, release
from datapunk_nexus.limits.gcra import BucketState, Decision, MemoryGcra
from datapunk_nexus.limits.metrics import RATE_LIMIT_DECISIONS
from datapunk_nexus.limits.rules import Bucket, MethodTable
from datapunk_nexus.policy import CallInfo

__all__ = ["LimitsGate", "SharedCounters"]

log = get_logger("datapunk.nexus.limits")

OnRedisError = Literal["open", "closed", "local"]


class SharedCounters(Protocol):
    """Where the buckets live when they are shared (Redis)."""

    async def decide(self, keys: list[str], params: list[tuple[int, int]]) -> Decision: ...


class LimitsGate:
    """The ``RequestGate`` of Nexus. ``shared`` is None for in-process counting."""

    def __init__(
        self,
        table: MethodTable,
        concurrency: ConcurrencyLimits,
        *,
        shared: SharedCounters | None,
        key_prefix: str,
        on_redis_error: OnRedisError = "open",
        retry_interval: float = 1.0,
    ) -> None:
        self._table = table
        self._concurrency = concurrency
        self._shared = shared
        self._local = MemoryGcra()
        self._prefix = key_prefix
        self._on_error = on_redis_error
        self._retry_interval = retry_interval
        self._shared_down_until = 0.0
        self._allowed = RATE_LIMIT_DECISIONS.labels("allowed", "")

    def admit(self, call: CallInfo) -> _Admission:
        return _Admission(self, call)

    async def check_rate(self, call: CallInfo) -> Mapping[str, str]:
        headers = await self._check_rate(call)
        self._allowed.inc()
        return headers

    async def _check_rate(self, call: CallInfo) -> Mapping[str, str]:
        buckets = self._table.buckets(self._prefix, call)
        if not buckets:
            return {}
        keys = [b.key for b in buckets]
        params = [(b.rule.emission_interval_us, b.rule.burst_offset_us) for b in buckets]
        decision = await self._decide(keys, params)
        if decision is None:
            return {}
        if not decision.allowed:
            raise _limited(buckets, decision.states)
        return _headers(buckets, decision.states)

    async def _decide(self, keys: list[str], params: list[tuple[int, int]]) -> Decision | None:
        """The decision, or None to admit without one (Redis down, fail-open)."""
        if self._shared is None:
            return self._local.decide(keys, params)
        if time.monotonic() >= self._shared_down_until:
            try:
                return await self._shared.decide(keys, params)
            except Exception as exc:  # any Redis trouble: connection, timeout, script
                self._shared_down_until = time.monotonic() + self._retry_interval
                log.warning(
                    "rate limits: Redis cannot decide",
                    error=repr(exc),
                    on_redis_error=self._on_error,
                    retry_in_s=self._retry_interval,
                )
        RATE_LIMIT_DECISIONS.labels(f"redis_error_{self._on_error}", "").inc()
        if self._on_error == "local":
            return self._local.decide(keys, params)
        if self._on_error == "closed":
            raise Unavailable(
                "rate limits cannot be checked now (their store is unreachable); retry later",
                retry_after=self._retry_interval,
                reason="RATE_LIMITER_UNAVAILABLE",
            )
        return None


class _Admission:
    """``LimitsGate.admit``: a concurrency slot of every bound of the route, held until
    the ``async with`` ends, then the rate limits. A plain class rather than a generator
    context manager: a shed call is refused with one function call and no suspension."""

    __slots__ = ("_call", "_gate", "_taken")

    def __init__(self, gate: LimitsGate, call: CallInfo) -> None:
        self._gate = gate
        self._call = call
        self._taken: tuple[RouteSlots, ...] = ()

    async def __aenter__(self) -> Mapping[str, str]:
        gate = self._gate
        if gate._concurrency:
            self._taken = await gate._concurrency.acquire(self._call.method)
        try:
            headers = await gate._check_rate(self._call)
        except BaseException:
            self._release()
            raise
        gate._allowed.inc()
        return headers

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        taken, self._taken = self._taken, ()
        release(taken)


def _tightest(buckets: list[Bucket], states: tuple[BucketState, ...]) -> int:
    return min(range(len(buckets)), key=lambda i: (states[i].remaining, -states[i].reset_after_us))


def _seconds(us: int) -> int:
    return max(0, math.ceil(us / 1_000_000))


def _headers(buckets: list[Bucket], states: tuple[BucketState, ...]) -> dict[str, str]:
    i = _tightest(buckets, states)
    return {
        "RateLimit-Limit": str(buckets[i].rule.burst),
        "RateLimit-Remaining": str(states[i].remaining),
        "RateLimit-Reset": str(_seconds(states[i].reset_after_us)),
    }


def _limited(buckets: list[Bucket], states: tuple[BucketState, ...]) -> ResourceExhausted:
    denied = [i for i, state in enumerate(states) if not state.allowed]
    i = max(denied, key=lambda j: states[j].retry_after_us)
    rule = buckets[i].rule
    retry_after = states[i].retry_after_us / 1_000_000
    RATE_LIMIT_DECISIONS.labels("limited", rule.name).inc()
    return ResourceExhausted(
        f"rate limit {rule.name!r} reached; retry in {retry_after:.3f} s",
        retry_after=retry_after,
        reason="RATE_LIMITED",
        metadata={
            "rule": rule.name,
            "limit": str(rule.burst),
            "remaining": "0",
            "reset": str(_seconds(states[i].reset_after_us)),
            "retry_after": f"{retry_after:.3f}",
        },
    )
