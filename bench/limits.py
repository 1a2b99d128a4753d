"""Nexus's request policies at the policy level (no entry in front):

1. rate-limit decision latency of ``LimitsGate.admit`` — in process, and with Redis (a
   private ``redis-server`` on a free loopback port), beside a bare Redis PING (the peer:
   one round trip, the least a shared decision can cost);
2. the cache hit path (local LRU, and the shared Redis layer) against the uncached path,
   a real ``GetCollection`` call to a Lake process;
3. overload: the gate (8 calls in flight for the route) in front of the real Lake. The
   baseline is 8 closed-loop callers (the gate full, nothing shed); then open-loop load
   at 2x the Lake's measured capacity: the admitted calls' p99 against the baseline's,
   and memory (tracemalloc and RSS) across repeated overloads.

Lake calls carry what Nexus sends after its gate and cache: its service token and the
client it acts for.

``python -m bench.run limits`` or ``python bench/limits.py [--quick]``."""

from __future__ import annotations

import asyncio
import gc
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datapunk.lake.v1 import vectors_pb2 as pb
from datapunk.lake.v1 import vectors_pb2_grpc as pb_grpc
from datapunk_nexus.cache import build_cache
from datapunk_nexus.limits import build_gate
from datapunk_nexus.policy import CallInfo
from datapunk_nexus.policy_factory import command_client
from datapunk_shared.config import (
    CacheRule,
    CacheSettings,
    ConcurrencyRule,
    RateLimitRule,
    RateLimitSettings,
)
from datapunk_shared.errors import Unavailable
from redis.asyncio import Redis

from bench.common import (
    Authed,
    Bar,
    Result,
    closed_engines,
    free_port,
    main_with_quick,
    running_lake,
    service_metadata,
    stop_process,
    summarize_latencies,
    wait_until,
)

NAME = "limits"
DESCRIPTION = "rate-limit decisions (in process, Redis), cache hit vs Lake call, overload at 2x"

GET = "/datapunk.lake.v1.VectorService/GetCollection"
COLLECTION = "collections/bench"
CAPACITY_IN_FLIGHT = 8


def _start_redis(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(work)),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"

    def answers() -> bool:
        done = subprocess.run(
            ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True, check=False
        )
        return done.stdout.strip() == "PONG"

    wait_until(answers, timeout=20, what="redis-server")
    return process, url


async def _timed(n: int, op: Callable[[int], Awaitable[Any]]) -> list[float]:
    latencies = []
    for i in range(n):
        started = time.perf_counter()
        await op(i)
        latencies.append(time.perf_counter() - started)
    return latencies


async def _qps(concurrency: int, seconds: float, op: Callable[[], Awaitable[Any]]) -> float:
    count = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < stop_at:
            await op()
            count += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


# -- 1. decisions ------------------------------------------------------------------------


async def _decisions(redis_url: str, n: int) -> dict[str, dict[str, float]]:
    rule = RateLimitRule(name="bench", key="caller", rate=1_000_000, period=1, burst=1_000_000)
    memory = build_gate(RateLimitSettings(backend="memory", rules=[rule]), None)
    client = command_client(redis_url, 1.0)
    try:
        shared = build_gate(
            RateLimitSettings(backend="redis", rules=[rule], redis_timeout=1.0), client
        )
        calls = [CallInfo(GET, f"10.0.{i % 250}.{i % 7}", f"user-{i % 1000}") for i in range(n)]

        async def admit_memory(i: int) -> None:
            async with memory.admit(calls[i]):
                pass

        async def admit_redis(i: int) -> None:
            async with shared.admit(calls[i]):
                pass

        async def ping(i: int) -> None:
            await client.ping()

        await _timed(min(n, 2000), admit_redis)  # warm up: script load, connection
        await _timed(min(n, 2000), admit_memory)
        return {
            "memory": summarize_latencies(await _timed(n, admit_memory)),
            "redis": summarize_latencies(await _timed(n, admit_redis)),
            "redis_ping": summarize_latencies(await _timed(n, ping)),
        }
    finally:
        await client.aclose()


# -- 2. cache hit vs the Lake -------------------------------------------------------------


