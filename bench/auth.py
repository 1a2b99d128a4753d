"""What identity costs at the edge: authentication, the permission decision and the audit
record of every call, measured through a real Nexus in front of a real Lake, same run.

There is no "auth off" switch (by design: nothing reaches data without an identity), so
"auth off" is the same Nexus answering a call that needs no identity: the public
``StatusService/GetStatus`` of the Lake, forwarded like any other call (routing, request
id, gate, metadata, the Lake's own service-token check) but with no credential to verify,
no decision and no audit record. "Auth on" is a read that needs all three:
``VectorService/ListCollections`` (``read`` on ``collection/*``; an ALLOW record committed
to PostgreSQL before the call is forwarded) with the bootstrap administrator's API key,
and with a client's ES256 bearer token. The two Lake calls cost the Lake about the same —
both are measured straight to the Lake too, with Nexus's service token, so the table
shows the backend's own cost beside the edge's — and the ratio

    QPS(authenticated ListCollections) / QPS(public GetStatus), through the same entry,

is the one that stands for "auth on vs auth off" (issue 5: >= 0.8), for the gRPC entry
(ghz) and the REST edge (wrk). The Nexus CPU per call of each path shows where the
difference goes. Credentials are verified once and then remembered (API keys for
``api_keys.cache_seconds``, tokens 30 s; revocation and, for Nexus's tokens, the signing
key are checked on every call), as a busy client presents the same one on every call;
the audit records of concurrent calls share commits (group commit). Most of identity's
cost is that commit: a record waits for the commit under way and, while the Nexus is
busy (``nexus.auth.audit.linger_when_busy``), up to ``linger`` (3 ms) for company, so
that concurrent calls share larger commits (about 3 records a commit without a linger,
4.5 with 2 ms, 6-9 with 5 ms, counted in the bench's database).

Also: Envoy's ``envoy.service.auth.v3.Authorization/Check`` on the Nexus service port
(ghz with reflection, Nexus's service token as Envoy's credentials, a CheckRequest whose
HTTP headers carry the client's API key and whose body is the gRPC-framed request), as
QPS and as checks per CPU-second of the Nexus process (per core). Token verification +
permission decision p99 in process is ``bench/policy.py``'s bar and is not repeated here.

Processes: a Lake whose engines point at closed ports (its embedded vector store still
lists collections; GetStatus answers from its cached health), a Nexus keeping its schema,
keys and audit trail in a temporary database on the configured PostgreSQL, the open
gate and no cache. Load: ``CONCURRENCY`` calls in flight (ghz workers on one connection;
wrk connections); medians over rounds. On a shared machine the same path's QPS moves by
a third from one minute to the next, so each round measures every path in ``SLICES``
interleaved slices (the order reversed each time) and a ratio is taken per round: the two
paths of a ratio then meet the same moments of the machine.

``python -m bench.run auth`` or ``python bench/auth.py [--quick]``."""

from __future__ import annotations

import base64
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/auth.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
from datapunk.lake.v1 import vectors_pb2, vectors_pb2_grpc
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf import descriptor_pb2

from bench.common import (
    BIN,
    Bar,
    Metadata,
    Result,
    api_key_metadata,
    auth_env,
    clean_env,
    closed_engines,
    free_port,
    main_with_quick,
    process_cpu_seconds,
    require_file,
    service_metadata,
    start_logged,
    stop_process,
    temporary_database,
    wait_grpc,
)
from bench.load import GHZ, PROTOSET, run_ghz, run_wrk
from tests.auth_support import issuer

__all__ = ["DESCRIPTION", "NAME", "run"]

NAME = "auth"
DESCRIPTION = "edge QPS with identity (API key, bearer) vs a public call; Envoy Check per core"

STATUS = "datapunk.lake.v1.StatusService/GetStatus"
READ = "datapunk.lake.v1.VectorService/ListCollections"
CHECK = "envoy.service.auth.v3.Authorization/Check"
STATUS_PATH = "/v1/lake/status"
READ_PATH = "/v1/lake/collections"

