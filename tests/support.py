"""Helpers the tests share: free ports, running a service as a real process."""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
from datapunk_shared.config import Settings, load_settings
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import conninfo, sql

from tests.auth_support import issuer

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RunningService:
    name: str
    address: str
    metrics_port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self, service: str = "") -> int:
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            status: int = response.status
            return status


def service_env(
    name: str, port: int, metrics_port: int, extra: Mapping[str, str]
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAPUNK_")}
    env.update(
        {
            f"DATAPUNK_{name.upper()}__PORT": str(port),
            f"DATAPUNK_{name.upper()}__METRICS_PORT": str(metrics_port),
            f"DATAPUNK_{name.upper()}__PROBE_INTERVAL": "0.5",
            "DATAPUNK_CONFIG": str(ROOT / "datapunk.toml"),
        }
    )
    env.update(extra)
    return env


def wait_for_health(address: str, process: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"service exited with {process.returncode} before answering")
        try:
            with grpc.insecure_channel(address) as channel:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                return
        except grpc.RpcError:
            time.sleep(0.1)
    raise TimeoutError(f"service at {address} did not answer health checks")


_nexus_database: str | None = None


def _drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@contextmanager
def private_database(server_url: str, prefix: str) -> Iterator[str]:
    """A new, empty database ``<prefix>_<random>`` on the PostgreSQL server of
    ``server_url`` (the stack's); yields its URL and drops it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin_url = conninfo.make_conninfo(server_url, dbname="postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield conninfo.make_conninfo(server_url, dbname=name)
    finally:
        _drop_database(admin_url, name)


@contextmanager
def private_redis_server(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A throwaway ``redis-server`` on 127.0.0.1:``port`` (no persistence), stopped
    afterwards: for tests that take Redis away."""
    process = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no"),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        process.terminate()
        process.wait(10)


def nexus_test_database() -> str:
    """The URL of a database, on the stack's PostgreSQL, for the Nexus processes the tests
    start (made once per test run, dropped at its end). The stack's own Nexus keeps its
    signing keys in the stack's database, and a test Nexus, which signs with the suite's
    key, must not take over (or be refused by) the installation's key ring."""
    global _nexus_database
    if _nexus_database is None:
        stack_url = load_settings().engines.postgres.url
        name = f"datapunk_tests_{os.getpid()}"
        admin_url = conninfo.make_conninfo(stack_url, dbname="postgres")
        _drop_database(admin_url, name)
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        atexit.register(_drop_database, admin_url, name)
        _nexus_database = conninfo.make_conninfo(stack_url, dbname=name)
    return _nexus_database


@contextmanager
def run_service(
    name: str, tmp_path: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[RunningService]:
    """Start ``datapunk-<name>`` on free ports and stop it (SIGTERM) afterwards.

    A Lake keeps its embedded vector shards under ``tmp_path/vectors`` (one process may
    hold a shard open), never in the repository's data dir, which the stack's Lake owns.
    A Nexus given the stack's database gets ``nexus_test_database()`` instead."""
    port, metrics_port = free_port(), free_port()
    log_path = tmp_path / f"{name}-{port}.log"
    env = {
        # Every service trusts the suite's test issuer, and a Nexus signs as it
        # (tests/auth_support.py); calls carry its tokens (authed_channel).
        **issuer().env(),
        "DATAPUNK_LAKE__VECTORS__PATH": str(tmp_path / "vectors"),
        # A Nexus's gRPC entry and REST edge get free ports, never the stack's 50050/8080.
        "DATAPUNK_NEXUS__GRPC_ENTRY__PORT": str(free_port()),
        "DATAPUNK_NEXUS__REST__PORT": str(free_port()),
        **(extra_env or {}),
    }
    if name == "nexus":
        stack_url = load_settings().engines.postgres.url
        if env.get("DATAPUNK_ENGINES__POSTGRES__URL", stack_url) == stack_url:
            env["DATAPUNK_ENGINES__POSTGRES__URL"] = nexus_test_database()
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [str(BIN / f"datapunk-{name}")],
            env=service_env(name, port, metrics_port, env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    service = RunningService(name, f"127.0.0.1:{port}", metrics_port, process, log_path)
    try:
        wait_for_health(service.address, process, time.monotonic() + 30)
        yield service
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until(
    predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


# How a client sees its server die under it: UNAVAILABLE when the connection drops
# between frames, INTERNAL when it drops mid-frame (the HTTP/2 stream is reset).
CONNECTION_LOST_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL})


def engines_env(settings: Settings) -> dict[str, str]:
    """Where the engines of ``settings`` are, as environment for a service process (which
    otherwise reads only datapunk.toml): a test's own engines reach its services."""
    engines = settings.engines
    return {
        "DATAPUNK_ENGINES__POSTGRES__URL": engines.postgres.url,
        "DATAPUNK_ENGINES__QUESTDB__HTTP_URL": engines.questdb.http_url,
        "DATAPUNK_ENGINES__QUESTDB__PG_URL": engines.questdb.pg_url,
        "DATAPUNK_ENGINES__KAFKA__BOOTSTRAP_SERVERS": engines.kafka.bootstrap_servers,
        "DATAPUNK_ENGINES__MQTT__URL": engines.mqtt.url,
        "DATAPUNK_ENGINES__REDIS__URL": engines.redis.url,
    }


def wait_for_grpc_health(address: str, timeout: float = 30.0) -> None:
    """Until a gRPC server at ``address`` answers a health check, whatever it says."""

    def answers() -> bool:
        with grpc.insecure_channel(address) as channel:
            try:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            except grpc.RpcError:
                return False
            return True

    wait_until(answers, timeout=timeout)
