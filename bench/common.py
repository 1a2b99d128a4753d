"""What every benchmark shares: percentiles, bars, a plain-text table, the JSON result
file, the command line of a benchmark run on its own, and the process helpers (free
ports, environments, starting a server, waiting for it to answer, stopping it).

A benchmark module exposes ``NAME`` (its result file name), ``DESCRIPTION`` and
``run() -> Result``; ``bench/run.py`` lists the modules it runs.

Credentials: every service started here trusts one issuer (``auth_env``), the test
suite's ``tests.auth_support.TestIssuer`` (an ES256 key whose JWKS this process serves
over HTTP, the way services fetch Nexus's keys), and a Nexus started here signs as it.
Calls to a service port carry what Nexus would send (``service_metadata``: its service
token plus the client it acts for); calls to a Nexus entry carry the bootstrap
administrator's API key (``api_key_metadata``). The benchmarks run from the repository's
root (``python -m bench.run``), where ``tests`` is importable."""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import grpc
import psycopg
from datapunk_shared.auth.interceptor import AUTHORIZATION_KEY, ON_BEHALF_KEY, encode_on_behalf
from datapunk_shared.config import load_settings
from psycopg import sql

from tests.auth_support import issuer, tenant_caller

__all__ = [
    "BENCH_DIR",
    "BIN",
    "LAKE_BIN",
    "REPO_ROOT",
    "RESULTS_DIR",
    "Authed",
    "Bar",
    "Metadata",
    "Result",
    "api_key_metadata",
    "auth_env",
    "clean_env",
    "closed_engines",
    "format_table",
    "free_port",
    "machine",
    "main_with_quick",
    "median",
    "percentile",
    "process_cpu_seconds",
    "require_file",
    "running_lake",
    "service_metadata",
    "start_logged",
    "stop_process",
    "summarize_latencies",
    "temporary_database",
    "wait_grpc",
    "wait_until",
    "write_result",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
BIN = Path(sys.executable).parent
"""Where the virtualenv's console scripts (``datapunk-lake`` and the others) are."""
LAKE_BIN = BIN / "datapunk-lake"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, linear between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    """The median of ``values``; NaN when there are none."""
    return statistics.median(values) if values else math.nan


def summarize_latencies(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean of per-call latencies, in microseconds."""
    if not seconds:
        return {"p50_us": math.nan, "p90_us": math.nan, "p99_us": math.nan, "mean_us": math.nan}
    ordered = sorted(seconds)
    return {
        "p50_us": percentile(ordered, 50) * 1e6,
        "p90_us": percentile(ordered, 90) * 1e6,
        "p99_us": percentile(ordered, 99) * 1e6,
        "mean_us": sum(ordered) / len(ordered) * 1e6,
    }


@dataclass(frozen=True)
class Bar:
    """One pass/fail criterion: ``value`` compared with ``limit``."""

    name: str
    value: float
    limit: float
    direction: Literal[">=", "<="]
    unit: str = ""

    @property
    def passed(self) -> bool:
        if math.isnan(self.value):
            return False
        return self.value >= self.limit if self.direction == ">=" else self.value <= self.limit

    def describe(self) -> str:
        return f"{_num(self.value)}{self.unit} {self.direction} {_num(self.limit)}{self.unit}"


@dataclass
class Result:
    """What one benchmark run produced: rows for its table, its bars, free-form details."""

    name: str
    description: str
    columns: list[str]
    rows: list[list[Any]]
    bars: list[Bar] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(bar.passed for bar in self.bars)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "passed": self.passed,
            "bars": [{**asdict(bar), "passed": bar.passed} for bar in self.bars],
            "table": {"columns": self.columns, "rows": self.rows},
            "details": self.details,
            "notes": self.notes,
        }


def machine() -> dict[str, Any]:
    """Enough about the machine to read a result file later."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
    }


def _num(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, numbers right-aligned."""
    cells = [[_num(value) for value in row] for row in rows]
    widths = [len(column) for column in columns]
    for row in cells:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))

    def line(values: Sequence[str], numeric: Sequence[bool]) -> str:
        return "  ".join(
            value.rjust(width) if is_number else value.ljust(width)
            for value, width, is_number in zip(values, widths, numeric, strict=True)
        ).rstrip()

    numeric_columns = [
        all(isinstance(row[index], int | float) for row in rows) if rows else False
        for index in range(len(columns))
    ]
    out = [line(list(columns), numeric_columns), line(["-" * w for w in widths], numeric_columns)]
    for row, raw in zip(cells, rows, strict=True):
        out.append(line(row, [isinstance(value, int | float) for value in raw]))
    return "\n".join(out)


def write_result(result: Result, directory: Path = RESULTS_DIR) -> Path:
    """Write ``<directory>/<name>.json`` and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{result.name}.json"
    path.write_text(json.dumps(result.to_json(), indent=2, sort_keys=False) + "\n")
    return path


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and all its threads so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def wait_until(check: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll ``check`` until it is true; raise TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} was not ready within {timeout:.0f}s")


def stop_process(process: subprocess.Popen[Any], *, grace: float = 10.0) -> int | None:
    """SIGTERM ``process`` (this process's child), then SIGKILL it after ``grace``."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        print(f"bench: pid {process.pid} ignored SIGTERM; killing it", file=sys.stderr)
        process.kill()
        return process.wait(timeout=grace)


def require_file(path: Path, how: str) -> None:
    """Raise FileNotFoundError when ``path`` is missing, saying to run ``how``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run {how}")


# --- the command line of a benchmark run on its own ------------------------------------


def main_with_quick(
    run: Callable[[bool], Result],
    description: str,
    quick_help: str,
    argv: Sequence[str] | None = None,
) -> int:
    """``python -m bench.<name> [--quick]``: run, print the table, the bars and the notes,
    write the result file; exit status 0."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    args = parser.parse_args(argv)
    result = run(args.quick)
    print(format_table(result.columns, result.rows))
    for bar in result.bars:
        print(f"  {'PASS' if bar.passed else 'FAIL'}  {bar.name}: {bar.describe()}")
    for note in result.notes:
        print(f"  note: {note}")
    print(f"wrote {write_result(result)}")
    return 0


# --- credentials -----------------------------------------------------------------------

Metadata = tuple[tuple[str, str], ...]

TOKEN_SECONDS = 3600
"""How long a service token minted here is valid: longer than any benchmark run."""


def auth_env() -> dict[str, str]:
    """The settings that make a service trust this process's issuer, and a Nexus sign as
    it (its signing key, API-key pepper and bootstrap administrator key as secrets)."""
    return issuer().env()


def service_metadata(service: str = "lake") -> Metadata:
    """Call metadata of Nexus forwarding a call of a client of the tenant ``default`` (whose
    Lake objects keep their plain names) to ``service``: Nexus's service token for
    ``datapunk:<service>`` and the client's identity."""
    token = issuer().token(audience=f"datapunk:{service}", ttl=TOKEN_SECONDS)
    return (
        (AUTHORIZATION_KEY, f"Bearer {token}"),
        (ON_BEHALF_KEY, encode_on_behalf(tenant_caller("default"))),
    )


def api_key_metadata() -> Metadata:
    """Call metadata (or HTTP header) of a client of a Nexus entry started with
    ``auth_env()``: the bootstrap administrator's API key, admin of the tenant default."""
    return (("x-api-key", issuer().admin_key),)


class Authed:
    """A generated stub (sync or aio) whose every call carries ``metadata``: per call, as
    Nexus sends it, so no client interceptor adds its own cost to what is measured."""

    def __init__(self, stub: Any, metadata: Metadata) -> None:
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, name: str) -> Any:
        method = functools.partial(getattr(self._stub, name), metadata=self._metadata)
        setattr(self, name, method)  # found without __getattr__ from now on
        return method


@contextmanager
def temporary_database() -> Iterator[str]:
    """The URL of a fresh database on the configured PostgreSQL server
    (``engines.postgres.url``), dropped on the way out. A Nexus started here keeps its
    schema, signing keys and API keys there, never in the stack's database."""
    server = load_settings().engines.postgres.url
    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# --- server processes ------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    """This process's environment without any DATAPUNK_* setting the caller may have."""
    return {key: value for key, value in os.environ.items() if not key.startswith("DATAPUNK_")}


def closed_engines(*engines: str) -> dict[str, str]:
    """Settings pointing each of ``engines`` (postgres, questdb, redis, kafka, mqtt) at a
    free loopback port nobody listens on: connection refused, rather than reaching
    someone's stack. The services start anyway (NOT_SERVING where they need it)."""
    urls: dict[str, Callable[[], dict[str, str]]] = {
        "postgres": lambda: {
            "DATAPUNK_ENGINES__POSTGRES__URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x"
        },
        "questdb": lambda: {
            "DATAPUNK_ENGINES__QUESTDB__HTTP_URL": f"http://127.0.0.1:{free_port()}",
            "DATAPUNK_ENGINES__QUESTDB__PG_URL": (
                f"postgresql://admin:quest@127.0.0.1:{free_port()}/qdb"
            ),
        },
        "redis": lambda: {"DATAPUNK_ENGINES__REDIS__URL": f"redis://127.0.0.1:{free_port()}/0"},
        "kafka": lambda: {"DATAPUNK_ENGINES__KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"},
        "mqtt": lambda: {"DATAPUNK_ENGINES__MQTT__URL": f"mqtt://127.0.0.1:{free_port()}"},
    }
    settings: dict[str, str] = {}
    for engine in engines:
        settings.update(urls[engine]())
    return settings


def start_logged(
    command: Sequence[str], *, env: Mapping[str, str], log: Path, cwd: Path
) -> subprocess.Popen[bytes]:
    """Start ``command`` in ``cwd`` with exactly ``env``, no stdin, stdout and stderr to
    the file ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            list(command),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_grpc(
    process: subprocess.Popen[Any],
    address: str,
    *,
    what: str,
    timeout: float = 60.0,
    probe: Callable[[grpc.Channel], object] | None = None,
    log: Path | None = None,
) -> None:
    """Wait until ``process`` answers gRPC on ``address``: ``probe(channel)`` returns
    without an RpcError (by default: the channel becomes ready within 0.5 s). Raise
    RuntimeError when the process exits, TimeoutError after ``timeout``."""

    def ready() -> bool:
        if process.poll() is not None:
            see = f"; see {log}" if log is not None else ""
            raise RuntimeError(f"{what}: pid {process.pid} exited with {process.returncode}{see}")
        with grpc.insecure_channel(address) as channel:
            try:
                if probe is None:
                    grpc.channel_ready_future(channel).result(timeout=0.5)
                else:
                    probe(channel)
            except (grpc.RpcError, grpc.FutureTimeoutError):
                return False
        return True

    wait_until(ready, timeout=timeout, what=what)


@contextmanager
def running_lake(
    workdir: Path,
    settings: Mapping[str, str],
    *,
    vectors: Path | None = None,
    probe: Callable[[grpc.Channel], object] | None = None,
    what: str = "the Lake",
) -> Iterator[str]:
    """A ``datapunk-lake`` on a free loopback port, configured by the repository's
    ``datapunk.toml``, none of the caller's DATAPUNK_* settings and then ``settings``; its
    vector shards in ``vectors`` (default ``workdir/vectors``), its log in
    ``workdir/lake.log``. It trusts this process's issuer (``auth_env``). Yields its address
    once it answers (see ``wait_grpc``), stops it on the way out."""
    port = free_port()
    env = clean_env()
    env.update(
        {
            "DATAPUNK_CONFIG": str(REPO_ROOT / "datapunk.toml"),
            "DATAPUNK_LAKE__PORT": str(port),
            "DATAPUNK_LAKE__METRICS_PORT": str(free_port()),
            "DATAPUNK_LAKE__VECTORS__PATH": str(vectors or workdir / "vectors"),
            **auth_env(),
        }
    )
    env.update(settings)
    log = workdir / "lake.log"
    process = start_logged([str(LAKE_BIN)], env=env, log=log, cwd=REPO_ROOT)
    address = f"127.0.0.1:{port}"
    try:
        wait_grpc(process, address, what=what, probe=probe, log=log)
        yield address
    finally:
        stop_process(process)
