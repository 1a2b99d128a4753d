"""Nexus's request policies, at the policy level and through the gRPC entry:

1. rate-limit decision latency of ``LimitsGate.admit`` — in process, and with Redis (a
   private ``redis-server`` on a free loopback port), beside a bare Redis PING (the peer:
   one round trip, the least a shared decision can cost);
2. the cache hit path (local LRU, and the shared Redis layer) against the uncached path,
   a real ``GetCollection`` call to a Lake process;
3. overload at the gate: the gate (8 calls in flight for the route, no wait queue) in
   front of the real Lake, loaded from this process. Each round measures the capacity
   (8 closed-loop callers: the gate full, nothing shed) and its p99, then open-loop load
   at 2x that capacity: the admitted calls' p99 against the round's baseline; the median
   of the per-round ratios is the result (the machine is shared, so both sides of a ratio
   are measured back to back). Then memory (tracemalloc and RSS) across two more
   overloads — tracemalloc slows every allocation, so it is never on while latency is
   measured;
4. overload through the entry, as in production: a ``datapunk-nexus`` process whose gRPC
   entry forwards to a Lake and a Stream, with one route bounded to 8 calls in flight,
   loaded by ghz (not ours) with the bootstrap administrator's API key: closed loop with
   8 workers (capacity and its p99), then ``--rps`` at 2x that capacity with ``--async``
   (open loop); rounds and medians as in 3. Two routes: a slow backend (the Stream's
   public ``StatusService/GetStatus`` refreshing a probe of a Redis that never answers,
   so each call takes the 50 ms probe timeout and little CPU: the route's capacity is
   its bound), and a cheap call (the Lake's ``GetStatus`` answered from memory: the
   capacity is Nexus's own CPU, calls queue in Nexus before they reach the gate). The
   Nexus's CPU per call and its RSS across one more overload are reported.

Lake calls carry what Nexus sends after its gate and cache: its service token and the
client it acts for.

``python -m bench.run limits`` or ``python bench/limits.py [--quick]``."""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datapunk.lake.v1 import status_pb2, status_pb2_grpc
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

from bench.bare_server import bare_server_process
from bench.common import (
    BIN,
    Authed,
    Bar,
    Result,
    api_key_metadata,
    auth_env,
    clean_env,
    closed_engines,
    free_port,
    main_with_quick,
    median,
    process_cpu_seconds,
    require_file,
    running_lake,
    service_metadata,
    start_logged,
    stop_process,
    summarize_latencies,
    temporary_database,
    wait_grpc,
    wait_until,
)
from bench.load import GHZ, PROTOSET

NAME = "limits"
DESCRIPTION = (
    "rate-limit decisions (in process, Redis), cache hit vs Lake call, "
    "overload at 2x (gate; gRPC entry under ghz)"
)

GET = "/datapunk.lake.v1.VectorService/GetCollection"
COLLECTION = "collections/bench"
CAPACITY_IN_FLIGHT = 8
CHEAP_CALL: tuple[str, dict[str, Any]] = ("datapunk.lake.v1.StatusService/GetStatus", {})
"""A call the Lake answers from memory: Nexus's own work is most of its cost."""
BACKEND_SECONDS = 0.05
SLOW_CALL: tuple[str, dict[str, Any]] = (
    "datapunk.stream.v1.StatusService/GetStatus",
    {"refresh": True, "engines": ["redis"], "probeTimeout": f"{BACKEND_SECONDS}s"},
)
"""A call whose backend takes ``BACKEND_SECONDS`` and little CPU: a Stream probing a Redis
that accepts connections and never answers waits for its probe's timeout."""

status_grpc: Any = status_pb2_grpc  # generated stubs are untyped

# When its duration is up ghz closes its connection under the calls still in flight; those
# fail with this message (or as Canceled), ghz's own artefact, not a server error.
_GHZ_CUT_OFF = "use of closed network connection"
# What grpc.aio answers past ``maximum_concurrent_rpcs`` (RESOURCE_EXHAUSTED).
_GRPC_LIMIT = "Concurrent RPC limit exceeded"


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


