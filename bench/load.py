"""Closed-loop load generators: for a unary gRPC method ghz (Go, a client we did not
write) and a ``grpc.aio`` Python client, each keeping N calls in flight on one connection
for a given time; for an HTTP GET, wrk (C, a client we did not write). They report what
they measured; what a benchmark makes of it (QPS over which time, CPU per call) stays in
the benchmark."""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.common import REPO_ROOT, Metadata

__all__ = [
    "GHZ",
    "PROTOSET",
    "GhzRun",
    "PythonRun",
    "UnaryMethod",
    "WrkRun",
    "python_load",
    "run_ghz",
    "run_wrk",
]

GHZ = REPO_ROOT / "build" / "tools" / "bin" / "ghz"
PROTOSET = REPO_ROOT / "gen" / "descriptors" / "datapunk.binpb"

# When its duration is up ghz closes its connection under the calls still in flight (at
# most one per worker); those fail with one of these messages (the second when ghz
# cancels a call it had not yet sent; the third, rarely, when the close meets a call
# being started: gRPC-Go's ErrConnClosing), ghz's own artefact, not a server error.
_CUT_OFF = (
    "use of closed network connection",
    "grpc: the client connection is closing",
    "transport is closing",
)


@dataclass(frozen=True)
class GhzRun:
    """What one ghz run reported."""

    ok: int
    errors: int
    """Failed calls, not counting the ones ghz cut off itself when its time was up."""
    seconds: float
    """ghz's own total time of the run."""
    latency_us: dict[int, float]
    """Latency percentiles by percentage (10, 25, 50, 75, 90, 95, 99), microseconds."""
    latencies: tuple[float, ...] = ()
    """Seconds, one per call that succeeded, in the order they were made (the calls
    ``skip_first`` left out not included), for percentiles computed as the benchmark
    computes its peer's."""
    error_messages: dict[str, int] = field(default_factory=dict)
    """The counted errors by ghz's message (status and details), for the report."""

    def percentile_us(self, q: int) -> float:
        return self.latency_us.get(q, math.nan)


def run_ghz(
    port: int,
    method: str,
    *,
    concurrency: int,
    seconds: float | None = None,
    total: int | None = None,
    skip_first: int = 0,
    protoset: Path | None = PROTOSET,
    metadata: Metadata = (),
    data: Any = None,
) -> GhzRun:
    """ghz calling ``method`` with ``data`` (proto3 JSON of the request; ``{}`` when None)
    and ``metadata`` on 127.0.0.1:``port`` for ``seconds``, or for ``total`` calls, with
    ``concurrency`` workers on one connection; the schema from ``protoset``, or from server
    reflection when that is None.

    ``data`` may be a list of requests: ghz sends them in turn, the n-th call the
    (n mod len)-th request (templates are not expanded then: the requests are sent as
    they are). ``skip_first`` calls are made but left out of the report (a warm-up)."""
    if (seconds is None) == (total is None):
        raise ValueError("give either seconds or total")
    schema = ["--protoset", str(protoset)] if protoset is not None else []
    amount = ["--duration", f"{seconds}s"] if seconds is not None else ["--total", str(total)]
    if isinstance(data, list):
        amount.append("--disable-template-data")
    if skip_first:
        amount += ["--skipFirst", str(skip_first)]
    # A fixed number of calls takes as long as it takes: allow a generous 50 ms a call.
    limit = (seconds if seconds is not None else 0.05 * (total or 0)) + 30
    with tempfile.TemporaryDirectory(prefix="bench-ghz-") as private:
        # Credentials go in a file of this user's, not on a command line anyone can read.
        headers = Path(private) / "metadata.json"
        headers.write_text(json.dumps(dict(metadata)))
        # The request too (``data``, proto3 JSON; ``{}`` when None): it may carry a credential.
        request = Path(private) / "data.json"
        request.write_text(json.dumps({} if data is None else data))
        command = [
            str(GHZ),
            "--insecure",
            *schema,
            "--metadata-file",
            str(headers),
            "--call",
            method,
            "--data-file",
            str(request),
            "--concurrency",
            str(concurrency),
            "--connections",
            "1",
            *amount,
            "--format",
            "json",
            f"127.0.0.1:{port}",
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit)
    if done.returncode != 0 and not done.stdout.strip():
        raise RuntimeError(f"ghz failed ({done.returncode}): {done.stderr.strip()}")
    report = json.loads(done.stdout)
    latency_us = {
        int(entry["percentage"]): entry["latency"] / 1e3
        for entry in report.get("latencyDistribution") or []
    }
    ok = int((report.get("statusCodeDistribution") or {}).get("OK", 0))
    error_messages = {
        message: int(count)
        for message, count in (report.get("errorDistribution") or {}).items()
        if not any(cut_off in message for cut_off in _CUT_OFF)
    }
    latencies = tuple(
        call["latency"] / 1e9 for call in report.get("details") or [] if call.get("status") == "OK"
    )
    return GhzRun(
        ok=ok,
        errors=sum(error_messages.values()),
        error_messages=error_messages,
        seconds=report["total"] / 1e9,
        latency_us=latency_us,
        latencies=latencies,
    )


