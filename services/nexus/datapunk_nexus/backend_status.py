"""The status a backend ended a client-streaming call with, kept against a grpc.aio race.

When a backend ends a client stream while an edge is still writing to it (a bulk load
refused at its first bad batch), the write in flight fails, and grpc.aio's client gives
the call a status of its own: INTERNAL "Internal error from Core" (grpc/grpc#36066, still
open for grpcio 1.85). The backend's status arrives too, before or after that one, and
whichever came last is what the call reports. Measured through the gRPC entry, about one
such refused upload in ten reached the caller as INTERNAL instead of the backend's
INVALID_ARGUMENT and its details; through the REST edge, a few bidi ones in a hundred
became a 500.

A call runs its done callbacks each time it is given a status, so every status is seen as
it is set, and the one that came from the backend is kept."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

__all__ = ["BackendStatus"]

_CODES = {code.value[0]: code for code in grpc.StatusCode}

# How long a failed write waits for the backend's status. Core has it already (the write
# failed because the stream had ended), so it comes within a few loop turns; the bound
# only keeps a caller from waiting on something unforeseen.
_DELIVERY_WAIT = 1.0


def _is_write_failure(details: str | None, debug_error_string: str | None) -> bool:
    """Whether a status is the one grpc.aio makes up when a write fails."""
    return details == "Internal error from Core" and "SendMessageOperation" in (
        debug_error_string or ""
    )


class BackendStatus:
    """Watches one outgoing client-streaming call for the status its backend sent."""

    def __init__(self, call: Any, *, delivery_wait: float = _DELIVERY_WAIT) -> None:
        self._delivered: grpc.aio.AioRpcError | None = None
        self._arrived = asyncio.Event()
        self._delivery_wait = delivery_wait
        call.add_done_callback(self._keep)

    def _keep(self, call: Any) -> None:
        # grpc.aio offers the status only through coroutines, which run after it may have
        # been replaced; its Cython call holds it as it is set.
        status = call._cython_call._status
        if _is_write_failure(status.details(), status.debug_error_string()):
            return
        self._delivered = grpc.aio.AioRpcError(
            _CODES[status.code()],
            grpc.aio.Metadata(),
            grpc.aio.Metadata.from_tuple(status.trailing_metadata()),
            details=status.details(),
            debug_error_string=status.debug_error_string(),
        )
        self._arrived.set()

    async def of(self, error: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
        """The backend's failure when ``error`` is grpc.aio's failed write; else ``error``.

        A backend status of OK (an answer given before the upload ended) cannot be relayed
        as a failure, and without any backend status in time there is nothing better to
        say: ``error`` stays in both cases."""
        if not _is_write_failure(error.details(), error.debug_error_string()):
            return error
        try:
            await asyncio.wait_for(self._arrived.wait(), self._delivery_wait)
        except TimeoutError:
            return error
        delivered = self._delivered
        if delivered is None or delivered.code() is grpc.StatusCode.OK:
            return error
        return delivered
