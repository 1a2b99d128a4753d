"""Bounded concurrency per route: a fixed number of calls in flight, a small bounded wait
for a slot, and everything else shed at once. Nothing queues without bound, so memory
stays flat however hard the entry is pushed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from datapunk_shared.config import ConcurrencyRule
from datapunk_shared.errors import Unavailable

from datapunk_nexus.limits.metrics import RATE_LIMIT_DECISIONS
from datapunk_nexus.limits.rules import matches_any

__all__ = ["ConcurrencyLimits", "RouteSlots"]


class RouteSlots:
    """The slots of one route (or one rule, when its methods share them)."""

    __slots__ = ("_max_wait", "_max_waiting", "_semaphore", "limit", "name", "waiting")

    def __init__(self, name: str, limit: int, max_waiting: int, max_wait: float) -> None:
        self.name = name
        self.limit = limit
        self.waiting = 0
        self._max_waiting = max_waiting
        self._max_wait = max_wait
        self._semaphore = asyncio.Semaphore(limit)

    @property
    def in_flight(self) -> int:
        return self.limit - self._semaphore._value

    @property
    def idle(self) -> bool:
        return self.waiting == 0 and not self.in_flight

    async def acquire(self) -> None:
        """Take a slot, wait briefly for one, or raise Unavailable."""
        if not self._semaphore.locked():
            await self._semaphore.acquire()  # returns at once: no suspension
            return
        if self.waiting >= self._max_waiting:
            raise self._shed()
        self.waiting += 1
        try:
            async with asyncio.timeout(self._max_wait):
                await self._semaphore.acquire()
        except TimeoutError:
            raise self._shed() from None
        finally:
            self.waiting -= 1

    def release(self) -> None:
        self._semaphore.release()

    def _shed(self) -> Unavailable:
        RATE_LIMIT_DECISIONS.labels("shed", "").inc()
        return Unavailable(
            f"{self.name} is at its limit of {self.limit} concurrent calls; retry shortly",
            retry_after=max(self._max_wait, 0.05),
            reason="OVERLOADED",
            metadata={"route": self.name, "max_in_flight": str(self.limit)},
        )


@dataclass(frozen=True, slots=True)
class _Rule:
    index: int
    methods: tuple[str, ...]
    config: ConcurrencyRule


class ConcurrencyLimits:
    """Every configured concurrency bound. Slots are made per route on first use; the
    table is bounded (idle routes are dropped when it grows) since method names come from
    callers."""

    def __init__(self, rules: list[ConcurrencyRule], *, max_routes: int = 4096) -> None:
        self._rules = tuple(_Rule(i, tuple(r.methods), r) for i, r in enumerate(rules))
        self._max_routes = max_routes
        self._matching: dict[str, tuple[_Rule, ...]] = {}
        self._slots: dict[tuple[int, str], RouteSlots] = {}

    def __bool__(self) -> bool:
        return bool(self._rules)

    def slots_for(self, method: str) -> list[RouteSlots]:
        rules = self._matching.get(method)
        if rules is None:
            if len(self._matching) >= self._max_routes:
                self._matching.clear()
            rules = self._matching[method] = tuple(
                rule for rule in self._rules if matches_any(method, rule.methods)
            )
        found = []
        for rule in rules:
            route = method if rule.config.per_method else ""
            key = (rule.index, route)
            slots = self._slots.get(key)
            if slots is None:
                if len(self._slots) >= self._max_routes:
                    self._slots = {k: s for k, s in self._slots.items() if not s.idle}
                c = rule.config
                name = method if c.per_method else f"concurrency rule {rule.index}"
                slots = self._slots[key] = RouteSlots(
                    name, c.max_in_flight, c.max_waiting, c.max_wait
                )
            found.append(slots)
        return found

    @asynccontextmanager
    async def hold(self, method: str) -> AsyncIterator[None]:
        """A slot of every bound matching ``method`` for the body of the ``with``;
        released on exit whatever happens (exceptions, cancellation)."""
        taken: list[RouteSlots] = []
        try:
            for slots in self.slots_for(method):
                await slots.acquire()
                taken.append(slots)
            yield
        finally:
            for slots in reversed(taken):
                slots.release()