async def _cache(redis_url: str, lake: str, seconds: float) -> dict[str, float]:
    settings = CacheSettings(backend="redis", rules=[CacheRule(methods=[GET], ttl=600)])
    client = command_client(redis_url, 1.0)
    listener = Redis.from_url(redis_url, socket_timeout=None)
    cache, subscriber = build_cache(settings, client, listener)
    assert subscriber is not None
    subscriber.start()
    try:
        assert await subscriber.wait_subscribed(10)
        request = pb.GetCollectionRequest(name=COLLECTION)
        call = CallInfo(GET, "10.0.0.1", "alice", request=request.SerializeToString())
        async with grpc.aio.insecure_channel(lake) as channel:
            stub = Authed(pb_grpc.VectorServiceStub(channel), service_metadata())  # type: ignore[no-untyped-call]
            answer = (await stub.GetCollection(request, timeout=10)).SerializeToString()
            assert await cache.get(call) is None
            await cache.put(call, answer)

            async def uncached() -> None:
                await stub.GetCollection(request, timeout=10)

            async def hit() -> None:
                assert await cache.get(call) is not None

            async def redis_hit() -> None:
                cache.set_local_usable(False)  # as if the LRU were cold: Redis answers
                assert await cache.get(call) is not None

            out = {}
            for _ in range(2):  # alternate, keep the second round
                out["uncached_qps"] = await _qps(16, seconds, uncached)
                cache.set_local_usable(True)
                out["local_hit_qps"] = await _qps(16, seconds, hit)
                out["redis_hit_qps"] = await _qps(16, seconds, redis_hit)
                cache.set_local_usable(True)
            return out
    finally:
        await subscriber.stop()
        await listener.aclose()
        await client.aclose()


# -- 3. overload ------------------------------------------------------------------------


async def _open_loop(
    rate: float, seconds: float, call: Callable[[], Awaitable[str]]
) -> tuple[list[float], int, int]:
    """Start calls at ``rate`` per second for ``seconds``; returns the admitted calls'
    latencies, the shed count, and the largest number of calls alive at once."""
    latencies: list[float] = []
    shed = 0
    alive = 0
    peak = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        nonlocal shed, alive, peak
        alive += 1
        peak = max(peak, alive)
        started = time.perf_counter()
        try:
            if await call() == "ok":
                latencies.append(time.perf_counter() - started)
            else:
                shed += 1
        finally:
            alive -= 1

    tick = 0.002
    started = time.perf_counter()
    sent = 0
    while (now := time.perf_counter()) - started < seconds:
        due = int((now - started) * rate) - sent
        for _ in range(due):
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        sent += max(due, 0)
        await asyncio.sleep(tick)
    await asyncio.gather(*tasks)
    return latencies, shed, peak


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _overload(lake: str, seconds: float) -> dict[str, Any]:
    rule = ConcurrencyRule(methods=[GET], max_in_flight=CAPACITY_IN_FLIGHT, max_waiting=0)
    gate = build_gate(RateLimitSettings(backend="memory", concurrency=[rule]), None)
    request = pb.GetCollectionRequest(name=COLLECTION)
    info = CallInfo(GET, "10.0.0.1", "alice")
    async with grpc.aio.insecure_channel(lake) as channel:
        stub = Authed(pb_grpc.VectorServiceStub(channel), service_metadata())  # type: ignore[no-untyped-call]

        async def through_gate() -> str:
            try:
                async with gate.admit(info):
                    await stub.GetCollection(request, timeout=10)
                return "ok"
            except Unavailable:
                return "shed"

        async def direct() -> None:
            await stub.GetCollection(request, timeout=10)

        capacity = await _qps(CAPACITY_IN_FLIGHT, seconds, direct)
        # The baseline: as many closed-loop callers as the route has slots, so the gate
        # is full but never sheds.
        unloaded: list[float] = []
        unloaded_shed = 0
        stop_at = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal unloaded_shed
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                if await through_gate() == "ok":
                    unloaded.append(time.perf_counter() - started)
                else:
                    unloaded_shed += 1

        await asyncio.gather(*(caller() for _ in range(CAPACITY_IN_FLIGHT)))
        half, _, _ = await _open_loop(0.5 * capacity, seconds, through_gate)
        await _open_loop(2 * capacity, seconds / 2, through_gate)  # warm up the overload path
        gc.collect()
        tracemalloc.start()
        rss_before = _rss_kib()
        traced_before = tracemalloc.get_traced_memory()[0]
        # Latency lists are summarized and dropped before each reading, so that the
        # benchmark's own bookkeeping is not counted as growth.
        overloaded, shed, peak = await _open_loop(2 * capacity, seconds, through_gate)
        admitted = len(overloaded)
        first = summarize_latencies(overloaded)
        del overloaded
        gc.collect()
        traced_mid = tracemalloc.get_traced_memory()[0]
        again, shed_again, _ = await _open_loop(2 * capacity, seconds, through_gate)
        admitted += len(again)
        second = summarize_latencies(again)
        del again
        gc.collect()
        traced_after = tracemalloc.get_traced_memory()[0]
        rss_after = _rss_kib()
        tracemalloc.stop()
    return {
        "capacity_qps": capacity,
        "unloaded": summarize_latencies(unloaded),
        "unloaded_admitted": len(unloaded),
        "unloaded_shed": unloaded_shed,
        "open_loop_half": summarize_latencies(half),
        # The worse of the two overload runs.
        "overloaded": max(first, second, key=lambda summary: summary["p99_us"]),
        "overloaded_admitted": admitted,
        "overloaded_shed": shed + shed_again,
        "overloaded_peak_alive": peak,
        "traced_growth_bytes": traced_after - traced_mid,
        "traced_first_overload_bytes": traced_mid - traced_before,
        "rss_growth_kib": rss_after - rss_before,
    }


