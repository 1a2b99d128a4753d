"""Forwarding on raw bytes: every call is relayed to its owner without decoding its
messages, in the call kind of its method.

Each forwarded call is admitted by the request gate (held for the whole call, its headers
sent back), takes its deadline, metadata and request id to the backend, and ends as the
backend ended it. Cancelling the incoming call cancels the outgoing one. Streams relay
one message at a time in each direction, and each direction waits for its write to be
accepted before it reads the next message, so flow control reaches from the backend to
the client and back: there is no queue between the two sides."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from datapunk_shared.auth.identity import Identity
from datapunk_shared.errors import DatapunkError, Unimplemented
from datapunk_shared.rpc.client import error_from_rpc_error

from datapunk_nexus.backend_status import BackendStatus
from datapunk_nexus.backends import Backends
from datapunk_nexus.entry.deadlines import DeadlinePolicy
from datapunk_nexus.entry.failures import abort_with_backend_status, abort_with_error
from datapunk_nexus.entry.metadata import (
    Metadata,
    client_ip,
    new_request_id,
    outgoing,
    request_id_of,
    returned,
)
from datapunk_nexus.entry.routes import CallKind, Route, RouteTable
from datapunk_nexus.identity.enforce import (
    AccessGuard,
    Caller,
    StreamPermissions,
    call_info,
    credentials_of,
)
from datapunk_nexus.policy import CallInfo, RequestGate, ResponseCache, rejection_headers

__all__ = ["ForwardingHandler"]

Context = Any  # grpc.aio.ServicerContext[bytes, bytes]; its stubs do not fit raw bytes


# How many event-loop turns the end of a client stream waits before it is passed on.
_SETTLE_TURNS = 3


async def _permitted(requests: AsyncIterator[bytes], state: _StreamState) -> AsyncIterator[bytes]:
    """The caller's messages, each passed on only once the caller may send it (each may
    name another resource). The first refusal is kept and the backend call cancelled;
    the handler then ends the call with that refusal."""
    async for request in requests:
        if state.permissions is not None:
            try:
                await state.permissions.check(request)
            except DatapunkError as refused:
                state.failure = refused
                if state.call is not None:
                    state.call.cancel()
                raise asyncio.CancelledError from None
        yield request


async def _relayed(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
    """The caller's messages, for the backend call to send as they come.

    grpc.aio ends the server-side request iterator the same way for a half-close and for a
    cancelled call; the cancellation itself reaches the handler a loop turn later. A
    backend must never see a cancelled upload as a completed one (for a bulk load the end
    of the stream means "done"), so the end is passed on only once a few turns have gone
    by without the call being cancelled: a cancellation cancels the backend call, and this
    generator with it, before it returns."""
    async for request in requests:
        yield request
    for _ in range(_SETTLE_TURNS):
        await asyncio.sleep(0)
    if context.cancelled() or context.done():
        raise asyncio.CancelledError


@dataclass
class _StreamState:
    """A client stream's permission checks, their first refusal, and the backend call."""

    permissions: StreamPermissions | None = None
    failure: DatapunkError | None = None
    call: Any = None


_PEERS: dict[str, str] = {}
_MAX_PEERS = 4096


def _client_address(peer: str) -> str:
    """``client_ip(peer)``, remembered: a connection's calls share one peer string."""
    found = _PEERS.get(peer)
    if found is None:
        if len(_PEERS) >= _MAX_PEERS:
            _PEERS.clear()
        found = _PEERS[peer] = client_ip(peer)
    return found


