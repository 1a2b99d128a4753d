"""The REST edge over real sockets in front of a real in-process gRPC backend (the
synthetic contract of tests/edge_protos): transcoding, errors, streams, protection."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from datapunk_nexus.edge import server as edge_server
from datapunk_nexus.edge.server import RestEdge
from datapunk_nexus.policy import CallInfo
from datapunk_shared.errors import ResourceExhausted, Unavailable
from structlog.testing import capture_logs

from tests.edge_support import REFUSED, ItemBackend, item_backend, rest_edge
from tests.support import free_port


@pytest.fixture
async def backend() -> AsyncIterator[tuple[str, ItemBackend]]:
    async with item_backend() as found:
        yield found


@pytest.fixture
async def edge(backend: tuple[str, ItemBackend]) -> AsyncIterator[RestEdge]:
    async with rest_edge({"test": backend[0]}, route_timeout=5.0) as started:
        yield started


@asynccontextmanager
async def client(edge: RestEdge) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    async with aiohttp.ClientSession() as session:
        yield session, f"http://127.0.0.1:{edge.port}"


async def call(
    edge: RestEdge,
    method: str,
    path: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Mapping[str, str], Any]:
    data = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body)
    async with (
        client(edge) as (session, base),
        session.request(method, base + path, data=data, headers=headers) as response,
    ):
        raw = await response.read()
        assert response.content_type != "text/plain"
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw
        return response.status, response.headers, parsed


async def raw_request(port: int, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (clients normalise paths; attackers do not)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head_part, _, body = data.partition(b"\r\n\r\n")
    lines = head_part.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return int(lines[0].split()[1]), headers, body


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, body = out + body[:size], body[size + 2 :]
    return out


def reason_of(status: Any) -> str:
    infos = [d for d in status["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    reason: str = infos[0]["reason"]
    return reason


def violations_of(status: Any) -> list[dict[str, str]]:
    for detail in status["details"]:
        if detail["@type"].endswith("google.rpc.BadRequest"):
            found: list[dict[str, str]] = detail["fieldViolations"]
            return found
    return []


# --- transcoding ----------------------------------------------------------------------


async def test_path_query_and_proto3_json_mapping(edge: RestEdge) -> None:
    query = (
        "count=5&kind=KIND_SMALL&tags=x&tags=y&inner.level=3&at=2024-01-01T00:00:00Z"
        "&wait=1.5s&flag=true&limit=7&mask=count,inner.level&score=NaN"
    )
    status, headers, item = await call(edge, "GET", f"/v1/test/shelves/a/items/b%20c?{query}")
    assert status == 200, item
    assert headers["Content-Type"] == "application/json"
    assert item["name"] == "shelves/a/items/b c"
    assert item["count"] == "5"  # int64 as a string
    assert item["kind"] == "KIND_SMALL"
    assert item["tags"] == ["x", "y"]
    assert item["inner"] == {"level": 3, "label": ""}
    assert item["at"] == "2024-01-01T00:00:00Z"
    assert item["wait"] == "1.500s"
    assert item["mask"] == "count,inner.level"
    assert item["flag"] is True
    assert item["limit"] == 7
    assert item["score"] == "NaN"


async def test_additional_binding_and_v2_package(edge: RestEdge) -> None:
    status, _, item = await call(edge, "GET", "/v1/test/items/plain")
    assert (status, item["name"]) == (200, "plain")
    status, _, item = await call(edge, "GET", "/v2/test/items/q?colour=red")
    assert (status, item) == (200, {"name": "items/q", "colour": "red"})


async def test_field_body_and_nested_path_variable(edge: RestEdge) -> None:
    status, _, item = await call(
        edge, "POST", "/v1/test/shelves/a/items?requestId=r1", {"count": 12, "score": 1.5}
    )
    assert status == 200, item
    assert (item["name"], item["count"], item["score"]) == ("shelves/a/items/new", "12", 1.5)
    status, _, item = await call(
        edge, "PATCH", "/v1/test/shelves/a/items/b?updateMask=count", {"count": "3"}
    )
    assert status == 200, item
    assert (item["name"], item["count"], item["mask"]) == ("shelves/a/items/b", "3", "count")


async def test_star_body_and_response_body(edge: RestEdge) -> None:
    status, _, item = await call(edge, "POST", "/v1/test/control", {"item": {"name": "x"}})
    assert (status, item["name"]) == (200, "x")


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "field", "reason"),
    [
        ("POST", "/v1/test/control", "{bad", "body", "MALFORMED_JSON"),
        ("POST", "/v1/test/control", "[1]", "body", "INVALID_VALUE"),
        ("POST", "/v1/test/control", {"item": {"nope": 1}}, "item.nope", "UNKNOWN_FIELD"),
        ("POST", "/v1/test/control", {"failCode": "abc"}, "failCode", "INVALID_VALUE"),
        ("POST", "/v1/test/control", {"item": {"kind": "BAD"}}, "item.kind", "INVALID_VALUE"),
        ("POST", "/v1/test/control?x=1", {}, "x", "UNKNOWN_QUERY_PARAMETER"),
        ("GET", "/v1/test/items/a?bogus=1", None, "bogus", "UNKNOWN_QUERY_PARAMETER"),
        ("GET", "/v1/test/items/a?count=ten", None, "count", "INVALID_VALUE"),
        ("GET", "/v1/test/items/a?flag=yes", None, "flag", "INVALID_VALUE"),
        ("GET", "/v1/test/items/a?count=1&count=2", None, "count", "DUPLICATE_FIELD"),
        ("GET", "/v1/test/items/a?labels=x", None, "labels", "NOT_A_LEAF"),
        ("GET", "/v1/test/items/a", "{}", "body", "UNEXPECTED_BODY"),
        (
            "PATCH",
            "/v1/test/shelves/a/items/b",
            {"name": "other"},
            "item.name",
            "BINDING_COLLISION",
        ),
    ],
)
async def test_bad_requests_are_400_with_bad_request_details(
    edge: RestEdge, method: str, path: str, body: Any, field: str, reason: str
) -> None:
    status, headers, error = await call(edge, method, path, body)
    assert status == 400, error
    assert headers["Content-Type"] == "application/json"
    assert error["code"] == 3
    assert reason_of(error) == reason
    assert [v["field"] for v in violations_of(error)] == [field]


async def test_backend_errors_keep_their_details(edge: RestEdge) -> None:
    status, _, error = await call(edge, "POST", "/v1/test/control", {"failCode": 3})
    assert status == 400
    assert reason_of(error) == "BAD_ITEM"
    assert violations_of(error) == [
        {"field": "item.name", "description": "must not be empty", "reason": "required"}
    ]
    status, headers, error = await call(edge, "POST", "/v1/test/control", {"failCode": 14})
    assert (status, headers["Retry-After"]) == (503, "2")
    assert any(
        d["@type"].endswith("RetryInfo") and d["retryDelay"] == "2s" for d in error["details"]
    )
    status, headers, error = await call(edge, "POST", "/v1/test/control", {"failCode": 8})
    assert (status, headers["Retry-After"], error["code"]) == (429, "3", 8)
    status, _, error = await call(edge, "POST", "/v1/test/control", {"failCode": 5})
    assert (status, reason_of(error)) == (404, "ITEM_NOT_FOUND")


async def test_unknown_route_404_and_wrong_method_405(edge: RestEdge) -> None:
    status, _, error = await call(edge, "GET", "/v1/nothing/here")
    assert (status, error["code"], reason_of(error)) == (404, 5, "ROUTE_NOT_FOUND")
    status, headers, error = await call(edge, "DELETE", "/v1/test/items/a")
    assert (status, headers["Allow"], reason_of(error)) == (405, "GET", "METHOD_NOT_ALLOWED")


async def test_backend_down_is_503_with_retry_information() -> None:
    async with rest_edge({"test": f"127.0.0.1:{free_port()}"}) as edge:
        status, headers, error = await call(edge, "GET", "/v1/test/items/a")
    assert (status, error["code"], reason_of(error)) == (503, 14, "BACKEND_UNAVAILABLE")
    assert headers["Retry-After"] == "1"
    assert any(d["@type"].endswith("RetryInfo") for d in error["details"])


async def test_slow_backend_is_504_per_route_timeout(backend: tuple[str, ItemBackend]) -> None:
    timeouts = {"/datapunk.test.v1.ItemService/Control": 0.2}
    async with rest_edge({"test": backend[0]}, route_timeouts=timeouts) as edge:
        status, _, error = await call(edge, "POST", "/v1/test/control", {"sleep": "3s"})
        assert (status, error["code"], reason_of(error)) == (504, 4, "BACKEND_TIMEOUT")
        # A client's grpc-timeout shortens the route's deadline too.
    async with rest_edge({"test": backend[0]}) as edge:
        status, _, error = await call(
            edge, "POST", "/v1/test/control", {"sleep": "3s"}, headers={"grpc-timeout": "200m"}
        )
        assert (status, reason_of(error)) == (504, "BACKEND_TIMEOUT")


async def test_huge_body_is_413(backend: tuple[str, ItemBackend]) -> None:
    async with rest_edge({"test": backend[0]}, max_body_bytes=2048) as edge:
        body = json.dumps({"item": {"name": "x" * 5000}})
        status, _, error = await call(edge, "POST", "/v1/test/control", body)
        assert (status, reason_of(error)) == (413, "REQUEST_TOO_LARGE")
        # Chunked, without a Content-Length.
        head = (
            b"POST /v1/test/control HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % 5000
            + b"{" * 5000
            + b"\r\n0\r\n\r\n"
        )
        status, _, raw = await raw_request(edge.port, head)
        assert (status, reason_of(json.loads(raw))) == (413, "REQUEST_TOO_LARGE")


async def test_huge_headers_are_431_json(backend: tuple[str, ItemBackend]) -> None:
    async with rest_edge({"test": backend[0]}, max_header_bytes=2048) as edge:
        many = "".join(f"X-Pad-{i}: {'v' * 100}\r\n" for i in range(30))
        status, headers, raw = await raw_request(
            edge.port,
            f"GET /v1/test/items/a HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n".encode(),
        )
        assert (status, headers["content-type"]) == (431, "application/json")
        assert reason_of(json.loads(raw)) == "HEADERS_TOO_LARGE"
        one = "v" * 4000  # a single line over aiohttp's parser limit
        status, headers, raw = await raw_request(
            edge.port, f"GET /v1/test/items/a HTTP/1.1\r\nHost: x\r\nX-Big: {one}\r\n\r\n".encode()
        )
        assert (status, headers["content-type"]) == (431, "application/json")
        assert json.loads(raw)["code"] == 8


@pytest.mark.parametrize(
    "path",
    [
        "/v1/test/items/../../etc/passwd",
        "/v1/test/items/%2e%2e/x",
        "/v1/test/items/%2E%2E",
        "/v1/test/items/%252e%252e/x",
        "/v1/test/items/a%2Fb",
        "/v1/test/items/a%5cb",
        "/v1/test/items/a\\b",
        "/v1/test//items/a",
        "/v1/test/./items/a",
    ],
)
async def test_traversal_and_double_encoding_are_refused(edge: RestEdge, path: str) -> None:
    status, headers, raw = await raw_request(
        edge.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert (status, headers["content-type"]) == (400, "application/json")
    assert reason_of(json.loads(raw)) == "PATH_NOT_NORMALIZED"


async def test_invalid_path_parameter_is_400(edge: RestEdge) -> None:
    status, _, raw = await raw_request(
        edge.port, b"GET /v1/test/items/%ff%fe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status == 400
    assert json.loads(raw)["code"] == 3


# --- headers, request ids, metadata -----------------------------------------------------


async def test_security_headers_and_request_id(edge: RestEdge) -> None:
    status, headers, _ = await call(
        edge,
        "POST",
        "/v1/test/control",
        {},
        headers={"x-request-id": "abc-123", "Authorization": "Bearer t", "Cookie": "s=1"},
    )
    assert status == 200
    assert headers["X-Request-Id"] == "abc-123"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Strict-Transport-Security"].startswith("max-age=")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    status, headers, _ = await call(edge, "GET", "/v1/nothing")
    assert status == 404
    assert len(headers["X-Request-Id"]) == 16  # made up when missing, errors included
    assert headers["X-Frame-Options"] == "DENY"


async def test_the_access_log_line_follows_the_answer(
    edge: RestEdge, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps: list[str] = []
    send = edge_server._send

    async def recorded_send(request: Any, response: Any) -> None:
        await send(request, response)
        steps.append(f"sent {response.status}")

    monkeypatch.setattr(edge_server, "_send", recorded_send)
    with capture_logs() as logs:
        status, _, _ = await call(edge, "POST", "/v1/test/control", {})
        await asyncio.sleep(0.05)  # past the access log's delay
        steps.extend(f"logged {e['status']}" for e in logs if e["event"] == "http")
    assert status == 200
    assert steps == ["sent 200", "logged 200"]


async def test_a_client_that_hangs_up_before_its_answer(edge: RestEdge) -> None:
    body = b'{"sleep": "0.3s"}'
    with capture_logs() as logs:
        _, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        writer.write(
            b"POST /v1/test/control HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        await writer.drain()
        writer.close()  # gone before the backend answers
        await writer.wait_closed()
        await asyncio.sleep(0.6)
        # The edge wrote its log line, raised nothing, and serves the next client.
        status, _, _ = await call(edge, "POST", "/v1/test/control", {})
        await asyncio.sleep(0.05)  # past the access log's delay
    assert status == 200
    lines = [e for e in logs if e["event"] == "http"]
    assert [e["status"] for e in lines] == [200, 200]
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]


async def test_gate_sees_the_call_and_adds_its_headers(edge: RestEdge) -> None:
    seen: list[CallInfo] = []

    class Recorder:
        @asynccontextmanager
        async def admit(self, info: CallInfo) -> AsyncIterator[Mapping[str, str]]:
            seen.append(info)
            yield {"RateLimit-Remaining": "9"}

        async def check_rate(self, info: CallInfo) -> Mapping[str, str]:
            seen.append(info)
            return {"RateLimit-Remaining": "9"}

    async with rest_edge(edge.backends.addresses, gate=Recorder()) as gated:
        status, headers, _ = await call(gated, "GET", "/v1/test/items/a")
    assert status == 200
    assert headers["RateLimit-Remaining"] == "9"
    assert [(i.method, i.client_ip) for i in seen] == [
        ("/datapunk.test.v1.ItemService/GetItem", "127.0.0.1")
    ]
    assert seen[0].request  # the serialized request, for cache keys


async def test_request_id_reaches_the_backend_credentials_and_cookies_do_not(
    backend: tuple[str, ItemBackend],
) -> None:
    # The caller's credentials stay at the edge (Nexus sends its own service token and
    # the caller's identity instead, see AccessGuard); so does a claimed on-behalf-of.
    address, items = backend
    async with rest_edge({"test": address}) as edge:
        await call(
            edge,
            "POST",
            "/v1/test/control",
            {},
            headers={
                "x-request-id": "rid-7",
                "Authorization": "Bearer t",
                "x-api-key": "dpk_a_b",
                "x-datapunk-on-behalf-of": "{}",
                "Cookie": "c=1",
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            },
        )
    received = items.metadata_seen[-1]
    assert received["x-request-id"] == "rid-7"
    assert received["x-forwarded-for"] == "127.0.0.1"
    assert received["traceparent"].startswith("00-0af7651916cd43dd")
    for withheld in ("authorization", "x-api-key", "x-datapunk-on-behalf-of", "cookie"):
        assert withheld not in received


# --- policies ---------------------------------------------------------------------------


class RefusingGate:
    def __init__(self, error: Exception) -> None:
        self.error = error

    @asynccontextmanager
    async def admit(self, info: CallInfo) -> AsyncIterator[Mapping[str, str]]:
        raise self.error
        yield {}  # pragma: no cover

    async def check_rate(self, info: CallInfo) -> Mapping[str, str]:
        raise self.error


@pytest.mark.parametrize(
    ("error", "http"),
    [
        (
            ResourceExhausted(
                "over the limit",
                retry_after=1.5,
                reason="RATE_LIMITED",
                metadata={"limit": "10", "remaining": "0"},
            ),
            429,
        ),
        (Unavailable("shed", retry_after=0.2), 503),
    ],
)
async def test_gate_refusals(backend: tuple[str, ItemBackend], error: Exception, http: int) -> None:
    async with rest_edge({"test": backend[0]}, gate=RefusingGate(error)) as edge:
        status, headers, body = await call(edge, "GET", "/v1/test/items/a")
    assert status == http
    assert body["code"] in (8, 14)
    if http == 429:
        assert headers["Retry-After"] == "2"
        assert (headers["RateLimit-Limit"], headers["RateLimit-Remaining"]) == ("10", "0")
    else:
        assert headers["Retry-After"] == "1"


class MemoryCache:
    def __init__(self) -> None:
        self.entries: dict[bytes, bytes] = {}
        self.hits = 0
        self.after: list[str] = []

    def cacheable(self, method: str) -> bool:
        return method.endswith("/GetItem")

    async def get(self, info: CallInfo) -> bytes | None:
        found = self.entries.get(info.request)
        self.hits += found is not None
        return found

    async def put(self, info: CallInfo, response: bytes) -> None:
        self.entries[info.request] = response

    async def after_call(self, info: CallInfo) -> None:
        self.after.append(info.method)


async def test_cacheable_reads_consult_the_cache(backend: tuple[str, ItemBackend]) -> None:
    cache = MemoryCache()
    async with rest_edge({"test": backend[0]}, cache=cache) as edge:
        first = await call(edge, "GET", "/v1/test/items/a?count=1")
        second = await call(edge, "GET", "/v1/test/items/a?count=1")
    assert first[2] == second[2]
    assert cache.hits == 1
    # Every successful call not answered from the cache is reported (writes invalidate).
    assert cache.after == ["/datapunk.test.v1.ItemService/GetItem"]


# --- CORS and IP lists ------------------------------------------------------------------


async def test_cors_preflight_and_actual_request(edge: RestEdge) -> None:
    origin = "http://localhost:8080"
    status, headers, _ = await call(
        edge,
        "OPTIONS",
        "/v1/test/items/a",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == origin
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert "GET" in headers["Access-Control-Allow-Methods"]
    status, headers, _ = await call(edge, "GET", "/v1/test/items/a", headers={"Origin": origin})
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == origin
    assert "x-request-id" in headers["Access-Control-Expose-Headers"]

    evil = "http://evil.example"
    status, headers, error = await call(
        edge,
        "OPTIONS",
        "/v1/test/items/a",
        headers={"Origin": evil, "Access-Control-Request-Method": "GET"},
    )
    assert (status, reason_of(error)) == (403, "CORS_ORIGIN_NOT_ALLOWED")
    assert "Access-Control-Allow-Origin" not in headers
    status, headers, _ = await call(edge, "GET", "/v1/test/items/a", headers={"Origin": evil})
    assert "Access-Control-Allow-Origin" not in headers  # the browser will not let it read
    status, _, error = await call(
        edge,
        "OPTIONS",
        "/v1/test/items/a",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "x-secret",
        },
    )
    assert (status, reason_of(error)) == (403, "CORS_HEADER_NOT_ALLOWED")


async def test_ip_deny_and_allow_lists(backend: tuple[str, ItemBackend]) -> None:
    async with rest_edge({"test": backend[0]}, ip_deny=["127.0.0.0/8"]) as edge:
        status, _, error = await call(edge, "GET", "/v1/test/items/a")
        assert (status, reason_of(error)) == (403, "IP_NOT_ALLOWED")
    async with rest_edge({"test": backend[0]}, ip_allow=["10.0.0.0/8"]) as edge:
        status, _, _ = await call(edge, "GET", "/v1/test/items/a")
        assert status == 403
        # A forged X-Forwarded-For from an untrusted peer changes nothing.
        status, _, _ = await call(
            edge, "GET", "/v1/test/items/a", headers={"X-Forwarded-For": "10.1.2.3"}
        )
        assert status == 403
    async with rest_edge(
        {"test": backend[0]}, ip_allow=["10.0.0.0/8"], trusted_proxies=["127.0.0.1/32"]
    ) as edge:
        # From a trusted proxy, the right-most untrusted hop is the client.
        status, _, _ = await call(
            edge, "GET", "/v1/test/items/a", headers={"X-Forwarded-For": "10.1.2.3"}
        )
        assert status == 200
        status, _, _ = await call(
            edge, "GET", "/v1/test/items/a", headers={"X-Forwarded-For": "10.1.2.3, 192.0.2.9"}
        )
        assert status == 403


# --- streams ----------------------------------------------------------------------------


async def test_server_stream_as_ndjson_and_sse(edge: RestEdge) -> None:
    status, headers, raw = await raw_request(
        edge.port,
        b"GET /v1/test/shelves/s/items:watch?count=3 HTTP/1.1\r\nHost: x\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert (status, headers["content-type"]) == (200, "application/x-ndjson")
    lines = [json.loads(line) for line in raw.splitlines()]
    assert [line["name"] for line in lines] == [f"shelves/s/items/{i}" for i in range(3)]
    status, headers, raw = await raw_request(
        edge.port,
        b"GET /v1/test/shelves/s/items:watch?count=2&failCode=14 HTTP/1.1\r\nHost: x\r\n"
        b"Accept: text/event-stream\r\nConnection: close\r\n\r\n",
    )
    assert (status, headers["content-type"]) == (200, "text/event-stream")
    events = raw.decode().split("\n\n")
    assert events[0].startswith("data: {")
    assert events[2].startswith("event: error\ndata: ")
    assert json.loads(events[2].split("data: ", 1)[1])["code"] == 14


async def test_server_stream_error_before_the_first_message_is_a_real_status(
    edge: RestEdge,
) -> None:
    status, _, error = await call(edge, "GET", "/v1/test/shelves/s/items:watch?failCode=5")
    assert (status, reason_of(error)) == (404, "ITEM_NOT_FOUND")


async def test_server_stream_error_after_messages_is_an_error_line(edge: RestEdge) -> None:
    status, _, raw = await call(edge, "GET", "/v1/test/shelves/s/items:watch?count=1&failCode=3")
    assert status == 200
    lines = [json.loads(line) for line in raw.splitlines()]
    assert lines[-1]["error"]["code"] == 3


async def test_client_stream_and_bidi_take_ndjson(edge: RestEdge) -> None:
    body = '{"name": "a"}\n\n{"name": "b"}\n{"name": "c"}'  # blank lines, no final newline
    status, _, response = await call(edge, "POST", "/v1/test/items:upload", body)
    assert (status, response) == (200, {"count": 3, "names": ["a", "b", "c"]})
    status, _, raw = await call(edge, "POST", "/v1/test/items:chat", body)
    assert status == 200
    assert [json.loads(line)["name"] for line in raw.splitlines()] == ["a", "b", "c"]


async def test_a_bad_line_in_a_client_stream_is_400_naming_the_line(edge: RestEdge) -> None:
    body = '{"name": "a"}\n{"nope": 1}\n{"name": "c"}\n'
    status, _, error = await call(edge, "POST", "/v1/test/items:upload", body)
    assert (status, reason_of(error)) == (400, "UNKNOWN_FIELD")
    info = next(d for d in error["details"] if d["@type"].endswith("ErrorInfo"))
    assert info["metadata"]["line"] == "2"


@pytest.mark.parametrize("path", ["/v1/test/items:upload", "/v1/test/items:chat"])
async def test_an_upload_the_backend_refuses_midway_is_its_400(edge: RestEdge, path: str) -> None:
    # The backend ends the call at the first line while the rest of the upload is still
    # being written to it. grpc.aio's write race (see datapunk_nexus/backend_status.py)
    # turned a few of the bidi ones into a 500 INTERNAL (the upload's answer was right in
    # the runs measured, and is held to it too), so a hundred tries show it.
    blob = base64.b64encode(b"x" * 65536).decode()
    lines = [json.dumps({"name": REFUSED})] + [json.dumps({"name": "n", "blob": blob})] * 15
    body = "\n".join(lines).encode()
    async with client(edge) as (session, base):
        for _ in range(100):
            async with session.post(base + path, data=io.BytesIO(body)) as response:
                error = await response.json()
                assert (response.status, reason_of(error)) == (400, "BAD_ITEM"), error


async def test_client_stream_is_forwarded_as_lines_arrive(edge: RestEdge) -> None:
    # The bidi echo answers the first line before the client has sent the second.
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    try:
        writer.write(
            b"POST /v1/test/items:chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        line = b'{"name":"first"}\n'
        writer.write(b"%x\r\n%s\r\n" % (len(line), line))
        await writer.drain()
        received = b""
        while b"first" not in received:
            chunk = await asyncio.wait_for(reader.read(4096), 10)
            assert chunk, "connection closed early"
            received += chunk
        line = b'{"name":"second"}\n'
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(line), line))
        await writer.drain()
        while b"second" not in received:
            chunk = await asyncio.wait_for(reader.read(4096), 10)
            assert chunk
            received += chunk
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_stalled_reader_gets_back_pressure(edge: RestEdge) -> None:
    # 2000 messages of 64 KiB (125 MiB) to a client that reads nothing: the edge awaits
    # the transport's drain, so the backend is held back by flow control long before
    # it has produced the whole stream. Other clients are served meanwhile.
    _, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    try:
        writer.write(
            b"GET /v1/test/shelves/s/items:watch?count=2000&blobBytes=65536 HTTP/1.1\r\n"
            b"Host: x\r\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(1.0)
        status, _, item = await call(edge, "GET", "/v1/test/items/other")
        assert (status, item["name"]) == (200, "other")
    finally:
        writer.close()
        await writer.wait_closed()


async def test_back_pressure_bounds_what_the_backend_sent(
    backend: tuple[str, ItemBackend],
) -> None:
    address, items = backend
    async with rest_edge({"test": address}) as edge:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            writer.write(
                b"GET /v1/test/shelves/s/items:watch?count=2000&blobBytes=65536 HTTP/1.1\r\n"
                b"Host: x\r\n\r\n"
            )
            await writer.drain()
            await reader.read(1024)  # the stream started
            previous = -1
            while items.sent != previous:  # wait until the producer is held back
                previous = items.sent
                await asyncio.sleep(0.5)
            assert items.sent < 2000 // 4, f"{items.sent} messages produced for a stalled reader"
        finally:
            writer.close()
            await writer.wait_closed()


# --- documents --------------------------------------------------------------------------


async def test_openapi_document_and_docs_page(edge: RestEdge) -> None:
    status, _, document = await call(edge, "GET", "/openapi.json")
    assert status == 200
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    assert "/v1/test/shelves/{shelvesId}/items/{itemsId}" in paths
    assert "/v2/test/items/{itemsId}" in paths
    get_item = paths["/v1/test/shelves/{shelvesId}/items/{itemsId}"]["get"]
    assert get_item["operationId"] == "datapunk.test.v1.ItemService.GetItem"
    assert {p["name"] for p in get_item["parameters"]} >= {"count", "tags", "inner.level"}
    assert get_item["responses"]["400"]["$ref"] == "#/components/responses/E400"
    item = document["components"]["schemas"]["datapunk.test.v1.Item"]
    assert item["description"] == "Item has a field of every interesting kind."
    assert item["properties"]["count"]["type"] == "string"

    async with client(edge) as (session, base), session.get(base + "/docs") as response:
        html = await response.text()
        assert response.status == 200
        assert response.content_type == "text/html"
        csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp
    assert "script-src" not in csp
    assert "GetItem" in html
    assert "http://" not in html
    assert "https://" not in html