def _rss_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _overload(lake: str, seconds: float, rounds: int) -> dict[str, Any]:
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

        async def at_capacity() -> tuple[list[float], float, int]:
            """As many closed-loop callers as the route has slots: the gate is full but
            never sheds. Returns the latencies, the QPS (the capacity) and the shed count."""
            latencies: list[float] = []
            shed = 0
            started = time.perf_counter()
            stop_at = started + seconds

            async def caller() -> None:
                nonlocal shed
                while time.perf_counter() < stop_at:
                    began = time.perf_counter()
                    if await through_gate() == "ok":
                        latencies.append(time.perf_counter() - began)
                    else:
                        shed += 1

            await asyncio.gather(*(caller() for _ in range(CAPACITY_IN_FLIGHT)))
            return latencies, len(latencies) / (time.perf_counter() - started), shed

        await at_capacity()  # warm up: connection, handler caches, the overload path
        _, capacity, _ = await at_capacity()
        await _open_loop(2 * capacity, seconds / 2, through_gate)
        half, _, _ = await _open_loop(0.5 * capacity, seconds, through_gate)
        # Rounds: the capacity and its p99, then 2x that capacity at once, so the two
        # sides see the same machine (other work on it moves both); tracemalloc is off,
        # since it hooks every allocation and would slow only the side it covers.
        measured: list[dict[str, Any]] = []
        for _ in range(rounds):
            base, capacity, base_shed = await at_capacity()
            over, shed, peak = await _open_loop(2 * capacity, seconds, through_gate)
            base_summary, over_summary = summarize_latencies(base), summarize_latencies(over)
            measured.append(
                {
                    "capacity_qps": capacity,
                    "at_capacity": base_summary,
                    "at_capacity_shed": base_shed,
                    "overloaded": over_summary,
                    "admitted": len(over),
                    "shed": shed,
                    "peak_alive": peak,
                    "p99_ratio": over_summary["p99_us"] / base_summary["p99_us"],
                }
            )
        # Then memory, over two more overloads: traced growth across the second one.
        # Latency lists are dropped before each reading, so that the benchmark's own
        # bookkeeping is not counted as growth.
        gc.collect()
        tracemalloc.start()
        rss_before = _rss_kib()
        traced_before = tracemalloc.get_traced_memory()[0]
        await _open_loop(2 * capacity, seconds, through_gate)
        gc.collect()
        traced_mid = tracemalloc.get_traced_memory()[0]
        await _open_loop(2 * capacity, seconds, through_gate)
        gc.collect()
        traced_after = tracemalloc.get_traced_memory()[0]
        rss_after = _rss_kib()
        tracemalloc.stop()
    return {
        "rounds": measured,
        "p99_ratio": median([r["p99_ratio"] for r in measured]),
        "open_loop_half": summarize_latencies(half),
        "traced_growth_bytes": traced_after - traced_mid,
        "traced_first_overload_bytes": traced_mid - traced_before,
        "rss_growth_kib": rss_after - rss_before,
    }


# -- 4. overload through Nexus's gRPC entry, loaded by ghz ------------------------------


