"""What a Datapunk service costs per unary call, against a bare ``grpc.aio`` server.

Both servers run as separate processes on loopback, in the same run:

* **datapunk** - the real Stream service (``datapunk-stream``) with every interceptor on
  (request id, protovalidate, error mapping, Prometheus metrics, JSON access log of failed
  and slow calls, the default, written to a file), health monitor running against
  engines that are not there;
  ``GetStatus{refresh: false}`` answers from the cached health results.
* **bare** - ``bench/bare_server.py``: ``grpc.aio`` with the same server options, no
  interceptors, answering ``datapunk.stream.v1.StatusService/GetStatus`` with the very
  bytes the Stream service answered once (same size, same fields).

Two load generators, each closed-loop: ghz (Go, not ours) and a ``grpc.aio`` Python
client with N calls in flight. Throughput is measured with ``THROUGHPUT_CONCURRENCY``
calls in flight, latency with one. Rounds alternate which server goes first; the
ratio and the p50 difference are computed per round (the two runs of a round are
back to back) and the median over rounds is reported.

Bars: datapunk QPS >= 0.7 x bare QPS; datapunk p50 - bare p50 <= 100 us at 1 in flight.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from datapunk.stream.v1 import status_pb2, status_pb2_grpc

from bench.common import (
    REPO_ROOT,
    Bar,
    Result,
    free_port,
    process_cpu_seconds,
    stop_process,
    summarize_latencies,
    wait_until,
)

__all__ = ["DESCRIPTION", "NAME", "run"]

# The generated stubs are untyped; use them through Any.
stream_grpc: Any = status_pb2_grpc

NAME = "service_overhead"
DESCRIPTION = "unary GetStatus through the Stream service (all interceptors) vs bare grpc.aio"

METHOD = "datapunk.stream.v1.StatusService/GetStatus"
GHZ = REPO_ROOT / "build" / "tools" / "bin" / "ghz"
PROTOSET = REPO_ROOT / "gen" / "descriptors" / "datapunk.binpb"
SERVICE_BIN = Path(sys.executable).parent / "datapunk-stream"

ROUNDS = 3
THROUGHPUT_CONCURRENCY = 16
THROUGHPUT_SECONDS = 3.0
LATENCY_SECONDS = 2.0
WARMUP_SECONDS = 1.0

QPS_RATIO_BAR = 0.7
P50_OVERHEAD_BAR_US = 100.0

SERVERS = ("datapunk", "bare")
_CUT_OFF = "use of closed network connection"
_pids: dict[int, int] = {}  # port -> pid of the server process listening there


@dataclass(frozen=True)
class Measurement:
    """One load run against one server."""

    tool: str
    server: str
    concurrency: int
    round: int
    calls: int
    errors: int
    seconds: float
    qps: float
    p50_us: float
    p90_us: float
    p99_us: float
    server_cpu_us_per_call: float
    """User + system CPU the server process (all its threads) spent per call: less
    sensitive than wall time to other work on a shared machine."""


# --- the two servers ------------------------------------------------------------------


def _clean_env() -> dict[str, str]:
    """The environment without any DATAPUNK_* setting the caller may have."""
    return {key: value for key, value in os.environ.items() if not key.startswith("DATAPUNK_")}


def _wait_serving(port: int, *, timeout: float, process: subprocess.Popen[Any]) -> bytes:
    """Wait until ``GetStatus`` answers on ``port``; return the response bytes."""
    answer: list[bytes] = []

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"server pid {process.pid} exited with {process.returncode}")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = stream_grpc.StatusServiceStub(channel)
            try:
                response = stub.GetStatus(status_pb2.GetStatusRequest(), timeout=1.0)
            except grpc.RpcError:
                return False
        answer.append(response.SerializeToString())
        return True

    wait_until(ready, timeout=timeout, what=f"GetStatus on port {port}")
    return answer[0]


@contextmanager
def _servers(workdir: Path) -> Iterator[dict[str, int]]:
    """Start the Stream service and the bare server; yield their ports; stop both."""
    processes: list[subprocess.Popen[Any]] = []
    try:
        port = free_port()
        env = _clean_env()
        env.update(
            {
                "DATAPUNK_STREAM__HOST": "127.0.0.1",
                "DATAPUNK_STREAM__PORT": str(port),
                "DATAPUNK_STREAM__METRICS_PORT": str(free_port()),
                # Engines that are not there: connection refused, the service NOT_SERVING.
                "DATAPUNK_ENGINES__KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
                "DATAPUNK_ENGINES__MQTT__URL": f"mqtt://127.0.0.1:{free_port()}",
                "DATAPUNK_ENGINES__REDIS__URL": f"redis://127.0.0.1:{free_port()}/0",
                "DATAPUNK_LOG__LEVEL": "INFO",
            }
        )
        with (workdir / "datapunk-stream.log").open("wb") as log:
            service = subprocess.Popen(
                [str(SERVICE_BIN)],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        processes.append(service)
        response = _wait_serving(port, timeout=30.0, process=service)
        response_file = workdir / "response.bin"
        response_file.write_bytes(response)

        bare_port = free_port()
        with (workdir / "bare.log").open("wb") as log:
            bare = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.bare_server",
                    "--port",
                    str(bare_port),
                    "--response",
                    str(response_file),
                ],
                cwd=REPO_ROOT,
                env=_clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        processes.append(bare)
        if _wait_serving(bare_port, timeout=30.0, process=bare) != response:
            raise RuntimeError("the bare server does not answer what the service answered")
        _pids.update({port: service.pid, bare_port: bare.pid})
        yield {"datapunk": port, "bare": bare_port}
    finally:
        for process in reversed(processes):
            stop_process(process)


# --- the two load generators ----------------------------------------------------------


def _ghz(server: str, port: int, concurrency: int, seconds: float, rnd: int) -> Measurement:
    cpu_before = process_cpu_seconds(_pids[port])
    # The descriptor set when there is one (it may be being regenerated), else reflection.
    schema = ["--protoset", str(PROTOSET)] if PROTOSET.is_file() else []
    command = [
        str(GHZ),
        "--insecure",
        *schema,
        "--call",
        METHOD,
        "--data",
        "{}",
        "--concurrency",
        str(concurrency),
        "--connections",
        "1",
        "--duration",
        f"{seconds}s",
        "--format",
        "json",
        f"127.0.0.1:{port}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30)
    cpu = process_cpu_seconds(_pids[port]) - cpu_before
    if done.returncode != 0 and not done.stdout.strip():
        raise RuntimeError(f"ghz failed ({done.returncode}): {done.stderr.strip()}")
    report = json.loads(done.stdout)
    percentiles = {
        int(entry["percentage"]): entry["latency"] / 1e3
        for entry in report.get("latencyDistribution") or []
    }
    ok = int((report.get("statusCodeDistribution") or {}).get("OK", 0))
    # When the duration is up ghz closes its connection under the calls still in flight
    # (at most one per worker); those are its own artefact, not a server error.
    errors = sum(
        int(count)
        for message, count in (report.get("errorDistribution") or {}).items()
        if _CUT_OFF not in message
    )
    seconds_run = report["total"] / 1e9
    return Measurement(
        tool="ghz",
        server=server,
        concurrency=concurrency,
        round=rnd,
        calls=ok + errors,
        errors=errors,
        seconds=seconds_run,
        qps=ok / seconds_run,
        p50_us=percentiles.get(50, float("nan")),
        p90_us=percentiles.get(90, float("nan")),
        p99_us=percentiles.get(99, float("nan")),
        server_cpu_us_per_call=cpu / max(ok + errors, 1) * 1e6,
    )


async def _python_load(port: int, concurrency: int, seconds: float) -> tuple[list[float], int]:
    """``concurrency`` workers, each issuing calls back to back for ``seconds``."""
    latencies: list[float] = []
    errors = 0
    request = status_pb2.GetStatusRequest()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = stream_grpc.StatusServiceStub(channel)
        await channel.channel_ready()
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            clock = time.perf_counter
            while clock() < deadline:
                started = clock()
                try:
                    await stub.GetStatus(request, timeout=10.0)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                latencies.append(clock() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


def _python(server: str, port: int, concurrency: int, seconds: float, rnd: int) -> Measurement:
    cpu_before = process_cpu_seconds(_pids[port])
    started = time.perf_counter()
    latencies, errors = asyncio.run(_python_load(port, concurrency, seconds))
    elapsed = time.perf_counter() - started
    cpu = process_cpu_seconds(_pids[port]) - cpu_before
    summary = summarize_latencies(latencies)
    return Measurement(
        tool="python",
        server=server,
        concurrency=concurrency,
        round=rnd,
        calls=len(latencies) + errors,
        errors=errors,
        seconds=elapsed,
        qps=len(latencies) / seconds,
        p50_us=summary["p50_us"],
        p90_us=summary["p90_us"],
        p99_us=summary["p99_us"],
        server_cpu_us_per_call=cpu / max(len(latencies) + errors, 1) * 1e6,
    )


# --- the benchmark --------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run() -> Result:
    if not GHZ.is_file():
        raise FileNotFoundError(f"{GHZ} is missing; run scripts/install-tools.sh")
    if not SERVICE_BIN.is_file():
        raise FileNotFoundError(f"{SERVICE_BIN} is missing; run scripts/python-env.sh")
    measurements: list[Measurement] = []
    workdir = Path(tempfile.mkdtemp(prefix="datapunk-bench-"))
    try:
        with _servers(workdir) as ports:
            for server in SERVERS:  # warm both up (caches, JIT-less but lazy imports)
                _python(server, ports[server], 4, WARMUP_SECONDS, 0)
                _ghz(server, ports[server], 4, WARMUP_SECONDS, 0)
            for rnd in range(1, ROUNDS + 1):
                order = SERVERS if rnd % 2 else tuple(reversed(SERVERS))
                for tool, load in (("ghz", _ghz), ("python", _python)):
                    for concurrency, seconds in (
                        (1, LATENCY_SECONDS),
                        (THROUGHPUT_CONCURRENCY, THROUGHPUT_SECONDS),
                    ):
                        for server in order:
                            m = load(server, ports[server], concurrency, seconds, rnd)
                            measurements.append(m)
                            print(
                                f"  round {rnd} {tool:6} c={concurrency:<2} {server:8}"
                                f" {m.qps:8.0f} qps  p50 {m.p50_us:7.1f} us"
                                + (f"  ERRORS {m.errors}" if m.errors else ""),
                                flush=True,
                            )
            log_lines = _count_lines(workdir / "datapunk-stream.log")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return _result(measurements, log_lines)


def _count_lines(path: Path) -> int:
    with path.open("rb") as file:
        return sum(1 for _ in file)


def _result(measurements: list[Measurement], log_lines: int) -> Result:
    rows: list[list[Any]] = []
    bars: list[Bar] = []
    summary: dict[str, Any] = {}
    for tool in ("ghz", "python"):
        for concurrency in (1, THROUGHPUT_CONCURRENCY):

            def pick(
                server: str, tool: str = tool, concurrency: int = concurrency
            ) -> list[Measurement]:
                return sorted(
                    (
                        m
                        for m in measurements
                        if m.tool == tool and m.server == server and m.concurrency == concurrency
                    ),
                    key=lambda m: m.round,
                )

            ours, bare = pick("datapunk"), pick("bare")
            ratios = [a.qps / b.qps for a, b in zip(ours, bare, strict=True) if b.qps > 0]
            overheads = [a.p50_us - b.p50_us for a, b in zip(ours, bare, strict=True)]
            entry = {
                "datapunk_qps": _median([m.qps for m in ours]),
                "bare_qps": _median([m.qps for m in bare]),
                "qps_ratio": _median(ratios),
                "datapunk_p50_us": _median([m.p50_us for m in ours]),
                "bare_p50_us": _median([m.p50_us for m in bare]),
                "p50_overhead_us": _median(overheads),
                "datapunk_p99_us": _median([m.p99_us for m in ours]),
                "bare_p99_us": _median([m.p99_us for m in bare]),
                "datapunk_cpu_us_per_call": _median([m.server_cpu_us_per_call for m in ours]),
                "bare_cpu_us_per_call": _median([m.server_cpu_us_per_call for m in bare]),
                "errors": sum(m.errors for m in ours + bare),
                "per_round_qps_ratio": ratios,
                "per_round_p50_overhead_us": overheads,
            }
            summary[f"{tool}_c{concurrency}"] = entry
            rows.append(
                [
                    tool,
                    concurrency,
                    entry["datapunk_qps"],
                    entry["bare_qps"],
                    entry["qps_ratio"],
                    entry["datapunk_p50_us"],
                    entry["bare_p50_us"],
                    entry["p50_overhead_us"],
                    entry["datapunk_p99_us"],
                    entry["bare_p99_us"],
                    entry["datapunk_cpu_us_per_call"],
                    entry["bare_cpu_us_per_call"],
                    entry["errors"],
                ]
            )
        bars.append(
            Bar(
                f"{tool}: datapunk/bare QPS at {THROUGHPUT_CONCURRENCY} in flight",
                summary[f"{tool}_c{THROUGHPUT_CONCURRENCY}"]["qps_ratio"],
                QPS_RATIO_BAR,
                ">=",
                "x",
            )
        )
        bars.append(
            Bar(
                f"{tool}: p50 overhead at 1 in flight",
                summary[f"{tool}_c1"]["p50_overhead_us"],
                P50_OVERHEAD_BAR_US,
                "<=",
                " us",
            )
        )
    errors = sum(m.errors for m in measurements)
    notes = [
        f"{ROUNDS} rounds, alternating which server goes first; medians over rounds, "
        "ratio and p50 difference taken per round.",
        f"the Stream service wrote {log_lines} log lines during the run "
        "(access log of failed and slow calls, the default).",
    ]
    if errors:
        notes.append(f"{errors} calls failed; see measurements")
        bars.append(Bar("calls that failed", float(errors), 0.0, "<="))
    return Result(
        name=NAME,
        description=DESCRIPTION,
        columns=[
            "client",
            "in flight",
            "datapunk qps",
            "bare qps",
            "ratio",
            "datapunk p50 us",
            "bare p50 us",
            "p50 overhead us",
            "datapunk p99 us",
            "bare p99 us",
            "datapunk cpu us/call",
            "bare cpu us/call",
            "errors",
        ],
        rows=rows,
        bars=bars,
        details={
            "method": METHOD,
            "rounds": ROUNDS,
            "throughput_concurrency": THROUGHPUT_CONCURRENCY,
            "throughput_seconds": THROUGHPUT_SECONDS,
            "latency_seconds": LATENCY_SECONDS,
            "summary": summary,
            "measurements": [m.__dict__ for m in measurements],
        },
        notes=notes,
    )
