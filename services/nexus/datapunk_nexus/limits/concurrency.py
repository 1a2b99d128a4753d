"""Bounded concurrency per route: a fixed number of calls in flight, a small bounded wait
for a slot, and everything else shed at once. Nothing queues without bound, so memory
stays flat however hard the entry is pushed.

Shedding is the path taken most under overload, so it is kept cheap: taking a free slot
or refusing a call is plain bookkeeping (no await, no lock, no Redis), and the refusal's
message and metadata are built once per route. Only a call allowed to wait for a slot
suspends, on a future of its own that ``release`` hands the freed slot to (first come,
first served), so admitted work never queues behind refused work."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from datapunk_shared.config import ConcurrencyRule
from datapunk_shared.errors import Unavailable

from datapunk_nexus.limits.metrics import RATE_LIMIT_DECISIONS
from datapunk_nexus.limits.rules import matches_any

__all__ = ["ConcurrencyLimits", "RouteSlots"]

_SHED = RATE_LIMIT_DECISIONS.labels("shed", "")


class RouteSlots:
    """The slots of one route (or one rule, when its methods share them)."""

    __slots__ = (
        "_max_wait",
        "_max_waiting",
        "_message",
        "_metadata",
        "_retry_after",
        "_waiters",
        "in_flight",
        "limit",
        "name",
    )

    def __init__(self, name: str, limit: int, max_waiting: int, max_wait: float) -> None:
        self.name = name
        self.limit = limit
        self.in_flight = 0
        self._max_waiting = max_waiting
        self._max_wait = max_wait
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._message = f"{name} is at its limit of {limit} concurrent calls; retry shortly"
        self._retry_after = max(max_wait, 0.05)
        self._metadata = {"route": name, "max_in_flight": str(limit)}

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def idle(self) -> bool:
        return not self._waiters and not self.in_flight

    def try_take(self) -> bool:
        """Take a free slot; False when every slot is taken (a freed slot goes straight
        to the first waiter, so a free slot means nobody is waiting)."""
        if self.in_flight < self.limit:
            self.in_flight += 1
            return True
        return False

    async def wait(self) -> None:
        """After ``try_take`` failed: wait up to ``max_wait`` for a slot, or raise
        Unavailable at once when ``max_waiting`` calls already wait."""
        if len(self._waiters) >= self._max_waiting:
            raise self.shed()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self._max_wait):
                await waiter
        except BaseException as exc:  # timed out or cancelled
            if waiter.done() and not waiter.cancelled():
                self.release()  # a slot was handed over just now: pass it on
            else:
                waiter.cancel()
                self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise self.shed() from None
            raise

    def release(self) -> None:
        """Free a slot: hand it to the first waiter still waiting, else give it back."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_flight -= 1

    def shed(self) -> Unavailable:
        """The refusal of a call over this bound (counted in the metrics)."""
        _SHED.inc()
        return Unavailable(
            self._message,
            retry_after=self._retry_after,
            reason="OVERLOADED",
            metadata=self._metadata,
        )


@dataclass(frozen=True, slots=True)
class _Rule:
    index: int
    methods: tuple[str, ...]
    config: ConcurrencyRule


class ConcurrencyLimits:
    """Every configured concurrency bound. Slots are made per route on first use; the
    tables are bounded (idle routes are dropped when they grow) since method names come
    from callers."""

    def __init__(self, rules: list[ConcurrencyRule], *, max_routes: int = 4096) -> None:
        self._rules = tuple(_Rule(i, tuple(r.methods), r) for i, r in enumerate(rules))
        self._max_routes = max_routes
        self._by_method: dict[str, tuple[RouteSlots, ...]] = {}
        self._slots: dict[tuple[int, str], RouteSlots] = {}

    def __bool__(self) -> bool:
        return bool(self._rules)

    def slots_for(self, method: str) -> tuple[RouteSlots, ...]:
        found = self._by_method.get(method)
        if found is None:
            if len(self._by_method) >= self._max_routes:
                self._by_method.clear()
            found = self._by_method[method] = tuple(
                self._slots_of(rule, method)
                for rule in self._rules
                if matches_any(method, rule.methods)
            )
        return found

    def _slots_of(self, rule: _Rule, method: str) -> RouteSlots:
        c = rule.config
        key = (rule.index, method if c.per_method else "")
        slots = self._slots.get(key)
        if slots is None:
            if len(self._slots) >= self._max_routes:
                # Busy slots stay (their calls will release them); the method table may
                # name dropped ones, so it is rebuilt from what stays.
                self._slots = {k: s for k, s in self._slots.items() if not s.idle}
                self._by_method.clear()
            name = method if c.per_method else f"concurrency rule {rule.index}"
            slots = self._slots[key] = RouteSlots(name, c.max_in_flight, c.max_waiting, c.max_wait)
        return slots

    async def acquire(self, method: str) -> tuple[RouteSlots, ...]:
        """A slot of every bound matching ``method``, or Unavailable (nothing held then).
        Suspends only when a bound lets the call wait for a slot."""
        found = self.slots_for(method)
        for i, slots in enumerate(found):
            if slots.try_take():
                continue
            try:
                await slots.wait()
            except BaseException:
                release(found[:i])
                raise
        return found


def release(taken: tuple[RouteSlots, ...]) -> None:
    """Give back slots taken by ``ConcurrencyLimits.acquire``, last taken first."""
    for slots in reversed(taken):
        slots.release()
