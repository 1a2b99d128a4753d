"""Nexus's gRPC entry in front of the Lake, against calling the Lake directly.

Two real processes on loopback, in the same run: ``datapunk-lake`` and ``datapunk-nexus``
(its entry forwarding ``datapunk.lake.*`` to that Lake; the open gate, no cache). The
call is the Lake's unary ``StatusService/GetStatus{refresh: false}`` (answered from its
cached health results, no engine round-trip: the engines point at closed ports), so the
entry's own cost is what the comparison shows.

Two closed-loop load generators: ghz (Go, not ours; descriptor set
``gen/descriptors/datapunk.binpb``) and a ``grpc.aio`` Python client, each with
``CONCURRENCY`` calls in flight on one connection. Rounds alternate which path goes
first; the ratio is taken per round (the two runs are back to back) and the median over
rounds is reported, with the CPU time per call of the entry's and the Lake's processes.

Calls carry what real callers send: through the entry, the API key of the Nexus's
bootstrap administrator (verified by the entry, then remembered for a few seconds;
GetStatus is public, so there is no permission decision or audit record); directly,
what Nexus itself sends the Lake (its service token and the client it acts for). Both
services trust the bench's issuer; the Nexus keeps its schema and keys in a temporary
database on the configured PostgreSQL (``temporary_database``), the Lake's engines point
at closed ports.

A third path is a reference, not a bar: ``bench/bare_proxy.py``, a ``grpc.aio``
pass-through doing nothing but forward bytes and metadata, in front of the same Lake. Its
ratio to direct is what any Python ``grpc.aio`` proxy can reach on this machine (one
server side and one client side per call, on cores the load generator and the Lake share).

Bar (issue 4): entry QPS >= 0.7 x direct QPS, for each load generator.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
from datapunk.lake.v1 import status_pb2, status_pb2_grpc

from bench.common import (
    BIN,
    REPO_ROOT,
    Bar,
    Metadata,
    Result,
    api_key_metadata,
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
    temporary_database,
    wait_grpc,
)
from bench.load import GHZ, PROTOSET, python_load, run_ghz

__all__ = ["DESCRIPTION", "NAME", "run"]

lake_grpc: Any = status_pb2_grpc  # generated stubs are untyped

NAME = "grpc_entry"
DESCRIPTION = "unary Lake GetStatus through Nexus's gRPC entry vs directly to the Lake"

METHOD = "datapunk.lake.v1.StatusService/GetStatus"

ROUNDS = 3
CONCURRENCY = 16
SECONDS = 3.0
WARMUP_SECONDS = 1.0
QPS_RATIO_BAR = 0.7
PATHS = ("entry", "direct", "bare_proxy")


@dataclass(frozen=True)
class Measurement:
    tool: str
    path: str
    round: int
    calls: int
    errors: int
    qps: float
    p50_us: float
    p99_us: float
    lake_cpu_us_per_call: float
    entry_cpu_us_per_call: float
    """CPU per call of the process in front of the Lake: Nexus on the entry path, the bare
    proxy on its path; ~0 on the direct path."""


@dataclass
class Processes:
    ports: dict[str, int]
    lake_pid: int
    front_pids: dict[str, int]
    """The process in front of the Lake, by path."""

    def cpu(self, path: str) -> tuple[float, float]:
        front = self.front_pids.get(path)
        return (
            process_cpu_seconds(self.lake_pid),
            process_cpu_seconds(front) if front is not None else 0.0,
        )


def _env(**settings: str) -> dict[str, str]:
    env = clean_env()
    # Engines that are not there: connection refused; the services answer anyway.
    env.update(closed_engines("postgres", "questdb", "redis"))
    env["DATAPUNK_LOG__LEVEL"] = "INFO"
    env.update(auth_env())
    env.update(settings)
    return env


def _wait_answers(port: int, process: subprocess.Popen[Any], metadata: Metadata) -> None:
    def probe(channel: grpc.Channel) -> None:
        lake_grpc.StatusServiceStub(channel).GetStatus(
            status_pb2.GetStatusRequest(), timeout=1.0, metadata=metadata
        )

    wait_grpc(process, f"127.0.0.1:{port}", what=f"GetStatus on port {port}", probe=probe)


@contextmanager
def _processes(workdir: Path) -> Iterator[Processes]:
    started: list[subprocess.Popen[Any]] = []
    with temporary_database() as database:
        try:
            lake_port, entry_port, proxy_port = free_port(), free_port(), free_port()
            lake_env = _env(
                DATAPUNK_LAKE__PORT=str(lake_port),
                DATAPUNK_LAKE__METRICS_PORT=str(free_port()),
                DATAPUNK_LAKE__VECTORS__PATH=str(workdir / "vectors"),
            )
            nexus_env = _env(
                DATAPUNK_NEXUS__PORT=str(free_port()),
                DATAPUNK_NEXUS__METRICS_PORT=str(free_port()),
                DATAPUNK_NEXUS__REST__PORT=str(free_port()),
                DATAPUNK_NEXUS__GRPC_ENTRY__PORT=str(entry_port),
                DATAPUNK_NEXUS__BACKENDS=json.dumps({"lake": f"127.0.0.1:{lake_port}"}),
                DATAPUNK_ENGINES__POSTGRES__URL=database,
            )
            for name, env in (("lake", lake_env), ("nexus", nexus_env)):
                started.append(
                    start_logged(
                        [str(BIN / f"datapunk-{name}")],
                        env=env,
                        log=workdir / f"{name}.log",
                        cwd=workdir,
                    )
                )
            started.append(
                start_logged(
                    [
                        sys.executable,
                        "-m",
                        "bench.bare_proxy",
                        "--port",
                        str(proxy_port),
                        "--target",
                        f"127.0.0.1:{lake_port}",
                    ],
                    env=clean_env(),
                    log=workdir / "bare_proxy.log",
                    cwd=REPO_ROOT,
                )
            )
            lake, nexus, proxy = started
            _wait_answers(lake_port, lake, _credentials("direct"))
            _wait_answers(entry_port, nexus, _credentials("entry"))
            _wait_answers(proxy_port, proxy, _credentials("bare_proxy"))
            yield Processes(
                {"direct": lake_port, "entry": entry_port, "bare_proxy": proxy_port},
                lake.pid,
                {"entry": nexus.pid, "bare_proxy": proxy.pid},
            )
        finally:
            for process in reversed(started):
                stop_process(process)


def _credentials(path: str) -> Metadata:
    """What a call on ``path`` carries: a client's API key through the entry, Nexus's
    own credentials straight to the Lake and through the bare proxy (which passes the
    metadata on as it is)."""
    return api_key_metadata() if path == "entry" else service_metadata("lake")


def _ghz(port: int, seconds: float, metadata: Metadata) -> tuple[int, int, float, float, float]:
    """ok calls, errors, seconds, p50 us, p99 us."""
    done = run_ghz(port, METHOD, concurrency=CONCURRENCY, seconds=seconds, metadata=metadata)
    return done.ok, done.errors, done.seconds, done.percentile_us(50), done.percentile_us(99)


def _python(port: int, seconds: float, metadata: Metadata) -> tuple[int, int, float, float, float]:
    done = python_load(
        port,
        lambda channel: lake_grpc.StatusServiceStub(channel).GetStatus,
        status_pb2.GetStatusRequest(),
        concurrency=CONCURRENCY,
        seconds=seconds,
        metadata=metadata,
    )
    summary = summarize_latencies(done.latencies)
    return len(done.latencies), done.errors, done.seconds, summary["p50_us"], summary["p99_us"]


def _measure(tool: str, path: str, procs: Processes, seconds: float, rnd: int) -> Measurement:
    lake_before, nexus_before = procs.cpu(path)
    load = _ghz if tool == "ghz" else _python
    ok, errors, elapsed, p50, p99 = load(procs.ports[path], seconds, _credentials(path))
    lake_after, nexus_after = procs.cpu(path)
    calls = max(ok + errors, 1)
    return Measurement(
        tool=tool,
        path=path,
        round=rnd,
        calls=ok + errors,
        errors=errors,
        qps=ok / elapsed if elapsed > 0 else float("nan"),
        p50_us=p50,
        p99_us=p99,
        lake_cpu_us_per_call=(lake_after - lake_before) / calls * 1e6,
        entry_cpu_us_per_call=(nexus_after - nexus_before) / calls * 1e6,
    )


def run() -> Result:
    require_file(GHZ, "scripts/install-tools.sh")
    require_file(PROTOSET, "scripts/gen.sh")
    measurements: list[Measurement] = []
    workdir = Path(tempfile.mkdtemp(prefix="datapunk-bench-entry-"))
    try:
        with _processes(workdir) as procs:
            for path in PATHS:  # warm-up: connections, lazy imports, handler caches
                for tool in ("ghz", "python"):
                    _measure(tool, path, procs, WARMUP_SECONDS, 0)
            for rnd in range(1, ROUNDS + 1):
                order = PATHS if rnd % 2 else tuple(reversed(PATHS))
                for tool in ("ghz", "python"):
                    for path in order:
                        m = _measure(tool, path, procs, SECONDS, rnd)
                        measurements.append(m)
                        print(
                            f"  round {rnd} {tool:6} {path:6} {m.qps:8.0f} qps"
                            f"  p50 {m.p50_us:7.1f} us"
                            + (f"  ERRORS {m.errors}" if m.errors else ""),
                            flush=True,
                        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return _result(measurements)


def _result(measurements: list[Measurement]) -> Result:
    rows: list[list[Any]] = []
    bars: list[Bar] = []
    summary: dict[str, Any] = {}
    for tool in ("ghz", "python"):

        def pick(path: str, tool: str = tool) -> list[Measurement]:
            chosen = (m for m in measurements if m.tool == tool and m.path == path)
            return sorted(chosen, key=lambda m: m.round)

        entry, direct, proxy = pick("entry"), pick("direct"), pick("bare_proxy")
        ratios = [e.qps / d.qps for e, d in zip(entry, direct, strict=True) if d.qps > 0]
        proxy_ratios = [p.qps / d.qps for p, d in zip(proxy, direct, strict=True) if d.qps > 0]
        added = [e.p50_us - d.p50_us for e, d in zip(entry, direct, strict=True)]
        row: dict[str, Any] = {
            "entry_qps": median([m.qps for m in entry]),
            "direct_qps": median([m.qps for m in direct]),
            "qps_ratio": median(ratios),
            "entry_p50_us": median([m.p50_us for m in entry]),
            "direct_p50_us": median([m.p50_us for m in direct]),
            "added_p50_us": median(added),
            "entry_p99_us": median([m.p99_us for m in entry]),
            "direct_p99_us": median([m.p99_us for m in direct]),
            "entry_process_cpu_us_per_call": median([m.entry_cpu_us_per_call for m in entry]),
            "lake_cpu_us_per_call": median([m.lake_cpu_us_per_call for m in direct]),
            "bare_proxy_qps": median([m.qps for m in proxy]),
            "bare_proxy_qps_ratio": median(proxy_ratios),
            "bare_proxy_cpu_us_per_call": median([m.entry_cpu_us_per_call for m in proxy]),
            "errors": sum(m.errors for m in entry + direct + proxy),
            "per_round_qps_ratio": ratios,
            "per_round_bare_proxy_qps_ratio": proxy_ratios,
        }
        summary[tool] = row
        rows.append(
            [
                tool,
                row["entry_qps"],
                row["direct_qps"],
                row["qps_ratio"],
                row["entry_p50_us"],
                row["direct_p50_us"],
                row["added_p50_us"],
                row["entry_p99_us"],
                row["direct_p99_us"],
                row["entry_process_cpu_us_per_call"],
                row["lake_cpu_us_per_call"],
                row["bare_proxy_qps_ratio"],
                row["bare_proxy_cpu_us_per_call"],
                row["errors"],
            ]
        )
        bars.append(
            Bar(
                f"{tool}: entry/direct QPS at {CONCURRENCY} in flight",
                row["qps_ratio"],
                QPS_RATIO_BAR,
                ">=",
                "x",
            )
        )
    errors = sum(m.errors for m in measurements)
    notes = [
        f"{ROUNDS} rounds of {SECONDS:.0f} s per path and tool, alternating which path goes "
        "first; medians over rounds, ratios taken per round.",
        f"{os.cpu_count()} CPUs shared by the load generator, the Lake and (entry path) the "
        "Nexus process: the entry's CPU per call competes with the Lake's on a small machine.",
        "bare proxy: bench/bare_proxy.py, the least a grpc.aio pass-through does (bytes in, "
        "bytes out, metadata passed on; nothing else) in front of the same Lake, same run: "
        "its ratio is the ceiling of any grpc.aio proxy on this machine, a reference, not a bar.",
    ]
    if errors:
        notes.append(f"{errors} calls failed; see measurements")
        bars.append(Bar("calls that failed", float(errors), 0.0, "<="))
    return Result(
        name=NAME,
        description=DESCRIPTION,
        columns=[
            "client",
            "entry qps",
            "direct qps",
            "ratio",
            "entry p50 us",
            "direct p50 us",
            "added p50 us",
            "entry p99 us",
            "direct p99 us",
            "nexus cpu us/call",
            "lake cpu us/call",
            "bare proxy/direct",
            "bare proxy cpu us/call",
            "errors",
        ],
        rows=rows,
        bars=bars,
        details={
            "method": METHOD,
            "rounds": ROUNDS,
            "concurrency": CONCURRENCY,
            "seconds": SECONDS,
            "summary": summary,
            "measurements": [asdict(m) for m in measurements],
        },
        notes=notes,
    )