def run(quick: bool = False) -> Result:
    n = 5_000 if quick else 20_000
    seconds = 2.0 if quick else 5.0
    work = Path(tempfile.mkdtemp(prefix="bench-limits-"))
    redis: subprocess.Popen[bytes] | None = None
    try:
        redis, redis_url = _start_redis(work)
        # GetCollection needs the vector store only; the other engines point at closed
        # ports rather than at someone's stack.
        with running_lake(work, closed_engines("postgres", "questdb")) as lake_address:
            with grpc.insecure_channel(lake_address) as channel:
                setup = Authed(pb_grpc.VectorServiceStub(channel), service_metadata())  # type: ignore[no-untyped-call]
                setup.CreateCollection(
                    pb.CreateCollectionRequest(
                        collection_id="bench",
                        collection=pb.Collection(vector_size=4, distance=pb.DISTANCE_COSINE),
                    ),
                    timeout=30,
                )
            decisions = asyncio.run(_decisions(redis_url, n))
            cache = asyncio.run(_cache(redis_url, lake_address, seconds))
            overload = asyncio.run(_overload(lake_address, seconds))
    finally:
        if redis is not None:
            stop_process(redis)
        shutil.rmtree(work, ignore_errors=True)

    mem, red, ping = decisions["memory"], decisions["redis"], decisions["redis_ping"]
    rows: list[list[Any]] = [
        ["decision, in process", "p50/p99 us", mem["p50_us"], mem["p99_us"]],
        ["decision, Redis (Lua GCRA)", "p50/p99 us", red["p50_us"], red["p99_us"]],
        ["peer: Redis PING", "p50/p99 us", ping["p50_us"], ping["p99_us"]],
        ["Lake GetCollection (uncached)", "QPS, 16 in flight", cache["uncached_qps"], ""],
        ["cache hit, local LRU", "QPS, 16 in flight", cache["local_hit_qps"], ""],
        ["cache hit, Redis layer", "QPS, 16 in flight", cache["redis_hit_qps"], ""],
        ["Lake capacity, 8 in flight", "QPS", overload["capacity_qps"], ""],
        ["gate full, 8 closed-loop callers", "p50/p99 us", overload["unloaded"]["p50_us"],
         overload["unloaded"]["p99_us"]],
        ["gate, open loop at 0.5x capacity", "p50/p99 us",
         overload["open_loop_half"]["p50_us"], overload["open_loop_half"]["p99_us"]],
        ["gate at 2x capacity, admitted", "p50/p99 us", overload["overloaded"]["p50_us"],
         overload["overloaded"]["p99_us"]],
    ]  # fmt: skip
    p99_ratio = overload["overloaded"]["p99_us"] / overload["unloaded"]["p99_us"]
    hit_ratio = cache["local_hit_qps"] / cache["uncached_qps"]
    bars = [
        Bar("rate-limit decision p99, in process", mem["p99_us"] / 1000, 0.2, "<=", " ms"),
        Bar("rate-limit decision p99, Redis", red["p99_us"] / 1000, 1.0, "<=", " ms"),
        Bar("cache hit QPS / uncached Lake QPS", hit_ratio, 3.0, ">="),
        Bar("admitted p99 at 2x capacity / p99 at capacity", p99_ratio, 2.0, "<="),
        Bar(
            "memory growth over a repeated 2x overload (traced)",
            overload["traced_growth_bytes"] / 1024,
            256.0,
            "<=",
            " KiB",
        ),
    ]
    notes = [
        f"overload: {overload['overloaded_admitted']} admitted, "
        f"{overload['overloaded_shed']} shed at once (UNAVAILABLE); at most "
        f"{overload['overloaded_peak_alive']} calls alive; baseline: "
        f"{overload['unloaded_shed']} shed",
        f"memory across the second 2x overload: traced {overload['traced_growth_bytes']} B, "
        f"RSS {overload['rss_growth_kib']} KiB over both (RSS includes the allocator's slack)",
        f"cache hits served by Redis (cold LRU): "
        f"{cache['redis_hit_qps'] / cache['uncached_qps']:.2f}x the uncached QPS",
        "load generator and gate share one Python process and loop (the Lake and Redis are "
        "separate processes): latencies include the generator's own work",
    ]
    return Result(
        name=NAME,
        description=DESCRIPTION,
        columns=["path", "measure", "value", "p99 us"],
        rows=rows,
        bars=bars,
        details={"decisions": decisions, "cache": cache, "overload": overload, "calls": n},
        notes=notes,
    )


def main(argv: list[str] | None = None) -> int:
    return main_with_quick(run, DESCRIPTION, "shorter runs", argv)


if __name__ == "__main__":
    sys.exit(main())
