"""``datapunk`` without engines: what it loads at start, ``down`` with nothing running,
the port check and the supervisor's lock and state file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from datapunk_shared.config import Settings
from datapunk_shared.probes import ENGINE_NAMES
from datapunk_stack.engines import all_engines
from datapunk_stack.layout import Layout, StackError
from datapunk_stack.pidfile import Lock, State, read_state, running_pid, write_state
from datapunk_stack.supervisor import check_ports

from tests.stack.conftest import StackDir, free_ports

# Client libraries only ``up`` (the supervisor) and ``status`` (the probes) need.
_HEAVY = ("grpc", "psycopg", "redis", "aiokafka", "aiomqtt")


def test_the_cli_loads_no_engine_client_until_a_command_needs_one() -> None:
    code = (
        "import sys, datapunk_stack.cli; "
        f"print(','.join(m for m in {_HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "", f"loaded at import: {done.stdout.strip()}"


def test_down_with_nothing_running_says_so(stack_dir: StackDir) -> None:
    done = stack_dir.cli("down", timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"no stack running in {stack_dir.data_dir}" in done.stdout


def test_every_engine_is_probed_like_the_services_probe_it() -> None:
    settings = Settings()
    engines = all_engines(settings, Layout.from_settings(settings))
    # The stack starts the engines in the order the probes list them.
    assert [e.name for e in engines] == list(ENGINE_NAMES)
    for engine in engines:
        probe = engine.probe()
        assert probe.name == engine.name
        assert type(probe).__name__.lower().startswith(engine.name.lower())


def test_check_ports_refuses_a_shared_port_and_one_in_use() -> None:
    port = free_ports(1)[0]
    with pytest.raises(StackError, match=f"redis and kafka are both configured to use port {port}"):
        check_ports([("kafka", "127.0.0.1", port), ("redis", "127.0.0.1", port)])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen(1)
        with pytest.raises(StackError, match=f"mqtt: port {port} on 127.0.0.1 is already in use"):
            check_ports([("mqtt", "127.0.0.1", port)])
    check_ports([("mqtt", "127.0.0.1", port)])  # free again


def test_the_lock_says_who_runs_and_is_gone_once_released(tmp_path: Path) -> None:
    layout = Layout(data_dir=tmp_path / "data", engines_lib=tmp_path, java=tmp_path / "java")
    assert running_pid(layout) is None
    lock = Lock.acquire(layout)
    assert lock is not None
    try:
        assert running_pid(layout) == os.getpid()
        assert Lock.acquire(layout) is None
    finally:
        lock.release()
    assert running_pid(layout) is None
    write_state(layout, State(pid=7, state="ready", endpoints=[("redis", "redis://x")]))
    state = read_state(layout)
    assert state is not None
    assert (state.pid, state.state, state.endpoints) == (7, "ready", [("redis", "redis://x")])
    layout.state_file.write_text("{not json")
    assert read_state(layout) is None
