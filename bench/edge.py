"""REST edge overhead: ``GET /v1/lake/status`` through Nexus's REST edge (wrk) against
``datapunk.lake.v1.StatusService/GetStatus`` straight to the Lake (ghz), same run.

Two real processes on loopback: a Lake (its engines point at closed ports, so it is
NOT_SERVING and answers GetStatus from its cached health results — a small read with no
engine round-trip) and a Nexus whose REST edge forwards to that Lake, configured as in
production (access log on, open gate, no cache). Load comes from tools we did not write:
wrk (HTTP/1.1; ``--latency`` percentiles) and ghz (gRPC). Throughput with 16 requests in
flight (16 wrk connections; 16 ghz workers on one HTTP/2 connection), latency with 1.
Three rounds alternate the order of the two paths; the median round is reported.

Requests carry what real callers send: to the edge, the API key of the Nexus's bootstrap
administrator (a wrk script sets the header; the edge verifies the key, then remembers it
for a few seconds; the route is public, so there is no permission decision or audit
record); to the Lake, what Nexus itself sends it (its service token and the client it
acts for). Both services trust the bench's issuer; the Nexus keeps its schema and keys in
a temporary database on the configured PostgreSQL (``temporary_database``).

Bars (issue 4): REST QPS >= 0.5 x direct gRPC QPS; REST p50 - gRPC p50 <= 1 ms."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    BIN,
    Bar,
    Result,
    api_key_metadata,
    auth_env,
    clean_env,
    closed_engines,
    free_port,
    process_cpu_seconds,
    require_file,
    service_metadata,
    start_logged,
    stop_process,
    temporary_database,
    wait_until,
)
from bench.load import GHZ, run_ghz, run_wrk

__all__ = ["DESCRIPTION", "NAME", "run"]

NAME = "edge"
DESCRIPTION = (
    "GET /v1/lake/status via the Nexus REST edge (wrk) vs gRPC GetStatus to the Lake (ghz)"
)

METHOD = "datapunk.lake.v1.StatusService/GetStatus"
PATH = "/v1/lake/status"

ROUNDS = 3
THROUGHPUT_CONCURRENCY = 16
THROUGHPUT_SECONDS = 4
LATENCY_SECONDS = 3
QPS_RATIO_BAR = 0.5
P50_ADDED_BAR_US = 1000.0


@dataclass(frozen=True)
class Measurement:
    path: str  # "rest" or "grpc"
    tool: str
    concurrency: int
    round: int
    qps: float
    p50_us: float
    p99_us: float
    errors: int
    nexus_cpu_us_per_call: float


@contextmanager
def _processes(workdir: Path) -> Iterator[tuple[int, int, int]]:
    """Lake and Nexus on free ports; yields (lake gRPC port, REST port, Nexus pid)."""
    started: list[subprocess.Popen[bytes]] = []
    lake_port, rest_port = free_port(), free_port()
    env = {
        **clean_env(),
        **closed_engines("postgres", "questdb", "redis"),
        "DATAPUNK_LAKE__PORT": str(lake_port),
        "DATAPUNK_LAKE__METRICS_PORT": str(free_port()),
        "DATAPUNK_LAKE__VECTORS__PATH": str(workdir / "vectors"),
        "DATAPUNK_STREAM__PORT": str(free_port()),
        "DATAPUNK_NEXUS__PORT": str(free_port()),
        "DATAPUNK_NEXUS__METRICS_PORT": str(free_port()),
        "DATAPUNK_NEXUS__GRPC_ENTRY__PORT": str(free_port()),
        "DATAPUNK_NEXUS__REST__PORT": str(rest_port),
        "DATAPUNK_NEXUS__RATE_LIMITS__BACKEND": "memory",
        "DATAPUNK_NEXUS__CACHE__BACKEND": "memory",
        **auth_env(),
    }
    with temporary_database() as database:
        try:
            for name in ("lake", "nexus"):
                own = (
                    {**env, "DATAPUNK_ENGINES__POSTGRES__URL": database} if name == "nexus" else env
                )
                command = [str(BIN / f"datapunk-{name}")]
                started.append(
                    start_logged(command, env=own, log=workdir / f"{name}.log", cwd=workdir)
                )
            request = urllib.request.Request(
                f"http://127.0.0.1:{rest_port}{PATH}", headers=dict(api_key_metadata())
            )

            def answers() -> bool:
                for process in started:
                    if process.poll() is not None:
                        raise RuntimeError(f"a service exited; see {workdir}/*.log")
                try:
                    with urllib.request.urlopen(request, timeout=2) as r:
                        return bool(r.status == 200)
                except OSError:
                    return False

            wait_until(answers, timeout=60, what="GET /v1/lake/status through the edge")
            yield lake_port, rest_port, started[1].pid
        finally:
            for process in reversed(started):
                stop_process(process)


def _wrk(port: int, concurrency: int, seconds: int, rnd: int, nexus_pid: int) -> Measurement:
    cpu = process_cpu_seconds(nexus_pid)
    done = run_wrk(
        f"http://127.0.0.1:{port}{PATH}",
        concurrency=concurrency,
        seconds=seconds,
        headers=api_key_metadata(),
    )
    cpu = process_cpu_seconds(nexus_pid) - cpu
    calls = max(done.qps * seconds, 1)
    return Measurement(
        "rest",
        "wrk",
        concurrency,
        rnd,
        done.qps,
        done.p50_us,
        done.p99_us,
        done.errors,
        cpu / calls * 1e6,
    )


def _ghz(port: int, concurrency: int, seconds: int, rnd: int) -> Measurement:
    done = run_ghz(
        port, METHOD, concurrency=concurrency, seconds=seconds, metadata=service_metadata("lake")
    )
    return Measurement(
        "grpc",
        "ghz",
        concurrency,
        rnd,
        done.ok / done.seconds,
        done.percentile_us(50),
        done.percentile_us(99),
        done.errors,
        0.0,
    )


def run() -> Result:
    if shutil.which("wrk") is None:
        raise FileNotFoundError("wrk is not installed (Debian package 'wrk')")
    require_file(GHZ, "scripts/install-tools.sh")
    measurements: list[Measurement] = []
    workdir = Path(tempfile.mkdtemp(prefix="datapunk-bench-edge-"))
    try:
        with _processes(workdir) as (lake_port, rest_port, nexus_pid):
            _wrk(rest_port, 4, 1, 0, nexus_pid)  # warm-up
            _ghz(lake_port, 4, 1, 0)
            for rnd in range(1, ROUNDS + 1):
                for concurrency, seconds in (
                    (1, LATENCY_SECONDS),
                    (THROUGHPUT_CONCURRENCY, THROUGHPUT_SECONDS),
                ):
                    pair = [
                        lambda c=concurrency, s=seconds, r=rnd: _wrk(rest_port, c, s, r, nexus_pid),
                        lambda c=concurrency, s=seconds, r=rnd: _ghz(lake_port, c, s, r),
                    ]
                    for load in pair if rnd % 2 else reversed(pair):
                        m = load()
                        measurements.append(m)
                        print(
                            f"  round {rnd} {m.path:4} ({m.tool}) c={m.concurrency:<2}"
                            f" {m.qps:8.0f} qps  p50 {m.p50_us:7.1f} us  p99 {m.p99_us:8.1f} us"
                            + (f"  ERRORS {m.errors}" if m.errors else ""),
                            flush=True,
                        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def pick(path: str, concurrency: int) -> list[Measurement]:
        return [m for m in measurements if m.path == path and m.concurrency == concurrency]

    ratios = [
        rest.qps / grpc.qps
        for rest, grpc in zip(
            pick("rest", THROUGHPUT_CONCURRENCY), pick("grpc", THROUGHPUT_CONCURRENCY), strict=True
        )
    ]
    added = [
        rest.p50_us - grpc.p50_us
        for rest, grpc in zip(pick("rest", 1), pick("grpc", 1), strict=True)
    ]
    rows: list[list[Any]] = []
    for path, tool in (("rest", "wrk"), ("grpc", "ghz")):
        for concurrency in (1, THROUGHPUT_CONCURRENCY):
            ms = pick(path, concurrency)
            rows.append(
                [
                    f"{path} ({tool})",
                    concurrency,
                    statistics.median(m.qps for m in ms),
                    statistics.median(m.p50_us for m in ms),
                    statistics.median(m.p99_us for m in ms),
                    sum(m.errors for m in ms),
                ]
            )
    rest_cpu = statistics.median(
        m.nexus_cpu_us_per_call for m in pick("rest", THROUGHPUT_CONCURRENCY)
    )
    errors = sum(m.errors for m in measurements)
    return Result(
        name=NAME,
        description=DESCRIPTION,
        columns=["path", "in flight", "qps", "p50 us", "p99 us", "errors"],
        rows=rows,
        bars=[
            Bar(
                "REST QPS / gRPC QPS (16 in flight)", statistics.median(ratios), QPS_RATIO_BAR, ">="
            ),
            Bar(
                "REST p50 - gRPC p50 (1 in flight)",
                statistics.median(added),
                P50_ADDED_BAR_US,
                "<=",
                " us",
            ),
            Bar("failed requests", float(errors), 0.0, "<="),
        ],
        details={
            "measurements": [asdict(m) for m in measurements],
            "qps_ratios": ratios,
            "p50_added_us": added,
            "nexus_cpu_us_per_rest_call": rest_cpu,
        },
        notes=[
            f"Nexus CPU per REST call (16 in flight, median): {rest_cpu:.0f} us",
            "wrk speaks HTTP/1.1: 16 in flight needs 16 connections; ghz multiplexes 16 "
            "workers on one HTTP/2 connection.",
        ],
    )
