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

The Stream trusts the bench's issuer, and every call to either server carries what Nexus
sends when it forwards (its service token for ``datapunk:stream`` and the client it acts
for), the same bytes to both. GetStatus is public, so the service verifies no token here:
what a token check costs is in ``bench/policy.py``.

Bars: datapunk QPS >= 0.7 x bare QPS; datapunk p50 - bare p50 <= 100 us at 1 in flight.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from datapunk.stream.v1 import status_pb2, status_pb2_grpc

from bench.common import (
    BIN,
    REPO_ROOT,
    Bar,
    Metadata,
    Result,
    auth_env,
    clean_env,
    closed_engines,
    free_port,
    median,
    process_cpu_seconds,
    require_file,
    service_metadata,
    start_logged,
    stop_process,
    summarize_latencies,
    wait_grpc,
)
from bench.load import GHZ, PROTOSET, python_load, run_ghz

__all__ = ["DESCRIPTION", "NAME", "run"]

# The generated stubs are untyped; use them through Any.
stream_grpc: Any = status_pb2_grpc

NAME = "service_overhead"
DESCRIPTION = "unary GetStatus through the Stream service (all interceptors) vs bare grpc.aio"

METHOD = "datapunk.stream.v1.StatusService/GetStatus"
SERVICE_BIN = BIN / "datapunk-stream"

ROUNDS = 5
THROUGHPUT_CONCURRENCY = 16
THROUGHPUT_SECONDS = 3.0
LATENCY_SECONDS = 2.0
WARMUP_SECONDS = 1.0

QPS_RATIO_BAR = 0.7
P50_OVERHEAD_BAR_US = 100.0

SERVERS = ("datapunk", "bare")
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


def _wait_serving(port: int, *, timeout: float, process: subprocess.Popen[Any]) -> bytes:
    """Wait until ``GetStatus`` answers on ``port``; return the response bytes."""
    answer: list[bytes] = []

    def probe(channel: grpc.Channel) -> None:
        stub = stream_grpc.StatusServiceStub(channel)
        response = stub.GetStatus(status_pb2.GetStatusRequest(), timeout=1.0)
        answer.append(response.SerializeToString())

    wait_grpc(
        process, f"127.0.0.1:{port}", what=f"GetStatus on port {port}", timeout=timeout, probe=probe
    )
    return answer[0]


@contextmanager
def _servers(workdir: Path) -> Iterator[dict[str, int]]:
    """Start the Stream service and the bare server; yield their ports; stop both."""
    processes: list[subprocess.Popen[Any]] = []
    try:
        port = free_port()
        env = clean_env()
        env.update(
            {
                "DATAPUNK_STREAM__HOST": "127.0.0.1",
                "DATAPUNK_STREAM__PORT": str(port),
                "DATAPUNK_STREAM__METRICS_PORT": str(free_port()),
                # Engines that are not there: connection refused, the service NOT_SERVING.
                **closed_engines("kafka", "mqtt", "redis"),
                "DATAPUNK_LOG__LEVEL": "INFO",
                **auth_env(),
            }
        )
        service = start_logged(
            [str(SERVICE_BIN)], env=env, log=workdir / "datapunk-stream.log", cwd=workdir
        )
        processes.append(service)
        response = _wait_serving(port, timeout=30.0, process=service)
        response_file = workdir / "response.bin"
        response_file.write_bytes(response)

        bare_port = free_port()
        bare = start_logged(
            [
                sys.executable,
                "-m",
                "bench.bare_server",
                "--port",
                str(bare_port),
                "--response",
                str(response_file),
            ],
            env=clean_env(),
            log=workdir / "bare.log",
            cwd=REPO_ROOT,
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


@functools.cache
def _metadata() -> Metadata:
    """What every call carries (one token for the whole run)."""
    return service_metadata("stream")


def _ghz(server: str, port: int, concurrency: int, seconds: float, rnd: int) -> Measurement:
    cpu_before = process_cpu_seconds(_pids[port])
    # The descriptor set when there is one (it may be being regenerated), else reflection.
    done = run_ghz(
        port,
        METHOD,
        concurrency=concurrency,
        seconds=seconds,
        protoset=PROTOSET if PROTOSET.is_file() else None,
        metadata=_metadata(),
    )
    cpu = process_cpu_seconds(_pids[port]) - cpu_before
    return Measurement(
        tool="ghz",
        server=server,
        concurrency=concurrency,
        round=rnd,
        calls=done.ok + done.errors,
        errors=done.errors,
        seconds=done.seconds,
        qps=done.ok / done.seconds,
        p50_us=done.percentile_us(50),
        p90_us=done.percentile_us(90),
        p99_us=done.percentile_us(99),
        server_cpu_us_per_call=cpu / max(done.ok + done.errors, 1) * 1e6,
    )


def _python(server: str, port: int, concurrency: int, seconds: float, rnd: int) -> Measurement:
    cpu_before = process_cpu_seconds(_pids[port])
    done = python_load(
        port,
        lambda channel: stream_grpc.StatusServiceStub(channel).GetStatus,
        status_pb2.GetStatusRequest(),
        concurrency=concurrency,
        seconds=seconds,
        metadata=_metadata(),
    )
    cpu = process_cpu_seconds(_pids[port]) - cpu_before
    latencies, errors = done.latencies, done.errors
    summary = summarize_latencies(latencies)
    return Measurement(
        tool="python",
        server=server,
        concurrency=concurrency,
        round=rnd,
        calls=len(latencies) + errors,
        errors=errors,
        seconds=done.seconds,
        qps=len(latencies) / seconds,
        p50_us=summary["p50_us"],
        p90_us=summary["p90_us"],
        p99_us=summary["p99_us"],
        server_cpu_us_per_call=cpu / max(len(latencies) + errors, 1) * 1e6,
    )


# --- the benchmark --------------------------------------------------------------------


def run() -> Result:
    require_file(GHZ, "scripts/install-tools.sh")
    require_file(SERVICE_BIN, "scripts/python-env.sh")
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
                "datapunk_qps": median([m.qps for m in ours]),
                "bare_qps": median([m.qps for m in bare]),
                "qps_ratio": median(ratios),
                "datapunk_p50_us": median([m.p50_us for m in ours]),
                "bare_p50_us": median([m.p50_us for m in bare]),
                "p50_overhead_us": median(overheads),
                "datapunk_p99_us": median([m.p99_us for m in ours]),
                "bare_p99_us": median([m.p99_us for m in bare]),
                "datapunk_cpu_us_per_call": median([m.server_cpu_us_per_call for m in ours]),
                "bare_cpu_us_per_call": median([m.server_cpu_us_per_call for m in bare]),
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
