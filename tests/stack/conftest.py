"""A private stack for the tests: its own data directory under /tmp and its own free
ports, so it never meets a developer's stack (or another test run) on the defaults."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DATAPUNK = Path(sys.executable).parent / "datapunk"


def _term_with_parent() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def free_ports(count: int) -> list[int]:
    """Distinct ports nothing listens on right now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class StackDir:
    """A working directory for ``datapunk`` with its environment (ports, data dir)."""

    root: Path
    ports: dict[str, int]
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def postgres_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.ports['postgres']}/datapunk"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.ports['redis']}/0"

    @property
    def env(self) -> dict[str, str]:
        p = self.ports
        env = {k: v for k, v in os.environ.items() if not k.startswith("DATAPUNK_")}
        env.update(
            {
                "DATAPUNK_STACK__DATA_DIR": str(self.data_dir),
                "DATAPUNK_STACK__START_TIMEOUT": "90",
                "DATAPUNK_ENGINES__POSTGRES__URL": self.postgres_url,
                "DATAPUNK_ENGINES__QUESTDB__HTTP_URL": f"http://127.0.0.1:{p['questdb_http']}",
                "DATAPUNK_ENGINES__QUESTDB__PG_URL": (
                    f"postgresql://admin:quest@127.0.0.1:{p['questdb_pg']}/qdb"
                ),
                "DATAPUNK_STACK__QUESTDB_MIN_HTTP_PORT": str(p["questdb_min"]),
                "DATAPUNK_ENGINES__KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{p['kafka']}",
                "DATAPUNK_STACK__KAFKA_CONTROLLER_PORT": str(p["kafka_controller"]),
                "DATAPUNK_ENGINES__MQTT__URL": f"mqtt://127.0.0.1:{p['mqtt']}",
                "DATAPUNK_ENGINES__REDIS__URL": self.redis_url,
                "DATAPUNK_NEXUS__GRPC_ENTRY__PORT": str(p["nexus_grpc_entry"]),
                "DATAPUNK_NEXUS__REST__PORT": str(p["nexus_rest"]),
            }
        )
        env.update(self.extra_env)
        return env

    def cli(self, *args: str, timeout: float = 200) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(DATAPUNK), *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """A foreground ``datapunk``; it gets SIGTERM (and so stops its engines) if
        the test process dies without stopping it."""
        return subprocess.Popen(
            [str(DATAPUNK), *args],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=_term_with_parent,
        )

    def logs(self) -> str:
        """Every log, for assertion messages when a start fails."""
        parts = []
        for log in sorted((self.data_dir / "logs").glob("*.log")):
            text = log.read_text(errors="replace")
            parts.append(f"== {log.name}\n{text[-3000:]}")
        return "\n".join(parts)


_PORT_NAMES = (
    "postgres",
    "questdb_http",
    "questdb_pg",
    "questdb_min",
    "kafka",
    "kafka_controller",
    "mqtt",
    "redis",
    "nexus_grpc_entry",
    "nexus_rest",
)


def new_stack_dir() -> StackDir:
    # Not pytest's tmp_path: that lives under a 0700 directory the postgres user (which
    # PostgreSQL runs as when the tests run as root) cannot enter.
    root = Path(tempfile.mkdtemp(prefix="datapunk-stack-", dir="/tmp"))
    root.chmod(0o711)
    return StackDir(
        root=root, ports=dict(zip(_PORT_NAMES, free_ports(len(_PORT_NAMES)), strict=True))
    )


def remove_stack_dir(stack: StackDir) -> None:
    """Stops whatever still runs there, then deletes the directory."""
    stack.cli("down", timeout=400)
    shutil.rmtree(stack.root, ignore_errors=True)


@pytest.fixture
def stack_dir() -> Iterator[StackDir]:
    """A fresh, empty stack directory (nothing started)."""
    stack = new_stack_dir()
    try:
        yield stack
    finally:
        remove_stack_dir(stack)


@pytest.fixture(scope="module")
def engines() -> Iterator[StackDir]:
    """The engines of a private stack, started detached with ``--engines-only``."""
    stack = new_stack_dir()
    try:
        done = stack.cli("up", "--detach", "--engines-only", timeout=400)
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{stack.logs()}"
        yield stack
    finally:
        remove_stack_dir(stack)
