"""One wrapper that gives every RPC the same edges, in one place so the per-call
overhead stays small: a request id (taken from ``x-request-id`` or made up, returned in
trailing metadata and put in every log line), the caller's verified identity (for every
method but the public ones), protovalidate checks of each request message, the mapping
of Datapunk exceptions to a status with ``ErrorInfo``/``BadRequest``/``RetryInfo``
details, Prometheus metrics and an access log line.

It works as a ``grpc.aio.ServerInterceptor``, but services use it through
``InstrumentedServer``, which wraps each handler once when it is registered: grpc.aio
awaits every interceptor on every call, which costs more than the wrapping itself.
Everything that depends only on the method (whether it needs credentials, its metrics)
is looked up once, when the handler is wrapped; a call then costs a metadata scan, two
context variables, the validation and a few integer additions."""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, NoReturn

import grpc
import protovalidate
from google.protobuf.message import Message

from datapunk_shared.auth.identity import identity_var
from datapunk_shared.auth.interceptor import CallerAuthenticator, is_public_method
from datapunk_shared.errors import DatapunkError, FieldViolation, Internal, InvalidArgument
from datapunk_shared.logging import get_logger, request_id_var
from datapunk_shared.metrics import MethodStats, ServiceStats, rpc_stats
from datapunk_shared.rpc.status_codes import STATUS_DETAILS_KEY, status_from_error

__all__ = ["REQUEST_ID_KEY", "DatapunkServerInterceptor", "InstrumentedServer", "violations_of"]

REQUEST_ID_KEY = "x-request-id"
_MAX_REQUEST_ID = 128

log = get_logger("datapunk.rpc")
_validator = protovalidate.Validator()
_clock = time.perf_counter
# Request ids correlate log lines; they need to be unique, not unpredictable, so they
# come from a seeded generator rather than a system call per request.
_ids = random.Random()


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


# A message with no field set gets the same verdict every time: keep it per type, so a
# request such as ``GetStatus{}`` or ``ListCollections{}`` skips the validator's call.
_EMPTY_VERDICTS: dict[type[Message], list[FieldViolation]] = {}


def _check(message: Message) -> None:
    if message.ByteSize() == 0:
        kind = type(message)
        violations = _EMPTY_VERDICTS.get(kind)
        if violations is None:
            violations = _EMPTY_VERDICTS[kind] = violations_of(message)
    else:
        violations = violations_of(message)
    if violations:
        raise InvalidArgument(
            f"{message.DESCRIPTOR.name} violates its contract: "
            + "; ".join(f"{v.field}: {v.description}" for v in violations),
            violations=list(violations),
            reason="CONTRACT_VIOLATION",
        )


Metadata = Iterable[tuple[str, str | bytes]]


def _request_id(metadata: Metadata) -> str:
    for key, value in metadata:
        if key == REQUEST_ID_KEY and isinstance(value, str) and 0 < len(value) <= _MAX_REQUEST_ID:
            return value
    return f"{_ids.getrandbits(64):016x}"


