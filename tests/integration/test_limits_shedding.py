"""Load shedding at Nexus's entries, end to end: a real Nexus whose gRPC entry and REST
edge share a concurrency bound of two calls for a route of a real Stream, and a Stream
kept busy (its Redis never answers, so a refreshed GetStatus waits for its probe). The
third call is refused at once with UNAVAILABLE / 503, reason OVERLOADED and retry
information; once the busy calls end their slots are free again."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import grpc
import pytest
from datapunk.stream.v1 import status_pb2, status_pb2_grpc
from datapunk_shared.config import load_settings
from datapunk_shared.errors import Unavailable
from datapunk_shared.rpc.client import error_from_rpc_error
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2

from tests.auth_support import entry_channel
from tests.support import (
    RunningService,
    engines_env,
    free_port,
    run_service,
    wait_for_grpc_health,
    wait_until,
)

ROUTE = "/datapunk.stream.v1.StatusService/GetStatus"
BOUND = 2
SLOW = status_pb2.GetStatusRequest(
    refresh=True, engines=["redis"], probe_timeout=duration_pb2.Duration(seconds=20)
)
stubs: object = status_pb2_grpc  # generated stubs are untyped


@dataclass
class Gated:
    stream: RunningService
    entry: str
    rest: str


def _in_flight(service: RunningService) -> float:
    """Calls ``service`` is working on now (its ``datapunk_rpc_in_flight`` gauges)."""
    url = f"http://127.0.0.1:{service.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("datapunk_rpc_in_flight{")
    )


async def _eventually(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gated]:
    tmp = tmp_path_factory.mktemp("shedding")
    hole = socket.socket()  # accepts connections (the kernel does), never answers
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    settings = load_settings()
    try:
        with ExitStack() as running:
            stream_env = {
                **engines_env(settings),
                "DATAPUNK_ENGINES__REDIS__URL": f"redis://127.0.0.1:{hole.getsockname()[1]}/0",
            }
            stream = running.enter_context(run_service("stream", tmp, stream_env))
            entry_port, rest_port = free_port(), free_port()
            bound = {"methods": [ROUTE], "max_in_flight": BOUND}
            nexus_env = {
                **engines_env(settings),
                "DATAPUNK_NEXUS__GRPC_ENTRY__PORT": str(entry_port),
                "DATAPUNK_NEXUS__REST__PORT": str(rest_port),
                "DATAPUNK_NEXUS__BACKENDS": json.dumps({"stream": stream.address}),
                "DATAPUNK_NEXUS__RATE_LIMITS__BACKEND": "memory",
                "DATAPUNK_NEXUS__RATE_LIMITS__CONCURRENCY": json.dumps([bound]),
            }
            nexus = running.enter_context(run_service("nexus", tmp, nexus_env))
            entry = f"127.0.0.1:{entry_port}"
            wait_for_grpc_health(entry)
            wait_until(lambda: nexus.health() == health_pb2.HealthCheckResponse.SERVING, timeout=30)
            yield Gated(stream, entry, f"http://127.0.0.1:{rest_port}")
    finally:
        hole.close()


def _rest_status(base: str) -> tuple[int, dict[str, str], dict[str, object]]:
    try:
        with urllib.request.urlopen(f"{base}/v1/stream/status", timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as refused:
        return refused.code, dict(refused.headers), json.loads(refused.read())


async def test_calls_over_the_bound_are_shed_at_once_with_retry_information(
    gated: Gated,
) -> None:
    async with entry_channel(gated.entry) as channel:
        stub = stubs.StatusServiceStub(channel)  # type: ignore[attr-defined]
        busy = [asyncio.ensure_future(stub.GetStatus(SLOW, timeout=60)) for _ in range(BOUND)]
        try:
            # Both slots taken (the Stream is working on both calls): the next call on
            # either entry is refused at once.
            await _eventually(lambda: _in_flight(gated.stream) >= BOUND)
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.GetStatus(status_pb2.GetStatusRequest(), timeout=10)
            refused = raised.value
            assert time.monotonic() - started < 1.0
            assert refused.code() is grpc.StatusCode.UNAVAILABLE
            shed = error_from_rpc_error(refused)
            assert isinstance(shed, Unavailable)
            assert shed.reason == "OVERLOADED"
            assert shed.retry_after is not None
            assert shed.retry_after > 0
            assert shed.metadata == {"route": ROUTE, "max_in_flight": str(BOUND)}
            trailing = dict(refused.trailing_metadata() or ())
            assert trailing.get("retry-after") == "1"

            status, headers, body = await asyncio.to_thread(_rest_status, gated.rest)
            assert status == 503
            assert headers.get("Retry-After") == "1"
            assert headers.get("Content-Type", "").startswith("application/json")
            assert body["code"] == grpc.StatusCode.UNAVAILABLE.value[0]
            details = body["details"]
            assert isinstance(details, list)
            assert any(d.get("reason") == "OVERLOADED" for d in details)
            assert any("retryDelay" in d for d in details)
        finally:
            for call in busy:
                call.cancel()
            await asyncio.gather(*busy, return_exceptions=True)

        # The cancelled calls gave their slots back: calls are admitted again.
        for _ in range(100):
            try:
                await stub.GetStatus(status_pb2.GetStatusRequest(), timeout=10)
                break
            except grpc.aio.AioRpcError as still:
                if still.code() is not grpc.StatusCode.UNAVAILABLE:
                    raise
                await asyncio.sleep(0.1)
        else:
            pytest.fail("slots were not released")
        for _ in range(2 * BOUND):  # more calls than slots, one after another
            await stub.GetStatus(status_pb2.GetStatusRequest(), timeout=10)
