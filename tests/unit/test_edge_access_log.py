"""The REST edge's access log (``datapunk_nexus.edge.access_log``): lines are written
shortly after their requests, off the request path, each with its own request id, and
none is lost when the edge stops."""

from __future__ import annotations

import asyncio

from datapunk_nexus.edge.access_log import AccessLog
from datapunk_shared.logging import request_id_var
from structlog.testing import capture_logs

from tests.edge_support import item_backend, rest_edge


async def test_a_line_is_written_after_the_delay_with_its_own_request_id() -> None:
    access = AccessLog(delay=0.01)
    token = request_id_var.set("another-request")
    try:
        with capture_logs() as logs:
            access.record(request_id="abc", method="GET", status=200)
            assert logs == []  # not on the request's path
            await asyncio.sleep(0.05)
    finally:
        request_id_var.reset(token)
    assert [(e["event"], e["request_id"], e["status"]) for e in logs] == [("http", "abc", 200)]


async def test_flush_soon_writes_once_the_ready_callbacks_ran() -> None:
    access = AccessLog(delay=60.0)
    with capture_logs() as logs:
        access.record(request_id="a", status=200)
        access.record(request_id="b", status=404)
        access.flush_soon()
        access.flush_soon()  # one flush for both
        assert logs == []
        await asyncio.sleep(0)
        assert [e["request_id"] for e in logs] == ["a", "b"]
        await asyncio.sleep(0)
    assert len(logs) == 2


async def test_stopping_the_edge_writes_the_pending_lines() -> None:
    async with item_backend() as (address, _):
        with capture_logs() as logs:
            async with rest_edge({"test": address}) as edge:
                edge.access_log = AccessLog(delay=60.0)  # nothing but the stop writes it
                reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
                writer.write(b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                await writer.drain()
                await reader.read()
                writer.close()
                await writer.wait_closed()
                assert [e for e in logs if e["event"] == "http"] == []
    assert [(e["path"], e["status"]) for e in logs if e["event"] == "http"] == [
        ("/v1/nothing", 404)
    ]
