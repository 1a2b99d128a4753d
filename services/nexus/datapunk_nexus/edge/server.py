"""The REST/JSON edge: matches a request to a route, transcodes it, passes it through the
policy gate (and the cache, for cacheable reads), forwards it to the owning service as raw
bytes, and answers in JSON — streams as NDJSON or server-sent events."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from datapunk_shared.auth.identity import Identity
from datapunk_shared.config import RestEdgeSettings
from datapunk_shared.errors import (
    DatapunkError,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from datapunk_shared.logging import get_logger, request_id_var
from datapunk_shared.rpc.client import error_from_rpc_error
from datapunk_shared.rpc.interceptor import REQUEST_ID_KEY
from datapunk_shared.rpc.server import PortInUse

from datapunk_nexus.backend_status import BackendStatus
from datapunk_nexus.backends import Backends
from datapunk_nexus.edge.access_log import AccessLog
from datapunk_nexus.edge.docs import DOCS_CSP, render_docs
from datapunk_nexus.edge.http_server import JsonErrorServer
from datapunk_nexus.edge.openapi import build_openapi
from datapunk_nexus.edge.protection import (
    ClientAddresses,
    CorsPolicy,
    IpFilter,
    check_path,
    security_headers,
)
from datapunk_nexus.edge.routes import Route, RouteTable
from datapunk_nexus.edge.status import (
    JSON_CONTENT_TYPE,
    ErrorAnswer,
    answer_for_error,
    answer_for_rpc_error,
)
from datapunk_nexus.edge.template import TemplateError
from datapunk_nexus.edge.transcode import decode_response, encode_request, parse_json_body
from datapunk_nexus.identity.enforce import (
    AccessGuard,
    Caller,
    StreamPermissions,
    call_info,
    credentials_of,
)
from datapunk_nexus.identity.oauth.http import CLIENT_ADDRESS_KEY
from datapunk_nexus.policy import (
    CallInfo,
    NoCache,
    OpenGate,
    RequestGate,
    ResponseCache,
    rejection_headers,
)

__all__ = ["PlainHandler", "RestEdge"]

log = get_logger("datapunk.nexus.edge")

REQUEST_ID = REQUEST_ID_KEY
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Request headers passed on to the backend as gRPC metadata. The caller's credentials are
# not among them: they stay here, and Nexus's own go instead (AccessGuard).
_FORWARDED_HEADERS = ("traceparent", "tracestate", "baggage")
_GRPC_TIMEOUT = re.compile(r"^([0-9]{1,8})([HMSmun])$")
_UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"

PlainHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
"""A handler of a plain HTTP route (``RestEdge.add_plain_routes``)."""


@dataclass(frozen=True, slots=True)
class _Plain:
    """A plain route's handler and how the gate sees its requests."""

    handler: PlainHandler
    gated_as: str | None = None
    """The gRPC method whose rate limits and concurrency bounds its requests meet (as
    anonymous calls from the client's address); None: not gated."""
    refused_status: int | None = None
    """The status of an answer that refused the client's credentials: such a refusal
    counts once more against the limits, as a failed API key does."""


class _MethodNotAllowed(DatapunkError):
    """The path exists, the HTTP method does not (405; UNIMPLEMENTED in the body)."""

    code = "UNIMPLEMENTED"
    default_reason = "METHOD_NOT_ALLOWED"


class _Refused(Exception):
    """An error answered with an HTTP status other than its gRPC code's (405, 413, 431)."""

    def __init__(self, error: DatapunkError, http_status: int, headers: Mapping[str, str]) -> None:
        super().__init__(error.message)
        self.error = error
        self.http_status = http_status
        self.headers = dict(headers)


@dataclass
class _Exchange:
    """One request on its way through the edge."""

    request: web.BaseRequest
    request_id: str
    headers: dict[str, str]
    client_ip: str = ""
    grpc_method: str = ""


