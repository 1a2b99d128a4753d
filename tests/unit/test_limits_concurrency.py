"""Load shedding: at most N calls of a route in flight, a small bounded wait, the rest
refused at once with UNAVAILABLE; slots come back whatever ends the call."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

import pytest
from datapunk_nexus.limits import build_gate
from datapunk_nexus.policy import CallInfo
from datapunk_shared.config import ConcurrencyRule, RateLimitSettings
from datapunk_shared.errors import Unavailable

SEARCH = "/datapunk.lake.v1.VectorService/SearchPoints"
GET = "/datapunk.lake.v1.VectorService/GetCollection"


def gate(max_in_flight: int, max_waiting: int = 0, max_wait: float = 0.05):  # type: ignore[no-untyped-def]
    rule = ConcurrencyRule(
        methods=["/datapunk.lake.v1.VectorService/*"],
        max_in_flight=max_in_flight,
        max_waiting=max_waiting,
        max_wait=max_wait,
    )
    return build_gate(RateLimitSettings(backend="memory", concurrency=[rule]), None)


def slots_of(g, method: str = SEARCH):  # type: ignore[no-untyped-def]
    return g._concurrency.slots_for(method)[0]


async def test_many_concurrent_admits_are_bounded_and_shed_quickly() -> None:
    g = gate(max_in_flight=8)
    release = asyncio.Event()
    peak = 0
    inside = 0
    shed_reasons: set[tuple[str, bool]] = set()

    async def one() -> str:
        nonlocal peak, inside
        try:
            async with g.admit(CallInfo(SEARCH, "10.0.0.1")):
                inside += 1
                peak = max(peak, inside)
                await release.wait()
                inside -= 1
                return "ok"
        except Unavailable as exc:
            shed_reasons.add((exc.reason, exc.retry_after is not None))
            return "shed"

    tasks = [asyncio.create_task(one()) for _ in range(500)]
    # Shed calls finish without waiting for the admitted ones.
    while sum(t.done() for t in tasks) < 492:
        await asyncio.sleep(0.01)
    assert sum(t.result() == "shed" for t in tasks if t.done()) == 492
    release.set()
    results = await asyncio.gather(*tasks)
    assert results.count("ok") == 8
    assert shed_reasons == {("OVERLOADED", True)}
    assert peak == 8
    assert slots_of(g).in_flight == 0


async def test_routes_have_their_own_slots() -> None:
    g = gate(max_in_flight=1)
    async with g.admit(CallInfo(SEARCH, "ip")), g.admit(CallInfo(GET, "ip")):
        with pytest.raises(Unavailable):
            async with g.admit(CallInfo(SEARCH, "ip")):
                pass


async def test_slots_are_released_on_exceptions_and_cancellation() -> None:
    g = gate(max_in_flight=2, max_waiting=50, max_wait=30)
    with pytest.raises(RuntimeError):
        async with g.admit(CallInfo(SEARCH, "ip")):
            raise RuntimeError("handler failed")
    assert slots_of(g).in_flight == 0

    started = asyncio.Event()

    async def held() -> None:
        async with g.admit(CallInfo(SEARCH, "ip")):
            started.set()
            await asyncio.sleep(3600)

    holders = [asyncio.create_task(held()) for _ in range(2)]
    await started.wait()
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(held()) for _ in range(10)]  # queue for a slot
    await asyncio.sleep(0.01)
    assert slots_of(g).in_flight == 2
    assert slots_of(g).waiting == 10
    for task in holders + waiters:
        task.cancel()
    await asyncio.gather(*holders, *waiters, return_exceptions=True)
    assert slots_of(g).in_flight == 0
    assert slots_of(g).waiting == 0
    async with g.admit(CallInfo(SEARCH, "ip")):
        pass


async def test_bounded_wait_then_shed() -> None:
    g = gate(max_in_flight=1, max_waiting=1, max_wait=0.05)
    async with g.admit(CallInfo(SEARCH, "ip")):
        waiting = asyncio.create_task(g.admit(CallInfo(SEARCH, "ip")).__aenter__())
        await asyncio.sleep(0)
        with pytest.raises(Unavailable):  # the wait queue (1) is full
            async with g.admit(CallInfo(SEARCH, "ip")):
                pass
        with pytest.raises(Unavailable):  # the waiter gives up after max_wait
            await waiting


async def test_memory_stays_flat_under_repeated_overload() -> None:
    g = gate(max_in_flight=4)

    async def burst() -> None:
        release = asyncio.Event()

        async def one() -> None:
            try:
                async with g.admit(CallInfo(SEARCH, "ip")):
                    await release.wait()
            except Unavailable:
                pass

        tasks = [asyncio.create_task(one()) for _ in range(200)]
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(*tasks)

    tracemalloc.start()
    try:
        for _ in range(5):  # warm up: method tables, metric children, free lists
            await burst()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            await burst()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 32 * 1024, f"grew by {after - before} bytes over 4000 calls"


async def test_route_table_stays_bounded_with_caller_chosen_methods() -> None:
    rule = ConcurrencyRule(methods=["*"], max_in_flight=1)
    settings = RateLimitSettings(backend="memory", concurrency=[rule])
    g = build_gate(settings, None)
    for i in range(10_000):
        async with g.admit(CallInfo(f"/x.Y/M{i}", "ip")):
            pass
    assert len(g._concurrency._slots) <= 4096


async def test_a_freed_slot_goes_to_the_first_waiter() -> None:
    g = gate(max_in_flight=1, max_waiting=5, max_wait=30)
    order: list[int] = []

    async def one(i: int) -> None:
        async with g.admit(CallInfo(SEARCH, "ip")):
            order.append(i)

    async with g.admit(CallInfo(SEARCH, "ip")):
        waiters = [asyncio.create_task(one(i)) for i in range(3)]
        await asyncio.sleep(0.01)
        assert slots_of(g).waiting == 3
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2]
    assert slots_of(g).in_flight == 0


async def test_a_slot_handed_to_a_cancelled_waiter_is_passed_on() -> None:
    g = gate(max_in_flight=1, max_waiting=5, max_wait=30)
    holder = g.admit(CallInfo(SEARCH, "ip"))
    await holder.__aenter__()
    first = asyncio.create_task(g.admit(CallInfo(SEARCH, "ip")).__aenter__())
    second = asyncio.create_task(g.admit(CallInfo(SEARCH, "ip")).__aenter__())
    await asyncio.sleep(0.01)
    await holder.__aexit__(None, None, None)  # the slot goes to ``first``...
    first.cancel()  # ...which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)  # so ``second`` gets it
    assert slots_of(g).in_flight == 1
    assert slots_of(g).waiting == 0


async def test_a_call_matching_two_bounds_holds_nothing_when_one_sheds() -> None:
    both = [
        ConcurrencyRule(methods=[SEARCH], max_in_flight=5),
        ConcurrencyRule(methods=["*"], max_in_flight=1, per_method=False),
    ]
    g = build_gate(RateLimitSettings(backend="memory", concurrency=both), None)
    route, shared = g._concurrency.slots_for(SEARCH)
    async with g.admit(CallInfo(GET, "ip")):  # takes the shared slot
        with pytest.raises(Unavailable) as refused:
            async with g.admit(CallInfo(SEARCH, "ip")):
                pass
        assert refused.value.metadata == {"route": "concurrency rule 1", "max_in_flight": "1"}
        assert route.in_flight == 0
    assert shared.in_flight == 0