@contextmanager
def _blackhole() -> Iterator[int]:
    """A loopback port that accepts connections (the kernel does) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


@contextmanager
def _slow_stream(workdir: Path) -> Iterator[str]:
    """A ``datapunk-stream`` whose Redis never answers: a refreshed GetStatus of its Redis
    takes the probe timeout the caller asks for."""
    with _blackhole() as hole:
        port = free_port()
        env = clean_env()
        env.update(closed_engines("postgres", "questdb", "kafka", "mqtt"))
        env.update(auth_env())
        env["DATAPUNK_ENGINES__REDIS__URL"] = f"redis://127.0.0.1:{hole}/0"
        env["DATAPUNK_STREAM__PORT"] = str(port)
        env["DATAPUNK_STREAM__METRICS_PORT"] = str(free_port())
        log = workdir / "stream.log"
        process = start_logged([str(BIN / "datapunk-stream")], env=env, log=log, cwd=workdir)
        try:
            wait_grpc(process, f"127.0.0.1:{port}", what="the Stream", log=log)
            yield f"127.0.0.1:{port}"
        finally:
            stop_process(process)


@contextmanager
def _gated_nexus(workdir: Path, backends: dict[str, str], method: str) -> Iterator[tuple[int, int]]:
    """A ``datapunk-nexus`` whose gRPC entry forwards to ``backends`` with the route of
    ``method`` bounded to ``CAPACITY_IN_FLIGHT`` calls (no wait queue, rate limits in
    process); its keys in a temporary database. Yields the entry's port and the process
    id."""
    with temporary_database() as database:
        port = free_port()
        env = clean_env()
        env.update(closed_engines("questdb", "redis"))
        env.update(auth_env())
        bound = {"methods": ["/" + method], "max_in_flight": CAPACITY_IN_FLIGHT}
        env.update(
            {
                "DATAPUNK_LOG__LEVEL": "INFO",
                "DATAPUNK_ENGINES__POSTGRES__URL": database,
                "DATAPUNK_NEXUS__PORT": str(free_port()),
                "DATAPUNK_NEXUS__METRICS_PORT": str(free_port()),
                "DATAPUNK_NEXUS__REST__PORT": str(free_port()),
                "DATAPUNK_NEXUS__GRPC_ENTRY__PORT": str(port),
                "DATAPUNK_NEXUS__BACKENDS": json.dumps(backends),
                "DATAPUNK_NEXUS__RATE_LIMITS__BACKEND": "memory",
                "DATAPUNK_NEXUS__RATE_LIMITS__CONCURRENCY": json.dumps([bound]),
            }
        )
        log = workdir / "nexus.log"
        process = start_logged([str(BIN / "datapunk-nexus")], env=env, log=log, cwd=workdir)
        try:

            def probe(channel: grpc.Channel) -> None:
                status_grpc.StatusServiceStub(channel).GetStatus(
                    status_pb2.GetStatusRequest(), timeout=1.0, metadata=api_key_metadata()
                )

            wait_grpc(process, f"127.0.0.1:{port}", what="the Nexus entry", probe=probe, log=log)
            yield port, process.pid
        finally:
            stop_process(process)


@contextmanager
def _limited_bare_server(workdir: Path, lake_address: str) -> Iterator[tuple[int, int]]:
    """The reference for the cheap call's overload: ``bench/bare_server.py`` answering the
    Lake's GetStatus with the Lake's own answer (its bytes, recorded once), bounded by
    grpc.aio's own ``maximum_concurrent_rpcs`` to ``CAPACITY_IN_FLIGHT``: what shedding
    costs when grpc.aio itself does it, with no Python handler at all for a shed call.
    Yields its port and process id."""
    method = "/" + CHEAP_CALL[0]
    with grpc.insecure_channel(lake_address) as channel:
        call: Any = channel.unary_unary(method)  # bytes in, bytes out
        answer: bytes = call(b"", timeout=5.0, metadata=service_metadata())
    with bare_server_process(
        method, answer, workdir, max_concurrent_rpcs=CAPACITY_IN_FLIGHT
    ) as running:
        yield running


def _ghz_calls(
    port: int,
    call: tuple[str, dict[str, Any]],
    seconds: float,
    *,
    concurrency: int,
    rps: float = 0,
) -> dict[str, Any]:
    """ghz making ``call`` (method, proto3 JSON request) on the entry for ``seconds``:
    closed loop with ``concurrency`` workers, or, with ``rps``, open loop (``--async``: a
    call starts on schedule whatever is in flight). Every call is in ghz's report; the
    admitted ones (OK) give the latencies, the shed ones are UNAVAILABLE with the gate's
    message."""
    method, data = call
    with tempfile.TemporaryDirectory(prefix="bench-ghz-") as private:
        # The API key goes in a file of this user's, not on a command line anyone can read.
        headers = Path(private) / "metadata.json"
        headers.write_text(json.dumps(dict(api_key_metadata())))
        command = [
            *(str(GHZ), "--insecure", "--protoset", str(PROTOSET)),
            *("--metadata-file", str(headers), "--call", method, "--data", json.dumps(data)),
            *("--concurrency", str(concurrency), "--connections", "1"),
            *("--duration", f"{seconds}s", "--timeout", "10s", "--format", "json"),
            *(("--rps", str(max(1, round(rps))), "--async") if rps else ()),
            f"127.0.0.1:{port}",
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if not done.stdout.strip():
        raise RuntimeError(f"ghz failed ({done.returncode}): {done.stderr.strip()}")
    report = json.loads(done.stdout)
    admitted: list[float] = []
    shed = other = 0
    for one in report.get("details") or []:
        if one["status"] == "OK":
            admitted.append(one["latency"] / 1e9)
        elif one["status"] == "Unavailable" and "concurrent calls" in one["error"]:
            shed += 1
        elif one["status"] == "ResourceExhausted" and _GRPC_LIMIT in one["error"]:
            shed += 1  # the reference server's own limit (grpc.aio's maximum_concurrent_rpcs)
        elif _GHZ_CUT_OFF not in one["error"] and one["status"] != "Canceled":
            other += 1
    return {
        "latencies": admitted,
        "qps": len(admitted) / (report["total"] / 1e9),
        "shed": shed,
        "errors": other,
    }


def _entry_overload(
    port: int, pid: int, call: tuple[str, dict[str, Any]], seconds: float, rounds: int
) -> dict[str, Any]:
    _ghz_calls(port, call, seconds, concurrency=CAPACITY_IN_FLIGHT)  # warm up
    measured: list[dict[str, Any]] = []
    for _ in range(rounds):
        cpu_before = process_cpu_seconds(pid)
        base = _ghz_calls(port, call, seconds, concurrency=CAPACITY_IN_FLIGHT)
        cpu_mid = process_cpu_seconds(pid)
        # Enough workers that a worker is free whenever a call is due.
        over = _ghz_calls(port, call, seconds, concurrency=64, rps=2 * base["qps"])
        cpu_after = process_cpu_seconds(pid)
        base_summary = summarize_latencies(base["latencies"])
        over_summary = summarize_latencies(over["latencies"])
        calls = len(over["latencies"]) + over["shed"]
        measured.append(
            {
                "capacity_qps": base["qps"],
                "at_capacity": base_summary,
                "at_capacity_shed": base["shed"],
                "overloaded": over_summary,
                "admitted": len(over["latencies"]),
                "shed": over["shed"],
                "errors": base["errors"] + over["errors"],
                "p99_ratio": over_summary["p99_us"] / base_summary["p99_us"],
                "nexus_cpu_us_per_call_at_capacity": (cpu_mid - cpu_before)
                / max(len(base["latencies"]), 1)
                * 1e6,
                "nexus_cpu_us_per_call_overloaded": (cpu_after - cpu_mid) / max(calls, 1) * 1e6,
            }
        )
    rss_before = _rss_kib(pid)
    _ghz_calls(port, call, seconds, concurrency=64, rps=2 * measured[-1]["capacity_qps"])
    rss_after = _rss_kib(pid)
    return {
        "rounds": measured,
        "p99_ratio": median([r["p99_ratio"] for r in measured]),
        "nexus_rss_growth_kib": rss_after - rss_before,
    }


def _median_summary(rounds: list[dict[str, Any]], key: str) -> dict[str, float]:
    return {q: median([r[key][q] for r in rounds]) for q in ("p50_us", "p99_us")}


def _entry_rows(label: str, entry: dict[str, Any], server: str = "entry") -> list[list[Any]]:
    base = _median_summary(entry["rounds"], "at_capacity")
    over = _median_summary(entry["rounds"], "overloaded")
    capacity = median([r["capacity_qps"] for r in entry["rounds"]])
    return [
        [f"{server}, {label}: capacity, 8 in flight", "QPS", capacity, ""],
        [f"{server}, {label}: at capacity", "p50/p99 us", base["p50_us"], base["p99_us"]],
        [f"{server}, {label}: 2x capacity, admitted", "p50/p99 us",
         over["p50_us"], over["p99_us"]],
    ]  # fmt: skip


def _entry_note(label: str, entry: dict[str, Any]) -> str:
    rounds = entry["rounds"]
    at_capacity = median([r["nexus_cpu_us_per_call_at_capacity"] for r in rounds])
    overloaded = median([r["nexus_cpu_us_per_call_overloaded"] for r in rounds])
    return (
        f"entry, {label}, at 2x: {sum(r['admitted'] for r in rounds)} admitted, "
        f"{sum(r['shed'] for r in rounds)} shed (UNAVAILABLE, OVERLOADED), "
        f"{sum(r['errors'] for r in rounds)} other errors; per-round p99 ratios "
        + ", ".join(f"{r['p99_ratio']:.2f}" for r in rounds)
        + f"; Nexus CPU per call {at_capacity:.0f} us at capacity, {overloaded:.0f} us per "
        f"call (admitted or shed) at 2x; Nexus RSS across one more 2x overload "
        f"{entry['nexus_rss_growth_kib']} KiB"
    )


def run(quick: bool = False) -> Result:
    require_file(GHZ, "scripts/install-tools.sh")
    require_file(PROTOSET, "scripts/gen.sh")
    n = 5_000 if quick else 20_000
    seconds = 2.0 if quick else 5.0
    round_seconds = 2.0 if quick else 3.0
    rounds = 2 if quick else 5
    work = Path(tempfile.mkdtemp(prefix="bench-limits-"))
    redis: subprocess.Popen[bytes] | None = None
    try:
        redis, redis_url = _start_redis(work)
        # GetCollection needs the vector store only; the other engines point at closed
        # ports rather than at someone's stack.
        with (
            running_lake(work, closed_engines("postgres", "questdb")) as lake_address,
            _slow_stream(work) as stream_address,
        ):
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
            overload = asyncio.run(_overload(lake_address, round_seconds, rounds))
            backends = {"lake": lake_address, "stream": stream_address}
            entries = {}
            for label, call in (("slow backend", SLOW_CALL), ("cheap call", CHEAP_CALL)):
                with _gated_nexus(work, backends, call[0]) as (port, pid):
                    entries[label] = _entry_overload(port, pid, call, round_seconds, rounds)
            with _limited_bare_server(work, lake_address) as (port, pid):
                reference = _entry_overload(port, pid, CHEAP_CALL, round_seconds, rounds)
    finally:
        if redis is not None:
            stop_process(redis)
        shutil.rmtree(work, ignore_errors=True)

    mem, red, ping = decisions["memory"], decisions["redis"], decisions["redis_ping"]
    gate_base = _median_summary(overload["rounds"], "at_capacity")
    gate_over = _median_summary(overload["rounds"], "overloaded")
    gate_capacity = median([r["capacity_qps"] for r in overload["rounds"]])
    slow, cheap = entries["slow backend"], entries["cheap call"]
    rows: list[list[Any]] = [
        ["decision, in process", "p50/p99 us", mem["p50_us"], mem["p99_us"]],
        ["decision, Redis (Lua GCRA)", "p50/p99 us", red["p50_us"], red["p99_us"]],
        ["peer: Redis PING", "p50/p99 us", ping["p50_us"], ping["p99_us"]],
        ["Lake GetCollection (uncached)", "QPS, 16 in flight", cache["uncached_qps"], ""],
        ["cache hit, local LRU", "QPS, 16 in flight", cache["local_hit_qps"], ""],
        ["cache hit, Redis layer", "QPS, 16 in flight", cache["redis_hit_qps"], ""],
        ["gate: capacity, 8 closed-loop callers", "QPS", gate_capacity, ""],
        ["gate: at capacity (gate full)", "p50/p99 us", gate_base["p50_us"], gate_base["p99_us"]],
        ["gate: open loop at 0.5x capacity", "p50/p99 us",
         overload["open_loop_half"]["p50_us"], overload["open_loop_half"]["p99_us"]],
        ["gate: 2x capacity, admitted", "p50/p99 us", gate_over["p50_us"], gate_over["p99_us"]],
        *_entry_rows("slow backend", slow),
        *_entry_rows("cheap call", cheap),
        *_entry_rows("cheap call", reference, "reference: bare grpc.aio server, own limit 8"),
    ]  # fmt: skip
    hit_ratio = cache["local_hit_qps"] / cache["uncached_qps"]
    bars = [
        Bar("rate-limit decision p99, in process", mem["p99_us"] / 1000, 0.2, "<=", " ms"),
        Bar("rate-limit decision p99, Redis", red["p99_us"] / 1000, 1.0, "<=", " ms"),
        Bar("cache hit QPS / uncached Lake QPS", hit_ratio, 3.0, ">="),
        Bar(
            "gate: admitted p99 at 2x capacity / p99 at capacity",
            overload["p99_ratio"],
            2.0,
            "<=",
        ),
        Bar(
            "entry (ghz), slow backend: admitted p99 at 2x capacity / p99 at capacity",
            slow["p99_ratio"],
            2.0,
            "<=",
        ),
        Bar(
            "entry (ghz), cheap call: admitted p99 at 2x capacity / p99 at capacity",
            cheap["p99_ratio"],
            2.0,
            "<=",
        ),
        Bar(
            "memory growth over a repeated 2x overload (traced)",
            overload["traced_growth_bytes"] / 1024,
            256.0,
            "<=",
            " KiB",
        ),
    ]
    gate_rounds = overload["rounds"]
    notes = [
        "p99 ratios: per round (capacity and its p99, then 2x that capacity at once), "
        "median over rounds",
        f"gate at 2x: {sum(r['admitted'] for r in gate_rounds)} admitted, "
        f"{sum(r['shed'] for r in gate_rounds)} shed at once (UNAVAILABLE), at most "
        f"{max(r['peak_alive'] for r in gate_rounds)} calls alive; at capacity "
        f"{sum(r['at_capacity_shed'] for r in gate_rounds)} shed; per-round p99 ratios "
        + ", ".join(f"{r['p99_ratio']:.2f}" for r in gate_rounds),
        _entry_note("slow backend", slow),
        _entry_note("cheap call", cheap),
        f"reference (not a bar): a bare grpc.aio server answering the cheap call with the "
        f"Lake's recorded answer, bounded by grpc.aio's own maximum_concurrent_rpcs="
        f"{CAPACITY_IN_FLIGHT} (a shed call never reaches a Python handler), same ghz protocol: "
        f"admitted p99 at 2x / p99 at capacity {reference['p99_ratio']:.1f} (per round "
        + ", ".join(f"{r['p99_ratio']:.1f}" for r in reference["rounds"])
        + "). When the calls are cheap, capacity is the server's CPU, and receiving a call "
        "costs grpc.aio about as much as answering it, so shedding at 2x cannot keep the "
        "admitted calls' latency near the unloaded one, in Nexus or without it",
        f"memory across the second 2x overload of the gate: traced "
        f"{overload['traced_growth_bytes']} B, RSS {overload['rss_growth_kib']} KiB over both "
        "(RSS includes the allocator's slack)",
        f"cache hits served by Redis (cold LRU): "
        f"{cache['redis_hit_qps'] / cache['uncached_qps']:.2f}x the uncached QPS",
        "gate rows: the load generator and the gate share one Python process and loop (the "
        "Lake and Redis are separate processes); entry rows: ghz, Nexus and the backend are "
        "separate processes",
    ]
    return Result(
        name=NAME,
        description=DESCRIPTION,
        columns=["path", "measure", "value", "p99 us"],
        rows=rows,
        bars=bars,
        details={
            "decisions": decisions,
            "cache": cache,
            "overload": overload,
            "entry_overload": entries,
            "reference_overload": reference,
            "calls": n,
        },
        notes=notes,
    )


def main(argv: list[str] | None = None) -> int:
    return main_with_quick(run, DESCRIPTION, "shorter runs", argv)


if __name__ == "__main__":
    sys.exit(main())