@dataclass
class _StreamState:
    """A client stream's first bad line, and the call to cancel when it comes."""

    failure: DatapunkError | None = None
    call: Any = None
    backend_status: BackendStatus | None = None
    permissions: StreamPermissions | None = None
    lines: int = field(default=0)
    completed: bool = False

    async def backend_error(self, error: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
        """How the backend ended the call that failed with ``error``."""
        if self.backend_status is None:
            return error
        return await self.backend_status.of(error)


def _grpc_timeout(value: str | None) -> float | None:
    if not value:
        return None
    found = _GRPC_TIMEOUT.match(value)
    if found is None:
        raise InvalidArgument(
            "grpc-timeout must be digits and a unit (H, M, S, m, u, n)",
            reason="INVALID_TIMEOUT",
        )
    return int(found[1]) * _UNIT_SECONDS[found[2]]


def _body_too_large(limit: int) -> _Refused:
    """413: made only when a body is refused, not for every request read."""
    return _Refused(
        ResourceExhausted(
            f"the request body is larger than {limit} bytes",
            reason="REQUEST_TOO_LARGE",
            metadata={"limit_bytes": str(limit)},
        ),
        413,
        {},
    )


def _literal_routes(by_method: Mapping[str, list[Route]]) -> dict[tuple[str, str], Route]:
    """``(HTTP method, path) -> route`` for templates without variables or wildcards that
    no route before them in the table would take: looking those up gives the answer
    trying every template in order would give, without the regular expressions."""
    found: dict[tuple[str, str], Route] = {}
    for method, routes in by_method.items():
        for index, route in enumerate(routes):
            path = route.template.literal_path
            if path is None or (method, path) in found:
                continue
            try:
                taken = any(other.template.match(path) is not None for other in routes[:index])
            except TemplateError:
                taken = True
            if not taken:
                found[(method, path)] = route
    return found


async def _send(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """Send ``response`` now (aiohttp would once ``handle`` returned, and finds it sent):
    the access log line is then written after the answer has left, not before. A client
    that went away is aiohttp's to notice, as it would have been."""
    if response.prepared:  # a stream, written as it went
        return
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        pass


class RestEdge:
    """The REST/JSON edge of Nexus; ``start`` binds it inside the running asyncio loop."""

    def __init__(
        self,
        settings: RestEdgeSettings,
        table: RouteTable,
        backends: Backends,
        *,
        gate: RequestGate | None = None,
        cache: ResponseCache | None = None,
        owns_backends: bool = True,
        guard: AccessGuard | None = None,
    ) -> None:
        self.settings = settings
        # None only where an edge is tested without identities (transcoding tests);
        # Nexus always passes its guard.
        self.guard = guard
        self.table = table
        self.backends = backends
        self._owns_backends = owns_backends
        self.gate: RequestGate = gate or OpenGate()
        self.cache: ResponseCache = cache or NoCache()
        self._by_method: dict[str, list[Route]] = {}
        # The configured timeout of each method, looked up once here, not per request.
        self._route_timeouts: dict[str, float | None] = {}
        for route in table.routes:
            self._by_method.setdefault(route.http_method, []).append(route)
            self._route_timeouts[route.grpc_method] = self._configured_timeout(route)
        self._cors = CorsPolicy(
            frozenset(settings.cors_origins), allow_credentials=settings.cors_allow_credentials
        )
        self._ip_filter = IpFilter.of(
            [str(n) for n in settings.ip_allow], [str(n) for n in settings.ip_deny]
        )
        self._trusted = tuple(settings.trusted_proxies)
        self._addresses = ClientAddresses(self._ip_filter, self._trusted)
        self._literal = _literal_routes(self._by_method)
        self._security = dict(security_headers(settings.hsts_max_age))
        self.openapi = build_openapi(
            table, is_public=guard.is_public if guard is not None else None
        )
        self._openapi_body = json.dumps(self.openapi, separators=(",", ":")).encode()
        self._docs_body = render_docs(self.openapi).encode()
        self._plain: dict[str, dict[str, _Plain]] = {}
        # One line per request, written off the request path (None: access log off).
        self.access_log: AccessLog | None = AccessLog() if settings.access_log else None
        self._runner: web.ServerRunner | None = None
        self.port = 0

    def add_plain_routes(self, routes: Iterable[tuple[Any, ...]]) -> None:
        """Serve ``(HTTP method, exact path, handler)`` as plain HTTP, without transcoding
        (the OAuth endpoints, which speak forms rather than the contracts). They get the
        edge's IP filter, CORS, security headers and request id. A route may go on with
        ``gated_as`` (a gRPC method name) and ``refused_status`` (see ``_Plain``): its
        requests then pass the rate limits and concurrency bounds of that method, and
        an answer with that status (a refused client credential) counts against them
        once more, so guessing client secrets meets the limits keyed by client IP."""
        for method, path, handler, *gate in routes:
            self._plain.setdefault(path, {})[method.upper()] = _Plain(handler, *gate)

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> int:
        """Listen on the configured host and port; returns the bound port."""
        limit = self.settings.max_header_bytes
        server = JsonErrorServer(
            self.handle,
            max_line_size=limit,
            max_field_size=limit,
            max_headers=128,
            access_log=None,
        )
        runner = web.ServerRunner(server, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.port, reuse_port=False)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise PortInUse(
                f"cannot serve REST on {self.settings.host}:{self.settings.port}: {exc}"
            ) from None
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("rest edge listening", address=f"{self.settings.host}:{self.port}")
        return self.port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if self.access_log is not None:
            self.access_log.flush()  # the lines of the last requests
        if self._owns_backends:
            await self.backends.close()

    # --- one request --------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        given = request.headers.get(REQUEST_ID)
        rid = given if given and _REQUEST_ID_OK.match(given) else os.urandom(8).hex()
        token = request_id_var.set(rid)
        headers = {**self._security, "X-Request-Id": rid}
        headers.update(self._cors.response_headers(request.headers.get("Origin")))
        exchange = _Exchange(request, rid, headers)
        response: web.StreamResponse | None = None
        try:
            response = await self._answer(exchange)
            await _send(request, response)
        finally:
            if self.access_log is not None:
                self.access_log.record(
                    request_id=rid,
                    method=request.method,
                    path=request.path,
                    status=response.status if response is not None else 499,
                    rpc=exchange.grpc_method or None,
                    client=exchange.client_ip or request.remote,
                    ms=round((time.perf_counter() - started) * 1000, 3),
                )
            request_id_var.reset(token)
        return response

    async def _answer(self, exchange: _Exchange) -> web.StreamResponse:
        """The answer to the request: its route's, or the JSON error it met."""
        try:
            return await self._dispatch(exchange)
        except _Refused as refused:
            exchange.headers.update(refused.headers)
            response = self._error(exchange, answer_for_error(refused.error, refused.http_status))
            response.force_close()  # an unread body may follow; do not reuse the connection
            return response
        except DatapunkError as exc:
            # Retry-After and, for a rate limit, the RateLimit-* headers of a refusal.
            exchange.headers.update(rejection_headers(exc))
            if exc.code == "UNAUTHENTICATED":  # RFC 6750 section 3
                exchange.headers["WWW-Authenticate"] = 'Bearer realm="datapunk"'
            return self._error(exchange, answer_for_error(exc))
        except grpc.aio.AioRpcError as exc:  # pragma: no cover - handled where calls are made
            return self._error(exchange, answer_for_rpc_error(exc, backend="?", timeout=None))
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.error("unhandled edge error", exc_info=exc)
            error = Internal("internal error; see the Nexus log for the request id")
            error.metadata["request_id"] = exchange.request_id
            return self._error(exchange, answer_for_error(error))

    def _error(self, exchange: _Exchange, answer: ErrorAnswer) -> web.Response:
        return web.Response(
            status=answer.http_status,
            body=answer.body,
            headers={**exchange.headers, **answer.headers},
        )

    def _json(self, exchange: _Exchange, body: bytes, status: int = 200) -> web.Response:
        return web.Response(
            status=status,
            body=body,
            headers={**exchange.headers, "Content-Type": JSON_CONTENT_TYPE},
        )

    async def _dispatch(self, exchange: _Exchange) -> web.StreamResponse:
        request = exchange.request
        header_bytes = sum(len(k) + len(v) + 4 for k, v in request.raw_headers)
        if header_bytes > self.settings.max_header_bytes:
            raise _Refused(
                ResourceExhausted(
                    "the request's header block is too large",
                    reason="HEADERS_TOO_LARGE",
                    metadata={"limit_bytes": str(self.settings.max_header_bytes)},
                ),
                431,
                {},
            )
        raw_path = request.raw_path.split("?", 1)[0]
        check_path(raw_path)
        exchange.client_ip, allowed = self._addresses.resolve(
            str(request.remote or ""), request.headers.get("X-Forwarded-For")
        )
        if not allowed:
            self._addresses.check(exchange.client_ip)  # raises the refusal

        origin = request.headers.get("Origin")
        if (
            request.method == "OPTIONS"
            and origin is not None
            and "Access-Control-Request-Method" in request.headers
        ):
            exchange.headers.update(
                self._cors.preflight(
                    origin,
                    request.headers["Access-Control-Request-Method"],
                    request.headers.get("Access-Control-Request-Headers", ""),
                )
            )
            return web.Response(status=204, headers=exchange.headers)

        if request.method == "GET" and raw_path == "/openapi.json":
            return self._json(exchange, self._openapi_body)
        if request.method == "GET" and raw_path == "/docs":
            headers = {
                **exchange.headers,
                "Content-Type": "text/html; charset=utf-8",
                "Content-Security-Policy": DOCS_CSP,
            }
            return web.Response(body=self._docs_body, headers=headers)

        plain = self._plain.get(raw_path)
        if plain is not None:
            return await self._plain_route(exchange, plain)

        route, values = self._match(request.method, raw_path)
        exchange.grpc_method = route.grpc_method
        if route.client_streaming or route.server_streaming:
            return await self._stream(exchange, route, values)
        return await self._unary(exchange, route, values)

    async def _plain_route(
        self, exchange: _Exchange, handlers: Mapping[str, _Plain]
    ) -> web.StreamResponse:
        method = exchange.request.method
        plain = handlers.get(method)
        if plain is None:
            allow = ", ".join(sorted(handlers))
            raise _Refused(
                _MethodNotAllowed(
                    f"{method} is not allowed on {exchange.request.path}", metadata={"allow": allow}
                ),
                405,
                {"Allow": allow},
            )
        exchange.request[CLIENT_ADDRESS_KEY] = exchange.client_ip
        if plain.gated_as is None:
            response = await plain.handler(exchange.request)
        else:
            exchange.grpc_method = plain.gated_as
            call = CallInfo(plain.gated_as, exchange.client_ip)
            async with self.gate.admit(call) as gate_headers:
                exchange.headers.update(gate_headers)
                response = await plain.handler(exchange.request)
            if response.status == plain.refused_status:
                # Over the limits this becomes 429 (ResourceExhausted), like a wrong API
                # key: a guesser learns nothing more from the answer.
                await self.gate.check_rate(call)
        for name, value in exchange.headers.items():
            response.headers.setdefault(name, value)
        return response

    def _match(self, method: str, raw_path: str) -> tuple[Route, dict[str, str]]:
        literal = self._literal.get((method, raw_path))
        if literal is not None:
            return literal, {}
        for route in self._by_method.get(method, ()):
            try:
                values = route.template.match(raw_path)
            except TemplateError as exc:
                raise InvalidArgument(
                    str(exc),
                    violations=[FieldViolation("path", str(exc), "INVALID_PATH_PARAMETER")],
                    reason="INVALID_PATH_PARAMETER",
                ) from None
            if values is not None:
                return route, values
        allowed = sorted(
            {
                other
                for other, routes in self._by_method.items()
                if other != method and any(r.template.matches(raw_path) for r in routes)
            }
        )
        if allowed:
            raise _Refused(
                _MethodNotAllowed(
                    f"{method} is not allowed on {raw_path}",
                    metadata={"allow": ", ".join(allowed)},
                ),
                405,
                {"Allow": ", ".join(allowed)},
            )
        raise NotFound("no such route", reason="ROUTE_NOT_FOUND", metadata={"path": raw_path})

    # --- forwarding ---------------------------------------------------------------------

    def _configured_timeout(self, route: Route) -> float | None:
        """By method, then by service; unary calls fall back to ``route_timeout``."""
        configured = self.settings.route_timeouts
        limit = configured.get(route.grpc_method)
        if limit is None:
            limit = configured.get(f"{route.package}.{route.service}")
        if limit is None and not (route.client_streaming or route.server_streaming):
            limit = self.settings.route_timeout
        return limit

    def _timeout(self, exchange: _Exchange, route: Route) -> float | None:
        limit = self._route_timeouts[route.grpc_method]
        client = _grpc_timeout(exchange.request.headers.get("grpc-timeout"))
        if client is not None:
            limit = client if limit is None else min(limit, client)
        return limit

    def _caller(self, exchange: _Exchange, route: Route) -> Caller:
        # aiohttp's headers match names case-insensitively, as HTTP wants.
        authorization, api_key = credentials_of(exchange.request.headers)
        return Caller(
            method=route.grpc_method,
            client_ip=exchange.client_ip,
            request_id=exchange.request_id,
            authorization=authorization,
            api_key=api_key,
        )

    async def _authenticate(self, caller: Caller) -> Identity | None:
        return None if self.guard is None else await self.guard.authenticate(caller, self.gate)

    async def _authorize(self, caller: Caller, identity: Identity | None, request: bytes) -> None:
        if self.guard is not None:
            await self.guard.authorize_request(caller, identity, request)

    def _metadata(
        self, exchange: _Exchange, owner: str, identity: Identity | None
    ) -> tuple[tuple[str, str], ...]:
        headers = exchange.request.headers
        pairs = [(REQUEST_ID, exchange.request_id)]
        if self.guard is not None:
            pairs.extend(self.guard.backend_metadata(owner, identity))
        for name in _FORWARDED_HEADERS:
            value = headers.get(name)
            if value is not None and value.isascii() and value.isprintable():
                pairs.append((name, value))
        forwarded = headers.get("X-Forwarded-For")
        peer = str(exchange.request.remote or "")
        chain = f"{forwarded}, {peer}" if forwarded else peer
        if chain.isascii() and chain.isprintable():
            pairs.append(("x-forwarded-for", chain))
        return tuple(pairs)

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        limit = self.settings.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _body_too_large(limit)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise _body_too_large(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _request_payload(
        self, exchange: _Exchange, route: Route, values: dict[str, str]
    ) -> bytes:
        request = exchange.request
        raw = await self._read_body(request) if request.can_read_body else b""
        body = parse_json_body(raw) if raw.strip() else None
        query = request.rel_url.query.items() if request.query_string else ()
        return encode_request(route, values, query, body)

    async def _unary(
        self, exchange: _Exchange, route: Route, values: dict[str, str]
    ) -> web.StreamResponse:
        payload = await self._request_payload(exchange, route, values)
        timeout = self._timeout(exchange, route)
        caller = self._caller(exchange, route)
        identity = await self._authenticate(caller)
        call = call_info(caller, identity, payload)
        async with self.gate.admit(call) as gate_headers:
            exchange.headers.update(gate_headers)
            await self._authorize(caller, identity, payload)
            cacheable = self.cache.cacheable(route.grpc_method)
            data = await self.cache.get(call) if cacheable else None
            if data is None:
                stub = self.backends.callable(route.owner, route.grpc_method, "unary_unary")
                try:
                    answer = stub(
                        payload,
                        timeout=timeout,
                        metadata=self._metadata(exchange, route.owner, identity),
                    )
                    if self.access_log is not None:
                        self.access_log.flush_soon()  # while the backend works
                    data = await answer
                except grpc.aio.AioRpcError as exc:
                    if self.guard is not None:
                        refusal = error_from_rpc_error(exc)
                        await self.guard.refused_by_owner(caller, identity, payload, refusal)
                    return self._error(
                        exchange, answer_for_rpc_error(exc, backend=route.owner, timeout=timeout)
                    )
                if cacheable:
                    await self.cache.put(call, data)
                await self.cache.after_call(call)  # drops what a write changed
        return self._json(exchange, decode_response(route, data))

    async def _ndjson_messages(
        self, exchange: _Exchange, route: Route, values: dict[str, str], state: _StreamState
    ) -> AsyncIterator[bytes]:
        """One request message per NDJSON line, read from the client only as fast as the
        backend takes them (gRPC flow control pulls this generator)."""
        query = list(exchange.request.rel_url.query.items())
        limit = self.settings.max_body_bytes
        content = exchange.request.content
        pending = b""
        try:
            while True:
                newline = pending.find(b"\n")
                if newline < 0:
                    if len(pending) > limit:
                        raise ResourceExhausted(
                            f"a line of the stream is longer than {limit} bytes",
                            reason="REQUEST_TOO_LARGE",
                            metadata={"limit_bytes": str(limit)},
                        )
                    chunk = await content.readany()
                    if not chunk:
                        line, pending = pending, b""
                        if line.strip():
                            yield await self._line_message(route, values, query, line, state)
                        return
                    pending += chunk
                    continue
                line, pending = pending[:newline], pending[newline + 1 :]
                if line.strip():
                    yield await self._line_message(route, values, query, line, state)
        except DatapunkError as exc:
            state.failure = exc
            if state.call is not None:
                state.call.cancel()

    async def _line_message(
        self,
        route: Route,
        values: dict[str, str],
        query: list[tuple[str, str]],
        line: bytes,
        state: _StreamState,
    ) -> bytes:
        """One line's message, once the caller may send it (each line may name another
        resource)."""
        state.lines += 1
        try:
            message = encode_request(route, values, query, parse_json_body(line))
        except InvalidArgument as exc:
            exc.metadata["line"] = str(state.lines)
            raise
        if state.permissions is not None:
            await state.permissions.check(message)
        return message

    async def _stream(
        self, exchange: _Exchange, route: Route, values: dict[str, str]
    ) -> web.StreamResponse:
        state = _StreamState()
        payload = b""
        caller = self._caller(exchange, route)
        identity = await self._authenticate(caller)
        if route.client_streaming:
            # Checked line by line as the backend pulls them (permissions set below).
            requests: Any = self._ndjson_messages(exchange, route, values, state)
        else:
            payload = await self._request_payload(exchange, route, values)
            requests = payload
        timeout = self._timeout(exchange, route)
        kind = ("stream_" if route.client_streaming else "unary_") + (
            "stream" if route.server_streaming else "unary"
        )
        stub = self.backends.callable(route.owner, route.grpc_method, kind)
        info = call_info(caller, identity, payload)
        async with self.gate.admit(info) as gate_headers:
            exchange.headers.update(gate_headers)
            if not route.client_streaming:
                await self._authorize(caller, identity, payload)
            elif self.guard is not None:
                state.permissions = await self.guard.open_stream(caller, identity)
            metadata = self._metadata(exchange, route.owner, identity)
            call = stub(requests, timeout=timeout, metadata=metadata)
            state.call = call
            if route.client_streaming:
                state.backend_status = BackendStatus(call)
            if not route.server_streaming:
                try:
                    data = await call
                except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
                    return await self._stream_failure(exchange, route, state, exc, timeout)
                await self.cache.after_call(info)
                return self._json(exchange, decode_response(route, data))
            response = await self._relay(exchange, route, state, call, timeout)
            if state.completed:
                await self.cache.after_call(info)
            return response

    async def _stream_failure(
        self,
        exchange: _Exchange,
        route: Route,
        state: _StreamState,
        exc: BaseException,
        timeout: float | None,
    ) -> web.Response:
        if state.failure is not None:
            http = 413 if state.failure.reason == "REQUEST_TOO_LARGE" else None
            return self._error(exchange, answer_for_error(state.failure, http))
        if isinstance(exc, grpc.aio.AioRpcError):
            error = await state.backend_error(exc)
            return self._error(
                exchange, answer_for_rpc_error(error, backend=route.owner, timeout=timeout)
            )
        raise exc

    async def _relay(
        self,
        exchange: _Exchange,
        route: Route,
        state: _StreamState,
        call: Any,
        timeout: float | None,
    ) -> web.StreamResponse:
        """Responses as NDJSON lines (or SSE events), each written only once the previous
        one was taken by the transport (``write`` awaits its drain): a slow client slows
        the backend through gRPC flow control instead of filling memory here."""
        sse = SSE in exchange.request.headers.get("Accept", "")
        iterator = call.__aiter__()
        try:
            first: bytes | None = await iterator.__anext__()
        except StopAsyncIteration:
            first = None
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
            return await self._stream_failure(exchange, route, state, exc, timeout)
        response = web.StreamResponse(
            status=200,
            headers={**exchange.headers, "Content-Type": SSE if sse else NDJSON},
        )
        await response.prepare(exchange.request)
        try:
            message = first
            while message is not None:
                document = decode_response(route, message)
                await response.write(b"data: " + document + b"\n\n" if sse else document + b"\n")
                try:
                    message = await iterator.__anext__()
                except StopAsyncIteration:
                    message = None
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
            if state.failure is not None:
                answer = answer_for_error(state.failure)
            elif isinstance(exc, grpc.aio.AioRpcError):
                error = await state.backend_error(exc)
                answer = answer_for_rpc_error(error, backend=route.owner, timeout=timeout)
            else:
                raise
            body = answer.body
            error_line = (
                b"event: error\ndata: " + body + b"\n\n" if sse else b'{"error":' + body + b"}\n"
            )
            await response.write(error_line)
        except (ConnectionResetError, ConnectionError):
            call.cancel()
            raise
        else:
            state.completed = True
        await response.write_eof()
        return response
