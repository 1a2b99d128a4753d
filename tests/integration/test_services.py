"""Each service as a real process against the real engines: serving state, status RPC,
reflection, metrics, logs, tracing, and what happens when an engine goes away.

Status, health and reflection are public: every call here carries no credentials, on
purpose, and so shows they stay open now that every other call needs a service token
(tests/integration/test_service_auth.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from datapunk_shared.errors import InvalidArgument
from datapunk_shared.health import ServingState
from datapunk_shared.rpc.client import LakeClient, NexusClient, StreamClient
from datapunk_shared.rpc.interceptor import REQUEST_ID_KEY
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.support import free_port, run_service, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

CASES = [
    ("lake", LakeClient, {"postgres", "questdb"}),
    ("stream", StreamClient, {"kafka", "mqtt", "redis"}),
    ("nexus", NexusClient, {"postgres", "redis"}),
]


@pytest.mark.parametrize(("name", "client_class", "engines"), CASES)
async def test_service_serves_and_reports_its_engines(
    tmp_path: Path, name: str, client_class: type[LakeClient], engines: set[str]
) -> None:
    with run_service(name, tmp_path) as service:
        wait_until(lambda: service.health() == SERVING, timeout=30)
        full_name = f"datapunk.{name}.v1.StatusService"
        assert service.health(full_name) == SERVING
        async with client_class(service.address) as client:
            report = await client.get_status(refresh=True)
        assert report.service == name
        assert report.state is ServingState.SERVING
        assert report.version
        assert report.uptime > 0
        assert {e.probe.name for e in report.engines} == engines
        for engine in report.engines:
            assert engine.probe.reachable, engine.probe.error
            assert engine.probe.round_trip is not None
            assert engine.probe.round_trip > 0
            assert "quest@" not in engine.probe.endpoint  # passwords never leave


def test_reflection_lists_every_service(tmp_path: Path) -> None:
    with run_service("lake", tmp_path) as service, grpc.insecure_channel(service.address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(iter(stub.ServerReflectionInfo(iter([request]))))
        names = {s.name for s in response.list_services_response.service}
    assert {
        "datapunk.lake.v1.StatusService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names


async def test_not_serving_while_an_engine_is_down_and_serving_when_it_returns(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {"DATAPUNK_ENGINES__REDIS__URL": f"redis://127.0.0.1:{port}/0"}
    with run_service("nexus", tmp_path, env) as service:
        wait_until(lambda: service.health() == NOT_SERVING)
        async with NexusClient(service.address) as client:
            report = await client.get_status(refresh=True, probe_timeout=1)
            by_name = {e.probe.name: e.probe for e in report.engines}
            assert not by_name["redis"].reachable
            assert by_name["redis"].error
            assert by_name["postgres"].reachable
            assert report.state is ServingState.NOT_SERVING

            redis = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                stdout=subprocess.DEVNULL,
            )
            try:
                wait_until(lambda: service.health() == SERVING, timeout=20)
            finally:
                redis.terminate()
                redis.wait(10)
            wait_until(lambda: service.health() == NOT_SERVING, timeout=20)
        assert service.process.poll() is None, "the service must not exit when an engine dies"


async def test_unknown_engine_in_request_is_invalid_argument(tmp_path: Path) -> None:
    with run_service("stream", tmp_path) as service:
        async with StreamClient(service.address) as client:
            with pytest.raises(InvalidArgument) as caught:
                await client.get_status(engines=["postgres"])
    assert caught.value.violations[0].field == "engines[0]"
    assert caught.value.reason == "UNKNOWN_ENGINE"


def _blackhole() -> socket.socket:
    """A port that accepts connections (the kernel does) but never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    return listener


def test_sigterm_lets_in_flight_calls_finish_then_exits(tmp_path: Path) -> None:
    from datapunk.stream.v1 import status_pb2, status_pb2_grpc
    from google.protobuf import duration_pb2

    hole = _blackhole()
    env = {"DATAPUNK_ENGINES__REDIS__URL": f"redis://127.0.0.1:{hole.getsockname()[1]}/0"}
    try:
        with (
            run_service("stream", tmp_path, env) as service,
            grpc.insecure_channel(service.address) as channel,
        ):
            stub = status_pb2_grpc.StatusServiceStub(channel)
            request = status_pb2.GetStatusRequest(
                refresh=True, engines=["redis"], probe_timeout=duration_pb2.Duration(seconds=2)
            )
            future = stub.GetStatus.future(request, timeout=20)
            time.sleep(0.5)
            service.process.terminate()
            response = future.result()  # the in-flight call completes normally
            assert not response.status.engines[0].reachable
            started = time.monotonic()
            assert service.process.wait(timeout=15) == 0
            assert time.monotonic() - started < 15
            with pytest.raises(grpc.RpcError):
                stub.GetStatus(status_pb2.GetStatusRequest(), timeout=2)
        assert '"DRAINING"' in service.log()
    finally:
        hole.close()


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        from tests.support import BIN, service_env

        result = subprocess.run(
            [str(BIN / "datapunk-lake")],
            env=service_env("lake", port, free_port(), {}),
            capture_output=True,
            timeout=30,
            check=False,
        )
    finally:
        taken.close()
    assert result.returncode == 3
    assert f"127.0.0.1:{port}" in result.stderr.decode()