class _Method:
    """What every call of one method needs, found once when its handler is wrapped."""

    __slots__ = ("access_log", "guard", "name", "service", "slow_call_seconds", "stats")

    def __init__(self, interceptor: DatapunkServerInterceptor, name: str) -> None:
        self.name = name
        self.service: ServiceStats = interceptor.stats
        self.stats: MethodStats = interceptor.stats.method(name)
        self.access_log = interceptor.access_log
        self.slow_call_seconds = interceptor.slow_call_seconds
        # The authenticator a method's calls must pass (None: served to anyone).
        self.guard: CallerAuthenticator | None = (
            None
            if interceptor.authenticator is None or is_public_method(name)
            else interceptor.authenticator
        )

    def begin(
        self, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[str, Any, float, Metadata]:
        """Start a call: its request id, the context-variable token to reset at its end,
        its start time and its metadata."""
        started = _clock()
        metadata = context.invocation_metadata() or ()
        rid = _request_id(metadata)
        self.service.in_flight += 1
        return rid, request_id_var.set(rid), started, metadata

    def finish(self, code: str, started: float, rid_token: Any, identity_token: Any) -> None:
        elapsed = _clock() - started
        self.service.in_flight -= 1
        self.stats.record(code, elapsed)
        if self.access_log == "all" or (
            self.access_log == "failures" and (code != "OK" or elapsed >= self.slow_call_seconds)
        ):
            log.info("rpc", method=self.name, code=code, ms=round(elapsed * 1000, 3))
        if identity_token is not None:
            identity_var.reset(identity_token)
        request_id_var.reset(rid_token)


_Abort = tuple[grpc.StatusCode, str, tuple[tuple[str, str | bytes], ...]]


def _outcome(
    context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, method: str, rid: str
) -> tuple[str, _Abort | None]:
    """The status code a call that raised ``exc`` ends with, and the ``context.abort``
    arguments that end it (None: ``exc`` already is the call's end; re-raise it)."""
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED", None
    if isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        return (code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"), None
    if isinstance(exc, DatapunkError):
        error = exc
    else:
        log.error("unhandled exception", method=method, exc_info=exc)
        error = Internal("internal error; see the service log for the request id")
        error.metadata["request_id"] = rid
    status_code, status = status_from_error(error)
    trailers = ((REQUEST_ID_KEY, rid), (STATUS_DETAILS_KEY, status.SerializeToString()))
    return status_code.name, (status_code, error.message, trailers)


async def _end(
    context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, abort: _Abort | None
) -> NoReturn:
    """End the call with ``abort``, or let ``exc`` (which already ends it) go on."""
    if abort is None:
        raise exc
    await context.abort(*abort)
    raise AssertionError("context.abort returned")  # pragma: no cover


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
        self.stats = rpc_stats(service)
        self._wrapped: dict[str, Any] = {}

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
            cached = self._wrapped[method] = self._wrap(_Method(self, method), handler)
        return cached

    def _wrap(self, method: _Method, handler: Any) -> Any:
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_unary_unary(method, handler.unary_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=_unary_stream(method, handler.unary_stream))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=_stream_unary(method, handler.stream_unary))
        return handler._replace(stream_stream=_stream_stream(method, handler.stream_stream))


# Each shape's wrapper: begin, verify the caller, check, run the handler, attach the
# request id; on any exception end the call with its mapped status (``_outcome``);
# always record the call (``finish``).


def _unary_unary(method: _Method, inner: Any) -> Any:
    async def behavior(request: Message, context: Any) -> Any:
        rid, rid_token, started, metadata = method.begin(context)
        code, identity_token = "OK", None
        try:
            if method.guard is not None:
                identity_token = identity_var.set(await method.guard.authenticate(metadata))
            _check(request)
            response = await inner(request, context)
            context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
            return response
        except BaseException as exc:
            code, abort = _outcome(context, exc, method.name, rid)
            await _end(context, exc, abort)
        finally:
            method.finish(code, started, rid_token, identity_token)

    return behavior


def _unary_stream(method: _Method, inner: Any) -> Any:
    async def behavior(request: Message, context: Any) -> AsyncIterator[Any]:
        rid, rid_token, started, metadata = method.begin(context)
        code, identity_token = "OK", None
        try:
            if method.guard is not None:
                identity_token = identity_var.set(await method.guard.authenticate(metadata))
            _check(request)
            async for item in _responses(inner(request, context)):
                yield item
            context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
        except BaseException as exc:
            code, abort = _outcome(context, exc, method.name, rid)
            await _end(context, exc, abort)
        finally:
            method.finish(code, started, rid_token, identity_token)

    return behavior


def _stream_unary(method: _Method, inner: Any) -> Any:
    async def behavior(requests: AsyncIterator[Message], context: Any) -> Any:
        rid, rid_token, started, metadata = method.begin(context)
        code, identity_token = "OK", None
        try:
            if method.guard is not None:
                identity_token = identity_var.set(await method.guard.authenticate(metadata))
            response = await inner(_checked(requests), context)
            context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
            return response
        except BaseException as exc:
            code, abort = _outcome(context, exc, method.name, rid)
            await _end(context, exc, abort)
        finally:
            method.finish(code, started, rid_token, identity_token)

    return behavior


def _stream_stream(method: _Method, inner: Any) -> Any:
    async def behavior(requests: AsyncIterator[Message], context: Any) -> AsyncIterator[Any]:
        rid, rid_token, started, metadata = method.begin(context)
        code, identity_token = "OK", None
        try:
            if method.guard is not None:
                identity_token = identity_var.set(await method.guard.authenticate(metadata))
            async for item in _responses(inner(_checked(requests), context)):
                yield item
            context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
        except BaseException as exc:
            code, abort = _outcome(context, exc, method.name, rid)
            await _end(context, exc, abort)
        finally:
            method.finish(code, started, rid_token, identity_token)

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