CONCURRENCY = 16
QPS_RATIO_BAR = 0.8
ROUNDS = 6
SECONDS = 3.0
SLICES = 3  # each round measures every path in this many interleaved slices

lake_vectors: Any = vectors_pb2_grpc  # generated stubs are untyped


@dataclass(frozen=True)
class CallPath:
    """One way of making the call."""

    name: str
    tool: str  # "ghz" or "wrk"
    target: str  # "entry", "rest", "lake" or "nexus" (the service port)
    call: str  # gRPC method or REST path
    credential: str  # "none", "api_key", "bearer" or "service"


PATHS = (
    CallPath("gRPC entry, public GetStatus", "ghz", "entry", STATUS, "none"),
    CallPath("gRPC entry, ListCollections, API key", "ghz", "entry", READ, "api_key"),
    CallPath("gRPC entry, ListCollections, bearer", "ghz", "entry", READ, "bearer"),
    CallPath("Lake direct, GetStatus", "ghz", "lake", STATUS, "service"),
    CallPath("Lake direct, ListCollections", "ghz", "lake", READ, "service"),
    CallPath("REST edge, public GET /v1/lake/status", "wrk", "rest", STATUS_PATH, "none"),
    CallPath("REST edge, GET /v1/lake/collections, API key", "wrk", "rest", READ_PATH, "api_key"),
    CallPath("REST edge, GET /v1/lake/collections, bearer", "wrk", "rest", READ_PATH, "bearer"),
    CallPath("Envoy Check (service port), API key", "ghz", "nexus", CHECK, "service"),
)


@dataclass(frozen=True)
class Measurement:
    path: str
    round: int
    qps: float
    p50_us: float
    p99_us: float
    errors: int
    nexus_cpu_us_per_call: float


@dataclass
class Processes:
    ports: dict[str, int]  # target -> port
    nexus_pid: int


def _bearer() -> Metadata:
    """A client-credentials access token of an administrator of the tenant default, as
    Nexus's token endpoint would issue it (signed by the key the bench's Nexus signs
    with), valid longer than the run."""
    token = issuer().token(
        audience="datapunk:nexus",
        subject="client:bench",
        ttl=3600,
        client_id="bench",
        datapunk_tenant="default",
        datapunk_roles=["admin"],
    )
    return (("authorization", f"Bearer {token}"),)


def _credentials(path: CallPath) -> Metadata:
    if path.credential == "api_key":
        return api_key_metadata()
    if path.credential == "bearer":
        return _bearer()
    if path.credential == "service":
        return service_metadata("nexus" if path.target == "nexus" else "lake")
    return ()


def _check_request() -> dict[str, Any]:
    """A CheckRequest as Envoy's ext_authz filter sends it after transcoding (proto3
    JSON): the gRPC method as the path, the client's API key among the headers, the
    gRPC-framed request message as the raw body (an empty ListCollectionsRequest)."""
    framed = b"\x00" + (0).to_bytes(4, "big")
    return {
        "attributes": {
            "source": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": 1}}},
            "request": {
                "http": {
                    "id": "bench",
                    "method": "POST",
                    "path": "/" + READ,
                    "headers": dict(api_key_metadata()),
                    "rawBody": base64.b64encode(framed).decode(),
                }
            },
        }
    }


def _envoy_protoset(path: Path) -> Path:
    """A descriptor set of ``envoy.service.auth.v3`` and everything it imports, from the
    xds-protos package, for ghz (the contracts' descriptor set holds Datapunk's only)."""
    found: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def add(file: Any) -> None:
        if file.name in found:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        found[file.name] = proto

    add(external_auth_pb2.DESCRIPTOR)
    descriptors = descriptor_pb2.FileDescriptorSet(file=list(found.values()))
    path.write_bytes(descriptors.SerializeToString())
    return path


