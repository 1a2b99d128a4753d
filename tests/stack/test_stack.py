"""``datapunk up/down/status`` against the real engines, in a private data directory.

The module shares one running set of engines (the ``engines`` fixture); the tests run
in file order and leave the engines running for the next, except the last, which
kills the supervisor outright."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid

import psycopg
import pytest
import redis
from datapunk_shared.config import EngineSettings, load_settings
from datapunk_shared.probes import ENGINE_NAMES, build_probes, run_probe

from tests.stack.conftest import StackDir, free_ports, port_open

pytestmark = pytest.mark.timeout(400)


def _settings_of(stack: StackDir) -> EngineSettings:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(stack.env)
    try:
        return load_settings().engines
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _supervisor_pid(stack: StackDir) -> int:
    return int((stack.data_dir / "stack.pid").read_text())


def test_status_reports_every_engine_up(engines: StackDir) -> None:
    done = engines.cli("status")
    # The supervisor knows it started without services, so they do not count as down.
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ENGINE_NAMES:
        line = next(line for line in done.stdout.splitlines() if line.startswith(name))
        assert " up " in line, line
        assert " ms " in line, line
    assert "not started (--engines-only)" in done.stdout


async def test_probes_round_trip_on_every_real_engine(engines: StackDir) -> None:
    probes = build_probes(_settings_of(engines), ENGINE_NAMES)
    results = await asyncio.gather(*(run_probe(p, timeout=10) for p in probes))
    for result in results:
        assert result.reachable, result
        assert result.round_trip is not None
    # Warm, the Kafka produce-and-consume round-trip is well under the 2 s budget.
    kafka = await run_probe(probes[ENGINE_NAMES.index("kafka")], timeout=10)
    assert kafka.reachable
    assert kafka.round_trip is not None
    assert kafka.round_trip < 2.0


def test_postgres_has_the_datapunk_database_with_postgis(engines: StackDir) -> None:
    with psycopg.connect(engines.postgres_url) as conn:
        row = conn.execute("SELECT ST_AsText(ST_Buffer('POINT(0 0)'::geometry, 1, 1))").fetchone()
    assert row is not None
    assert row[0].startswith("POLYGON((1 0")


def test_clients_we_did_not_write_talk_to_kafka_and_mosquitto(engines: StackDir) -> None:
    broker = f"127.0.0.1:{engines.ports['kafka']}"
    meta = subprocess.run(
        ["kcat", "-b", broker, "-L"], capture_output=True, text=True, timeout=30, check=True
    )
    assert "1 brokers" in meta.stdout
    topic = f"datapunk/test/{uuid.uuid4().hex}"
    mqtt_port = str(engines.ports["mqtt"])
    with subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", mqtt_port, "-t", topic, "-C", "1", "-W", "20"],
        stdout=subprocess.PIPE,
        text=True,
    ) as sub:
        # Publish until the subscriber, which needs a moment to subscribe, has one.
        deadline = time.monotonic() + 20
        while sub.poll() is None and time.monotonic() < deadline:
            subprocess.run(
                ["mosquitto_pub", "-h", "127.0.0.1", "-p", mqtt_port, "-t", topic, "-m", "hi"],
                check=True,
                timeout=10,
            )
            time.sleep(0.2)
        out, _ = sub.communicate(timeout=20)
    assert out.strip() == "hi"


def test_up_twice_does_no_harm(engines: StackDir) -> None:
    pid = _supervisor_pid(engines)
    for args in (("up", "--detach", "--engines-only"), ("up", "--engines-only")):
        done = engines.cli(*args, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "already running" in done.stdout
        assert f"pid {pid}" in done.stdout
    assert _supervisor_pid(engines) == pid
    assert engines.cli("status").returncode == 0


def test_data_survives_down_and_up_and_ctrl_c_stops_in_reverse_order(engines: StackDir) -> None:
    marker = uuid.uuid4().hex
    with psycopg.connect(engines.postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS survives (marker text)")
        conn.execute("INSERT INTO survives VALUES (%s)", [marker])
    with redis.Redis.from_url(engines.redis_url) as r:
        r.set("survives", marker)

    done = engines.cli("down", timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    for port in (engines.ports["postgres"], engines.ports["kafka"], engines.ports["redis"]):
        assert not port_open(port), f"port {port} still open after down"
    down = engines.cli("status")
    assert down.returncode == 1
    assert "not running" in down.stdout
    assert "DOWN" in down.stdout

    # This time in the foreground, stopped with Ctrl-C (SIGINT to the supervisor).
    proc = engines.popen("up", "--engines-only")
    try:
        deadline = time.monotonic() + 300
        while engines.cli("status").returncode != 0:
            assert proc.poll() is None, f"up exited early:\n{engines.logs()}"
            assert time.monotonic() < deadline, engines.logs()
            time.sleep(1)
        with psycopg.connect(engines.postgres_url) as conn:
            rows = conn.execute("SELECT marker FROM survives").fetchall()
        assert (marker,) in rows
        with redis.Redis.from_url(engines.redis_url) as r:
            assert r.get("survives") == marker.encode()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    stops = [line.split()[-1] for line in out.splitlines() if "datapunk: stopping " in line]
    assert stops == ["redis", "mqtt", "kafka", "questdb", "postgres"], out
    assert "datapunk: stopped" in out

    # Back up, detached, for the tests after this one.
    done = engines.cli("up", "--detach", "--engines-only", timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr


def test_services_start_and_answer_health_against_unmanaged_engines(
    engines: StackDir, stack_dir: StackDir
) -> None:
    # A second stack that uses the first one's engines as existing servers
    # (managed = false) and runs the three services on free ports.
    stack_dir.ports.update(engines.ports)
    service_ports = free_ports(8)
    stack_dir.extra_env = {
        f"DATAPUNK_ENGINES__{name.upper()}__MANAGED": "false" for name in ENGINE_NAMES
    }
    for i, service in enumerate(("lake", "stream", "nexus")):
        stack_dir.extra_env[f"DATAPUNK_{service.upper()}__PORT"] = str(service_ports[2 * i])
        stack_dir.extra_env[f"DATAPUNK_{service.upper()}__METRICS_PORT"] = str(
            service_ports[2 * i + 1]
        )
    stack_dir.extra_env["DATAPUNK_NEXUS__GRPC_ENTRY__PORT"] = str(service_ports[6])
    stack_dir.extra_env["DATAPUNK_NEXUS__REST__PORT"] = str(service_ports[7])
    done = stack_dir.cli("up", "--detach", timeout=400)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{stack_dir.logs()}"
    for port in service_ports:
        assert f"127.0.0.1:{port}" in done.stdout
    status = stack_dir.cli("status")
    assert status.returncode == 0, status.stdout
    for service in ("lake", "stream", "nexus"):
        line = next(line for line in status.stdout.splitlines() if line.startswith(service))
        assert "health: SERVING" in line or "health: NOT_SERVING" in line, line
    lines = status.stdout.splitlines()
    entry = next(line for line in lines if line.startswith("nexus entry"))
    assert f"127.0.0.1:{service_ports[6]}" in entry, entry
    assert "health: SERVING" in entry, entry
    rest = next(line for line in lines if line.startswith("nexus rest"))
    assert f"http://127.0.0.1:{service_ports[7]}" in rest, rest
    assert "HTTP 200" in rest, rest
    done = stack_dir.cli("down", timeout=400)
    assert done.returncode == 0
    assert not any(port_open(p) for p in service_ports)
    # Engines it did not start are left alone.
    assert engines.cli("status").returncode == 0


def test_killing_the_supervisor_takes_the_engines_with_it(engines: StackDir) -> None:
    os.kill(_supervisor_pid(engines), signal.SIGKILL)
    ports = [engines.ports[name] for name in ("postgres", "questdb_pg", "kafka", "mqtt", "redis")]
    deadline = time.monotonic() + 30
    while any(port_open(p) for p in ports):
        assert time.monotonic() < deadline, [p for p in ports if port_open(p)]
        time.sleep(0.5)
    done = engines.cli("status")
    assert done.returncode == 1
    assert "supervisor: not running" in done.stdout


def test_a_port_in_use_is_refused_and_nothing_is_left_running(stack_dir: StackDir) -> None:
    import socket

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", stack_dir.ports["redis"]))
        squatter.listen(1)
        for args in (("up", "--engines-only"), ("up", "--detach", "--engines-only")):
            done = stack_dir.cli(*args, timeout=60)
            assert done.returncode == 1, done.stdout + done.stderr
            assert f"redis: port {stack_dir.ports['redis']} on 127.0.0.1 is already in use" in (
                done.stderr
            )
            # The check runs before anything starts: no other engine ever listened.
            for name in ("postgres", "questdb_pg", "kafka", "mqtt"):
                assert not port_open(stack_dir.ports[name])
            status = stack_dir.cli("status", "--engines-only")
            assert "supervisor: not running" in status.stdout


def test_a_missing_unmanaged_engine_is_named(stack_dir: StackDir) -> None:
    stack_dir.extra_env = {
        f"DATAPUNK_ENGINES__{name.upper()}__MANAGED": "false" for name in ENGINE_NAMES
    } | {"DATAPUNK_STACK__START_TIMEOUT": "2"}
    started = time.monotonic()
    done = stack_dir.cli("up", "--engines-only", timeout=60)
    assert done.returncode == 1
    assert "postgres (managed = false, so not started here) did not answer" in done.stderr
    assert time.monotonic() - started < 30
    status = stack_dir.cli("status", "--engines-only")
    assert status.returncode == 1
    for name in ENGINE_NAMES:
        line = next(line for line in status.stdout.splitlines() if line.startswith(name))
        assert "external engine" in line
        assert "DOWN" in line


def test_ctrl_c_while_starting_from_an_empty_dir_stops_everything(stack_dir: StackDir) -> None:
    proc = stack_dir.popen("up", "--engines-only")
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "postgres ready" in line:
                break
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert "datapunk: stopped" in out
    for name in ("postgres", "questdb_pg", "kafka", "mqtt", "redis"):
        assert not port_open(stack_dir.ports[name]), name