@dataclass(frozen=True)
class WrkRun:
    """What one wrk run reported."""

    qps: float
    p50_us: float
    p99_us: float
    errors: int
    """Non-2xx/3xx answers plus socket errors (connect, read, write, timeout)."""


_WRK_LATENCY = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([0-9.]+)(us|ms|s)\s*$", re.M)
_WRK_RPS = re.compile(r"Requests/sec:\s+([0-9.]+)")
_WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_UNIT_US = {"us": 1.0, "ms": 1e3, "s": 1e6}


def run_wrk(url: str, *, concurrency: int, seconds: float, headers: Metadata = ()) -> WrkRun:
    """wrk sending GET ``url`` with ``headers`` over ``concurrency`` connections (one
    thread) for ``seconds`` (whole seconds, at least one)."""
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as private:
        # Credentials go in a script file of this user's, not on a command line anyone
        # can read. A JSON string of ASCII text is a Lua string literal too.
        script = Path(private) / "headers.lua"
        script.write_text(
            "".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n" for k, v in headers)
        )
        duration = max(1, round(seconds))
        done = subprocess.run(
            [
                "wrk",
                "--latency",
                "--script",
                str(script),
                "-t",
                "1",
                "-c",
                str(concurrency),
                "-d",
                f"{duration}s",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=duration + 30,
            check=True,
        )
    report = done.stdout
    latency = {int(q): float(v) * _UNIT_US[u] for q, v, u in _WRK_LATENCY.findall(report)}
    rps = _WRK_RPS.search(report)
    if rps is None or 50 not in latency or 99 not in latency:
        raise RuntimeError(f"wrk printed no rate or latency: {report.strip()[:500]}")
    # wrk prints each error line only when its count is not zero.
    non_2xx = _WRK_NON_2XX.search(report)
    socket = _WRK_SOCKET.search(report)
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (
        sum(int(n) for n in socket.groups()) if socket else 0
    )
    return WrkRun(float(rps.group(1)), latency[50], latency[99], errors)


UnaryMethod = Callable[..., Awaitable[Any]]
"""A bound unary method of a ``grpc.aio`` stub, e.g. ``stub.GetStatus``."""


@dataclass(frozen=True)
class PythonRun:
    """What one run of the Python client measured."""

    latencies: list[float]
    """Seconds, one per call that succeeded."""
    errors: int
    seconds: float
    """Wall time of the whole run, the channel's set-up included."""


async def _closed_loop(
    port: int,
    method_of: Callable[[grpc.aio.Channel], UnaryMethod],
    request: Any,
    concurrency: int,
    seconds: float,
    metadata: Metadata,
) -> tuple[list[float], int]:
    """``concurrency`` workers on one channel, each issuing calls (with ``metadata``) back
    to back for ``seconds``."""
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        method = method_of(channel)
        await channel.channel_ready()
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            clock = time.perf_counter
            while clock() < deadline:
                started = clock()
                try:
                    await method(request, timeout=10.0, metadata=metadata)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(clock() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


def python_load(
    port: int,
    method_of: Callable[[grpc.aio.Channel], UnaryMethod],
    request: Any,
    *,
    concurrency: int,
    seconds: float,
    metadata: Metadata = (),
) -> PythonRun:
    """A ``grpc.aio`` client in a fresh event loop: ``method_of(channel)`` (the stub's
    bound method) called with ``request`` and ``metadata``, ``concurrency`` calls in flight
    on one channel to 127.0.0.1:``port`` for ``seconds``."""
    started = time.perf_counter()
    latencies, errors = asyncio.run(
        _closed_loop(port, method_of, request, concurrency, seconds, metadata)
    )
    return PythonRun(latencies, errors, time.perf_counter() - started)