def test_invalid_configuration_refuses_to_start_naming_the_key(tmp_path: Path) -> None:
    from tests.support import BIN, service_env

    env = service_env("lake", free_port(), free_port(), {"DATAPUNK_LAKE__PROBE_TIMEOUT": "-1"})
    result = subprocess.run(
        [str(BIN / "datapunk-lake")], env=env, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert "lake.probe_timeout" in result.stderr.decode()


async def test_metrics_count_rpcs_by_code_and_logs_carry_request_ids(tmp_path: Path) -> None:
    from datapunk.lake.v1 import status_pb2, status_pb2_grpc

    with run_service("lake", tmp_path, {"DATAPUNK_LOG__ACCESS_LOG": "all"}) as service:
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = status_pb2_grpc.StatusServiceStub(channel)
            await stub.GetStatus(status_pb2.GetStatusRequest(), metadata=((REQUEST_ID_KEY, "t-1"),))
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetStatus(status_pb2.GetStatusRequest(engines=["X"]))
        url = f"http://127.0.0.1:{service.metrics_port}/metrics"

        def metrics() -> str:
            with urllib.request.urlopen(url, timeout=5) as response:
                found: str = response.read().decode()
                return found

        # The engine gauges appear once the health monitor's first probes have finished,
        # which on a busy machine can be after the calls above.
        engine_up = 'datapunk_engine_up{engine="postgres",service="lake"}'
        wait_until(lambda: engine_up in metrics())
        text = metrics()
        method = "/datapunk.lake.v1.StatusService/GetStatus"
        assert f'datapunk_rpc_total{{code="OK",method="{method}",service="lake"}} 1.0' in text
        assert 'code="INVALID_ARGUMENT"' in text
        assert "datapunk_rpc_duration_seconds_bucket" in text

        wait_until(lambda: '"t-1"' in service.log())
        lines = [json.loads(line) for line in service.log().splitlines() if line.startswith("{")]
        access = [line for line in lines if line.get("request_id") == "t-1"]
        assert access
        assert access[0]["msg"] == "rpc"
        assert access[0]["code"] == "OK"


async def test_default_access_log_records_failures_only(tmp_path: Path) -> None:
    from datapunk.lake.v1 import status_pb2, status_pb2_grpc

    with run_service("lake", tmp_path) as service:
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = status_pb2_grpc.StatusServiceStub(channel)
            await stub.GetStatus(
                status_pb2.GetStatusRequest(), metadata=((REQUEST_ID_KEY, "ok-1"),)
            )
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetStatus(
                    status_pb2.GetStatusRequest(engines=["X"]),
                    metadata=((REQUEST_ID_KEY, "bad-1"),),
                )
        wait_until(lambda: '"bad-1"' in service.log())
        assert '"ok-1"' not in service.log()


async def test_tracing_is_off_by_default_and_exports_spans_when_configured(
    tmp_path: Path,
) -> None:
    method = "/datapunk.stream.v1.StatusService/GetStatus"
    for exporter, expect_span in (("none", False), ("console", True)):
        env = {"DATAPUNK_TRACING__EXPORTER": exporter}
        with run_service("stream", tmp_path, env) as service:
            async with StreamClient(service.address) as client:
                await client.get_status()
        log = service.log()
        assert (f'"name": "{method}"' in log) is expect_span, exporter


def test_a_configuration_problem_found_at_setup_refuses_to_start_without_a_traceback(
    tmp_path: Path,
) -> None:
    """The settings load, but a file they name is missing: found while the Nexus sets up
    (its Envoy listener), and refused like an invalid setting (exit 2, the reason on
    stderr) at once, not with a traceback, and not after hanging on what setup had
    already opened."""
    from tests.auth_support import issuer
    from tests.support import BIN, nexus_test_database, service_env

    missing = tmp_path / "absent.crt"
    env = service_env(
        "nexus",
        free_port(),
        free_port(),
        {
            **issuer().env(),
            "DATAPUNK_ENGINES__POSTGRES__URL": nexus_test_database(),
            "DATAPUNK_NEXUS__GRPC_ENTRY__PORT": str(free_port()),
            "DATAPUNK_NEXUS__REST__PORT": str(free_port()),
            "DATAPUNK_NEXUS__ENVOY_SERVICES__ENABLED": "true",
            "DATAPUNK_NEXUS__ENVOY_SERVICES__PORT": str(free_port()),
            "DATAPUNK_NEXUS__ENVOY_SERVICES__TLS_CERT": str(missing),
            "DATAPUNK_NEXUS__ENVOY_SERVICES__CLIENT_CA": str(missing),
        },
    )
    # A pool still connecting when setup failed kept the process from exiting: the
    # timeout catches that.
    result = subprocess.run(
        [str(BIN / "datapunk-nexus")], env=env, capture_output=True, timeout=60, check=False
    )
    stderr = result.stderr.decode()
    returncode = result.returncode
    assert returncode == 2, stderr
    assert str(missing) in stderr
    assert "Traceback" not in stderr
