"""One wrapper that gives every RPC the same edges, in one place so the per-call
overhead stays small: a request id (taken from ``x-request-id`` or made up, returned in
trailing metadata and put in every log line), protovalidate checks of each request
message, the mapping of Datapunk exceptions to a status with ``ErrorInfo``/
``BadRequest``/``RetryInfo`` details, Prometheus metrics and an access log line.

It works as a ``grpc.aio.ServerInterceptor``, but services use it through
``InstrumentedServer``, which wraps each handler once when it is registered: grpc.aio
awaits every interceptor on every call, which costs more than the wrapping itself."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import Token
from typing import Any, NoReturn

import grpc
import protovalidate
from google.protobuf.message import Message

from datapunk_shared.auth.identity import Identity, identity_var
from datapunk_shared.auth.interceptor import CallerAuthenticator, is_public_method
from datapunk_shared.errors import DatapunkError, FieldViolation, Internal, InvalidArgument
from datapunk_shared.logging import get_logger, request_id_var
from datapunk_shared.metrics import RPC_IN_FLIGHT, RPC_LATENCY, RPC_TOTAL
from datapunk_shared.rpc.status_codes import STATUS_DETAILS_KEY, status_from_error

__all__ = ["REQUEST_ID_KEY", "DatapunkServerInterceptor", "InstrumentedServer", "violations_of"]

REQUEST_ID_KEY = "x-request-id"
_MAX_REQUEST_ID = 128

log = get_logger("datapunk.rpc")
_validator = protovalidate.Validator()


def violations_of(message: Message) -> list[FieldViolation]:
    """The contract (buf.validate) violations of ``message``, as field violations."""
    found = _validator.collect_violations(message)
    return [_field_violation(v) for v in found]


def _field_violation(violation: Any) -> FieldViolation:
    proto = violation.proto
    parts: list[str] = []
    # A rule on the request message itself (a CEL rule across its fields) has no path.
    for element in proto.field.elements if proto.field is not None else ():
        path = element.field_name
        subscript = element.subscript
        if subscript is not None and getattr(subscript, "field", None) is not None:
            value = subscript.value
            path += f"[{value!r}]" if isinstance(value, str) else f"[{value}]"
        parts.append(path)
    return FieldViolation(field=".".join(parts), description=proto.message, reason=proto.rule_id)


def _check(message: Message) -> None:
    violations = violations_of(message)
    if violations:
        raise InvalidArgument(
            f"{message.DESCRIPTOR.name} violates its contract: "
            + "; ".join(f"{v.field}: {v.description}" for v in violations),
            violations=violations,
            reason="CONTRACT_VIOLATION",
        )


def _request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= _MAX_REQUEST_ID:
            return value
    return os.urandom(8).hex()


class _Call:
    """Book-keeping of one RPC: request id, timing, final code, metrics, access log."""

    __slots__ = (
        "_identity_token",
        "_interceptor",
        "_started",
        "_token",
        "code",
        "method",
        "request_id",
    )

    def __init__(self, interceptor: DatapunkServerInterceptor, method: str, rid: str) -> None:
        self._interceptor = interceptor
        self.method = method
        self.request_id = rid
        self.code = "OK"
        self._token = request_id_var.set(rid)
        self._identity_token: Token[Identity | None] | None = None
        self._started = time.perf_counter()
        interceptor.in_flight.inc()

    async def authenticate(
        self, authenticator: CallerAuthenticator, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Verify the caller's credentials and make its identity the call's."""
        identity = await authenticator.authenticate(context.invocation_metadata() or ())
        self._identity_token = identity_var.set(identity)

    async def fail(
        self, context: grpc.aio.ServicerContext[Any, Any], exc: BaseException
    ) -> NoReturn:
        """Turn ``exc`` into the call's final status; always raises."""
        if isinstance(exc, asyncio.CancelledError):
            self.code = "CANCELLED"
            raise exc
        if isinstance(exc, grpc.aio.AbortError):
            code = context.code()
            self.code = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
            raise exc
        if isinstance(exc, DatapunkError):
            error = exc
        else:
            log.error("unhandled exception", method=self.method, exc_info=exc)
            error = Internal("internal error; see the service log for the request id")
            error.metadata["request_id"] = self.request_id
        code, status = status_from_error(error)
        self.code = code.name
        await context.abort(
            code,
            error.message,
            trailing_metadata=(
                (REQUEST_ID_KEY, self.request_id),
                (STATUS_DETAILS_KEY, status.SerializeToString()),
            ),
        )
        raise AssertionError("context.abort returned")  # pragma: no cover

    def finish(self) -> None:
        elapsed = time.perf_counter() - self._started
        interceptor = self._interceptor
        interceptor.in_flight.dec()
        interceptor.count(self.method, self.code).inc()
        interceptor.latency(self.method).observe(elapsed)
        if interceptor.access_log == "all" or (
            interceptor.access_log == "failures"
            and (self.code != "OK" or elapsed >= interceptor.slow_call_seconds)
        ):
            log.info("rpc", method=self.method, code=self.code, ms=round(elapsed * 1000, 3))
        request_id_var.reset(self._token)
        if self._identity_token is not None:
            identity_var.reset(self._identity_token)


class DatapunkServerInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler once (cached per method) with the edges described above."""

    def __init__(
        self,
        service: str,
        *,
        access_log: str = "all",
        slow_call_seconds: float = 1.0,
        authenticator: CallerAuthenticator | None = None,
    ) -> None:
        self.service = service
        self.authenticator = authenticator
        self.access_log = access_log
        self.slow_call_seconds = slow_call_seconds
        self.in_flight = RPC_IN_FLIGHT.labels(service)
        self._wrapped: dict[str, Any] = {}
        self._counters: dict[tuple[str, str], Any] = {}
        self._histograms: dict[str, Any] = {}

    def count(self, method: str, code: str) -> Any:
        key = (method, code)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = RPC_TOTAL.labels(self.service, method, code)
        return counter

    def latency(self, method: str) -> Any:
        histogram = self._histograms.get(method)
        if histogram is None:
            histogram = self._histograms[method] = RPC_LATENCY.labels(self.service, method)
        return histogram

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        return None if handler is None else self.wrap(method, handler)

    def wrap(self, method: str, handler: Any) -> Any:
        """``handler`` with the Datapunk edges around it (cached per method)."""
        cached = self._wrapped.get(method)
        if cached is None:
            cached = self._wrapped[method] = self._wrap(method, handler)
        return cached

    def _wrap(self, method: str, handler: Any) -> Any:
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._unary_unary(method, handler.unary_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._unary_stream(method, handler.unary_stream))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=self._stream_unary(method, handler.stream_unary))
        return handler._replace(stream_stream=self._stream_stream(method, handler.stream_stream))

    def _guard(self, method: str) -> CallerAuthenticator | None:
        """The authenticator a method's calls must pass (None: served to anyone)."""
        if self.authenticator is None or is_public_method(method):
            return None
        return self.authenticator

    def _unary_unary(self, method: str, inner: Any) -> Any:
        guard = self._guard(method)

        async def behavior(request: Message, context: Any) -> Any:
            call = _Call(self, method, _request_id(context))
            try:
                if guard is not None:
                    await call.authenticate(guard, context)
                _check(request)
                response = await inner(request, context)
                context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
                return response
            except BaseException as exc:
                await call.fail(context, exc)
            finally:
                call.finish()

        return behavior

    def _unary_stream(self, method: str, inner: Any) -> Any:
        guard = self._guard(method)

        async def behavior(request: Message, context: Any) -> AsyncIterator[Any]:
            call = _Call(self, method, _request_id(context))
            try:
                if guard is not None:
                    await call.authenticate(guard, context)
                _check(request)
                async for item in _responses(inner(request, context)):
                    yield item
                context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
            except BaseException as exc:
                await call.fail(context, exc)
            finally:
                call.finish()

        return behavior

    def _stream_unary(self, method: str, inner: Any) -> Any:
        guard = self._guard(method)

        async def behavior(requests: AsyncIterator[Message], context: Any) -> Any:
            call = _Call(self, method, _request_id(context))
            try:
                if guard is not None:
                    await call.authenticate(guard, context)
                response = await inner(_checked(requests), context)
                context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
                return response
            except BaseException as exc:
                await call.fail(context, exc)
            finally:
                call.finish()

        return behavior

    def _stream_stream(self, method: str, inner: Any) -> Any:
        guard = self._guard(method)

        async def behavior(requests: AsyncIterator[Message], context: Any) -> AsyncIterator[Any]:
            call = _Call(self, method, _request_id(context))
            try:
                if guard is not None:
                    await call.authenticate(guard, context)
                async for item in _responses(inner(_checked(requests), context)):
                    yield item
                context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
            except BaseException as exc:
                await call.fail(context, exc)
            finally:
                call.finish()

        return behavior


class _WrappedGenericHandler(grpc.GenericRpcHandler):
    def __init__(self, inner: Any, interceptor: DatapunkServerInterceptor) -> None:
        self._inner = inner
        self._interceptor = interceptor

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        return self._interceptor.wrap(handler_call_details.method, handler)


class InstrumentedServer:
    """A ``grpc.aio.Server`` whose handlers get the Datapunk edges at registration.

    The generated ``add_*Servicer_to_server`` functions, health and reflection register
    through ``add_generic_rpc_handlers``/``add_registered_method_handlers``; everything
    else is passed through to the real server."""

    def __init__(self, server: grpc.aio.Server, interceptor: DatapunkServerInterceptor) -> None:
        self._server = server
        self._interceptor = interceptor

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_WrappedGenericHandler(h, self._interceptor) for h in handlers)
        )

    def add_registered_method_handlers(self, service_name: str, handlers: Any) -> None:
        wrap = self._interceptor.wrap
        self._server.add_registered_method_handlers(
            service_name,
            {name: wrap(f"/{service_name}/{name}", h) for name, h in handlers.items()},
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


# Libraries choose their asyncio servicers by ``isinstance(server, grpc.aio.Server)``
# (reflection does); the proxy must pass that check.
grpc.aio.Server.register(InstrumentedServer)


async def _checked(requests: AsyncIterator[Message]) -> AsyncIterator[Message]:
    """Validate each message of a client stream as it arrives (back-pressure is kept:
    nothing is read ahead)."""
    async for message in requests:
        _check(message)
        yield message


async def _responses(result: Any) -> AsyncIterator[Any]:
    """Server-streaming handlers may be async generators, plain generators or
    coroutines using ``context.write``; treat them alike."""
    if inspect.isasyncgen(result):
        async for item in result:
            yield item
    elif inspect.isgenerator(result):
        for item in result:
            yield item
    else:
        await result