class _Forwarder:
    """The handler behaviours of one route."""

    def __init__(
        self,
        route: Route,
        channel: grpc.aio.Channel,
        gate: RequestGate,
        cache: ResponseCache,
        fallback_timeout: float | None,
        registered: bool,
        guard: AccessGuard | None,
    ) -> None:
        self.route = route
        self.method = route.method
        self.gate = gate
        self.cache = cache
        self.guard = guard
        self.fallback_timeout = fallback_timeout
        # The client side of the same kind, without serializers: bytes in, bytes out.
        # Methods of the descriptor set are registered with gRPC core once (cheaper calls).
        self._call: Any = getattr(channel, route.kind.value)(
            route.method, _registered_method=registered
        )

    def _begin(self, context: Context) -> tuple[Caller, Metadata, float | None]:
        incoming = context.invocation_metadata() or ()
        request_id = request_id_of(incoming) or new_request_id()
        timeout = DeadlinePolicy.timeout(context.time_remaining(), self.fallback_timeout)
        # Keys without "-bin" always carry text, so the credentials are str values here.
        authorization, api_key = credentials_of(dict(incoming))
        caller = Caller(
            method=self.method,
            client_ip=_client_address(context.peer()),
            request_id=request_id,
            authorization=authorization,
            api_key=api_key,
        )
        return caller, tuple(incoming), timeout

    async def _admit(self, caller: Caller, request: bytes) -> tuple[Identity | None, CallInfo]:
        """Authenticate the caller; the call as the gate and the cache see it."""
        identity = None if self.guard is None else await self.guard.authenticate(caller, self.gate)
        return identity, call_info(caller, identity, request)

    async def _authorize(self, caller: Caller, identity: Identity | None, request: bytes) -> None:
        if self.guard is not None:
            await self.guard.authorize_request(caller, identity, request)

    def _outgoing(self, caller: Caller, incoming: Metadata, identity: Identity | None) -> Metadata:
        own = () if self.guard is None else self.guard.backend_metadata(self.route.owner, identity)
        return outgoing(incoming, caller.request_id, own)

    async def _send_headers(self, context: Context, call: Any, headers: Mapping[str, str]) -> None:
        """The backend's initial metadata plus the gate's headers, when there are any."""
        initial = await call.initial_metadata()
        if initial or headers:
            await context.send_initial_metadata(returned(initial, None, headers))

    async def unary_unary(self, request: bytes, context: Context) -> bytes:
        caller, incoming, timeout = self._begin(context)
        request_id = caller.request_id
        try:
            identity, info = await self._admit(caller, request)
            async with self.gate.admit(info) as headers:
                await self._authorize(caller, identity, request)
                metadata = self._outgoing(caller, incoming, identity)
                cacheable = self.cache.cacheable(info.method)
                if cacheable:
                    hit = await self.cache.get(info)
                    if hit is not None:
                        if headers:
                            await context.send_initial_metadata(returned((), None, headers))
                        context.set_trailing_metadata(returned((), request_id))
                        return hit
                call = self._call(request, timeout=timeout, metadata=metadata)
                try:
                    response: bytes = await call
                except grpc.aio.AioRpcError as error:
                    if self.guard is not None:
                        refusal = error_from_rpc_error(error)
                        await self.guard.refused_by_owner(caller, identity, request, refusal)
                    await abort_with_backend_status(
                        context, error, self.route.owner, request_id, headers
                    )
                finally:
                    call.cancel()  # a no-op once done; stops the backend call on cancellation
                await self._send_headers(context, call, headers)
                context.set_trailing_metadata(returned(await call.trailing_metadata(), request_id))
                if cacheable:
                    await self.cache.put(info, response)
                await self.cache.after_call(info)
                return response
        except DatapunkError as error:  # refused by the gate, with Retry-After/RateLimit-*
            await abort_with_error(context, error, request_id, rejection_headers(error))

    async def unary_stream(self, request: bytes, context: Context) -> AsyncIterator[bytes]:
        caller, incoming, timeout = self._begin(context)
        request_id = caller.request_id
        try:
            identity, info = await self._admit(caller, request)
            async with self.gate.admit(info) as headers:
                await self._authorize(caller, identity, request)
                metadata = self._outgoing(caller, incoming, identity)
                call = self._call(request, timeout=timeout, metadata=metadata)
                try:
                    await self._send_headers(context, call, headers)
                    async for response in call:
                        yield response
                    trailing = await call.trailing_metadata()
                except grpc.aio.AioRpcError as error:
                    await abort_with_backend_status(
                        context, error, self.route.owner, request_id, headers
                    )
                finally:
                    call.cancel()
                context.set_trailing_metadata(returned(trailing, request_id))
                await self.cache.after_call(info)
        except DatapunkError as error:
            await abort_with_error(context, error, request_id, rejection_headers(error))

    async def stream_unary(self, requests: AsyncIterator[bytes], context: Context) -> bytes:
        caller, incoming, timeout = self._begin(context)
        request_id = caller.request_id
        try:
            identity, info = await self._admit(caller, b"")
            async with self.gate.admit(info) as headers:
                metadata = self._outgoing(caller, incoming, identity)
                state = await self._stream_state(caller, identity)
                relayed = _relayed(_permitted(requests, state), context)
                call = state.call = self._call(relayed, timeout=timeout, metadata=metadata)
                backend_status = BackendStatus(call)
                try:
                    response: bytes = await call
                except (grpc.aio.AioRpcError, asyncio.CancelledError) as error:
                    if state.failure is not None:
                        raise state.failure from None
                    if isinstance(error, asyncio.CancelledError):
                        raise
                    await abort_with_backend_status(
                        context,
                        await backend_status.of(error),
                        self.route.owner,
                        request_id,
                        headers,
                    )
                finally:
                    call.cancel()
                await self._send_headers(context, call, headers)
                context.set_trailing_metadata(returned(await call.trailing_metadata(), request_id))
                await self.cache.after_call(info)
                return response
        except DatapunkError as error:
            await abort_with_error(context, error, request_id, rejection_headers(error))

    async def stream_stream(
        self, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[bytes]:
        caller, incoming, timeout = self._begin(context)
        request_id = caller.request_id
        try:
            identity, info = await self._admit(caller, b"")
            async with self.gate.admit(info) as headers:
                metadata = self._outgoing(caller, incoming, identity)
                state = await self._stream_state(caller, identity)
                relayed = _relayed(_permitted(requests, state), context)
                call = state.call = self._call(relayed, timeout=timeout, metadata=metadata)
                backend_status = BackendStatus(call)
                try:
                    await self._send_headers(context, call, headers)
                    async for response in call:
                        yield response
                    trailing = await call.trailing_metadata()
                except (grpc.aio.AioRpcError, asyncio.CancelledError) as error:
                    if state.failure is not None:
                        raise state.failure from None
                    if isinstance(error, asyncio.CancelledError):
                        raise
                    await abort_with_backend_status(
                        context,
                        await backend_status.of(error),
                        self.route.owner,
                        request_id,
                        headers,
                    )
                finally:
                    call.cancel()
                context.set_trailing_metadata(returned(trailing, request_id))
                await self.cache.after_call(info)
        except DatapunkError as error:
            await abort_with_error(context, error, request_id, rejection_headers(error))

    async def _stream_state(self, caller: Caller, identity: Identity | None) -> _StreamState:
        """The stream's checks; an anonymous caller is refused before the backend call."""
        if self.guard is None:
            return _StreamState()
        return _StreamState(permissions=await self.guard.open_stream(caller, identity))

    def handler(self) -> grpc.RpcMethodHandler[bytes, bytes]:
        kind = self.route.kind
        if kind is CallKind.UNARY_UNARY:
            return grpc.unary_unary_rpc_method_handler(self.unary_unary)
        if kind is CallKind.UNARY_STREAM:
            return grpc.unary_stream_rpc_method_handler(self.unary_stream)
        if kind is CallKind.STREAM_UNARY:
            return grpc.stream_unary_rpc_method_handler(self.stream_unary)
        return grpc.stream_stream_rpc_method_handler(self.stream_stream)


def _unimplemented(method: str) -> grpc.RpcMethodHandler[bytes, bytes]:
    """A handler that refuses ``method`` without reading a message, whatever its kind."""

    async def refuse(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        request_id = request_id_of(context.invocation_metadata()) or new_request_id()
        await abort_with_error(
            context,
            Unimplemented(
                f"no Datapunk service offers {method}",
                reason="UNKNOWN_METHOD",
                metadata={"method": method[:200]},
            ),
            request_id,
        )
        yield b""  # pragma: no cover - makes this an async generator

    return grpc.stream_stream_rpc_method_handler(refuse)


class ForwardingHandler(grpc.GenericRpcHandler):
    """The entry's catch-all: every method it is asked for is forwarded to its owner or
    refused with UNIMPLEMENTED. Register it after the entry's own services (health,
    reflection), which gRPC then finds first."""

    def __init__(
        self,
        routes: RouteTable,
        backends: Backends,
        gate: RequestGate,
        cache: ResponseCache,
        deadlines: DeadlinePolicy,
        guard: AccessGuard | None = None,
    ) -> None:
        self._routes = routes
        self._guard = guard
        self._backends = backends
        self._gate = gate
        self._cache = cache
        self._deadlines = deadlines
        # Only methods of the descriptor set are kept: callers choose method names, and
        # a cache keyed by them must not grow without bound.
        self._known: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes]:
        method: str = handler_call_details.method
        handler = self._known.get(method)
        if handler is not None:
            return handler
        route = self._routes.lookup(method)
        if route is None:
            return _unimplemented(method)
        registered = self._routes.knows(method)
        handler = self._forwarder(route, registered).handler()
        if registered:
            self._known[method] = handler
        return handler

    def _forwarder(self, route: Route, registered: bool) -> _Forwarder:
        return _Forwarder(
            route,
            self._backends.channel(route.owner),
            self._gate,
            self._cache,
            self._deadlines.fallback(route),
            registered,
            self._guard,
        )