def _env(**settings: str) -> dict[str, str]:
    env = clean_env()
    env.update(closed_engines("postgres", "questdb", "redis"))
    env.update(auth_env())
    env.update(settings)
    return env


@contextmanager
def _processes(workdir: Path) -> Iterator[Processes]:
    started: list[subprocess.Popen[Any]] = []
    ports = {name: free_port() for name in ("lake", "entry", "rest", "nexus")}
    with temporary_database() as database:
        try:
            lake_env = _env(
                DATAPUNK_LAKE__PORT=str(ports["lake"]),
                DATAPUNK_LAKE__METRICS_PORT=str(free_port()),
                DATAPUNK_LAKE__VECTORS__PATH=str(workdir / "vectors"),
            )
            nexus_env = _env(
                DATAPUNK_NEXUS__PORT=str(ports["nexus"]),
                DATAPUNK_NEXUS__METRICS_PORT=str(free_port()),
                DATAPUNK_NEXUS__REST__PORT=str(ports["rest"]),
                DATAPUNK_NEXUS__GRPC_ENTRY__PORT=str(ports["entry"]),
                DATAPUNK_NEXUS__BACKENDS=json.dumps({"lake": f"127.0.0.1:{ports['lake']}"}),
                DATAPUNK_NEXUS__RATE_LIMITS__BACKEND="memory",
                DATAPUNK_NEXUS__CACHE__BACKEND="memory",
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
            nexus = started[1]

            def lists(channel: grpc.Channel) -> None:
                lake_vectors.VectorServiceStub(channel).ListCollections(
                    vectors_pb2.ListCollectionsRequest(),
                    timeout=2.0,
                    metadata=api_key_metadata(),
                )

            wait_grpc(
                nexus,
                f"127.0.0.1:{ports['entry']}",
                what="ListCollections through the entry (the Nexus ready, keys loaded)",
                probe=lists,
                log=workdir / "nexus.log",
            )
            yield Processes(ports, nexus.pid)
        finally:
            for process in reversed(started):
                stop_process(process)


def _ghz(
    path: CallPath, port: int, seconds: float, workdir: Path
) -> tuple[float, float, float, int]:
    """qps, p50 us, p99 us, errors."""
    check = path.target == "nexus"
    done = run_ghz(
        port,
        path.call,
        concurrency=CONCURRENCY,
        seconds=seconds,
        protoset=_envoy_protoset(workdir / "envoy.binpb") if check else PROTOSET,
        metadata=_credentials(path),
        data=_check_request() if check else None,
    )
    for message, count in done.error_messages.items():
        print(f"  {path.name}: {count} failed: {message}", flush=True)
    return done.ok / done.seconds, done.percentile_us(50), done.percentile_us(99), done.errors


def _wrk(path: CallPath, port: int, seconds: float) -> tuple[float, float, float, int]:
    """qps, p50 us, p99 us, errors (non-2xx answers and socket errors)."""
    done = run_wrk(
        f"http://127.0.0.1:{port}{path.call}",
        concurrency=CONCURRENCY,
        seconds=seconds,
        headers=_credentials(path),
    )
    return done.qps, done.p50_us, done.p99_us, done.errors


def _measure(
    path: CallPath, procs: Processes, seconds: float, rnd: int, workdir: Path
) -> Measurement:
    port = procs.ports[path.target]
    cpu = process_cpu_seconds(procs.nexus_pid)
    load: Callable[[], tuple[float, float, float, int]] = (
        (lambda: _wrk(path, port, seconds))
        if path.tool == "wrk"
        else (lambda: _ghz(path, port, seconds, workdir))
    )
    qps, p50, p99, errors = load()
    cpu = process_cpu_seconds(procs.nexus_pid) - cpu
    calls = max(qps * seconds, 1.0)
    return Measurement(path.name, rnd, qps, p50, p99, errors, cpu / calls * 1e6)


def _run(quick: bool) -> Result:
    if shutil.which("wrk") is None:
        raise FileNotFoundError("wrk is not installed (Debian package 'wrk')")
    require_file(GHZ, "scripts/install-tools.sh")
    require_file(PROTOSET, "scripts/gen.sh")
    rounds, seconds, slices_per_round = (1, 2.0, 2) if quick else (ROUNDS, SECONDS, SLICES)
    measurements: list[Measurement] = []
    workdir = Path(tempfile.mkdtemp(prefix="datapunk-bench-auth-"))
    try:
        with _processes(workdir) as procs:
            for path in PATHS:  # warm-up: connections, remembered credentials, JIT-free
                _measure(path, procs, 1.0, 0, workdir)
            for rnd in range(1, rounds + 1):
                slices: dict[str, list[Measurement]] = {path.name: [] for path in PATHS}
                for turn in range(slices_per_round):
                    for path in PATHS if (rnd + turn) % 2 else tuple(reversed(PATHS)):
                        slices[path.name].append(
                            _measure(path, procs, seconds / slices_per_round, rnd, workdir)
                        )
                for path in PATHS:
                    m = _combined(slices[path.name])
                    measurements.append(m)
                    print(
                        f"  round {rnd} {m.path:48} {m.qps:8.0f} qps  p50 {m.p50_us:8.0f} us"
                        f"  p99 {m.p99_us:8.0f} us  nexus {m.nexus_cpu_us_per_call:6.0f} us/call"
                        + (f"  ERRORS {m.errors}" if m.errors else ""),
                        flush=True,
                    )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return _result(measurements, quick)


def _combined(slices: list[Measurement]) -> Measurement:
    """One path's slices of a round as one measurement: mean QPS (the slices are equally
    long), median latencies, Nexus CPU per call over all the slices' calls."""
    calls = [max(m.qps, 1e-9) for m in slices]
    return Measurement(
        slices[0].path,
        slices[0].round,
        statistics.mean(m.qps for m in slices),
        statistics.median(m.p50_us for m in slices),
        statistics.median(m.p99_us for m in slices),
        sum(m.errors for m in slices),
        sum(m.nexus_cpu_us_per_call * n for m, n in zip(slices, calls, strict=True)) / sum(calls),
    )


def _median(measurements: list[Measurement], path: str, field: str) -> float:
    return float(statistics.median(getattr(m, field) for m in measurements if m.path == path))


def _ratios(measurements: list[Measurement], on: str, off: str) -> list[float]:
    """QPS of ``on`` over QPS of ``off``, round by round (each pair ran back to back)."""
    by_round: dict[int, dict[str, float]] = {}
    for m in measurements:
        by_round.setdefault(m.round, {})[m.path] = m.qps
    return [r[on] / r[off] for r in by_round.values() if r.get(off)]


def _result(measurements: list[Measurement], quick: bool) -> Result:
    names = [p.name for p in PATHS]
    rows = [
        [
            name,
            _median(measurements, name, "qps"),
            _median(measurements, name, "p50_us"),
            _median(measurements, name, "p99_us"),
            _median(measurements, name, "nexus_cpu_us_per_call"),
            sum(m.errors for m in measurements if m.path == name),
        ]
        for name in names
    ]
    grpc_off, grpc_key, grpc_bearer = names[0], names[1], names[2]
    lake_status_, lake_read = names[3], names[4]
    rest_off, rest_key, rest_bearer = names[5], names[6], names[7]
    check = names[8]
    ratios = {
        "grpc_api_key": _ratios(measurements, grpc_key, grpc_off),
        "grpc_bearer": _ratios(measurements, grpc_bearer, grpc_off),
        "rest_api_key": _ratios(measurements, rest_key, rest_off),
        "rest_bearer": _ratios(measurements, rest_bearer, rest_off),
        "lake_read_vs_status": _ratios(measurements, lake_read, lake_status_),
    }
    ratio = {key: statistics.median(values) for key, values in ratios.items()}
    check_cpu_us = _median(measurements, check, "nexus_cpu_us_per_call")
    checks_per_core = 1e6 / check_cpu_us if check_cpu_us > 0 else float("nan")
    # The same comparison in Nexus CPU per call (public / authenticated): what the QPS
    # ratio would be were the Nexus the only thing busy; steadier on a shared machine.
    cpu_ratio = {
        "grpc_api_key": _median(measurements, grpc_off, "nexus_cpu_us_per_call")
        / _median(measurements, grpc_key, "nexus_cpu_us_per_call"),
        "rest_api_key": _median(measurements, rest_off, "nexus_cpu_us_per_call")
        / _median(measurements, rest_key, "nexus_cpu_us_per_call"),
    }
    identity_cpu = {
        "grpc_api_key": _median(measurements, grpc_key, "nexus_cpu_us_per_call")
        - _median(measurements, grpc_off, "nexus_cpu_us_per_call"),
        "rest_api_key": _median(measurements, rest_key, "nexus_cpu_us_per_call")
        - _median(measurements, rest_off, "nexus_cpu_us_per_call"),
    }
    errors = sum(m.errors for m in measurements)
    return Result(
        name=NAME,
        description=DESCRIPTION,
        columns=["path", "qps", "p50 us", "p99 us", "nexus cpu us/call", "errors"],
        rows=rows,
        bars=[
            Bar(
                "gRPC entry: authenticated read QPS / public read QPS (API key)",
                ratio["grpc_api_key"],
                QPS_RATIO_BAR,
                ">=",
            ),
            Bar(
                "REST edge: authenticated read QPS / public read QPS (API key)",
                ratio["rest_api_key"],
                QPS_RATIO_BAR,
                ">=",
            ),
            Bar("failed requests", float(errors), 0.0, "<="),
        ],
        details={
            "quick": quick,
            "concurrency": CONCURRENCY,
            "ratios_by_round": ratios,
            "ratios": ratio,
            "identity_cpu_us_per_call": identity_cpu,
            "cpu_ratios": cpu_ratio,
            "check_qps": _median(measurements, check, "qps"),
            "checks_per_nexus_cpu_second": checks_per_core,
            "measurements": [asdict(m) for m in measurements],
        },
        notes=[
            f"auth on vs off (same entry, authenticated ListCollections / public GetStatus):"
            f" gRPC {ratio['grpc_api_key']:.2f} (API key), {ratio['grpc_bearer']:.2f} (bearer);"
            f" REST {ratio['rest_api_key']:.2f} (API key), {ratio['rest_bearer']:.2f} (bearer)",
            f"the two Lake calls straight to the Lake: ListCollections / GetStatus QPS"
            f" {ratio['lake_read_vs_status']:.2f} (the backend's own difference)",
            f"the same in Nexus CPU per call (public / authenticated, API key): gRPC"
            f" {cpu_ratio['grpc_api_key']:.2f}, REST {cpu_ratio['rest_api_key']:.2f}",
            f"identity's Nexus CPU per call (authenticated - public): gRPC"
            f" {identity_cpu['grpc_api_key']:.0f} us, REST {identity_cpu['rest_api_key']:.0f} us",
            f"Envoy Check: {_median(measurements, check, 'qps'):.0f} QPS with {CONCURRENCY} in"
            f" flight, {checks_per_core:.0f} checks per Nexus CPU-second (per core)",
            "token verification + permission decision p99 in process: see bench/policy",
            "2 shared cores run ghz/wrk, Nexus, the Lake and PostgreSQL together: ratios, not"
            " absolute QPS, are the result",
        ],
    )


def run() -> Result:
    return _run(quick=False)


if __name__ == "__main__":
    sys.exit(main_with_quick(_run, DESCRIPTION, "one round of 2 s per path"))
