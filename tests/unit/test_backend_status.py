"""``BackendStatus`` on the orders in which grpc.aio sets a refused upload's statuses
(datapunk_nexus/backend_status.py): the backend's and, when a write in flight fails,
grpc.aio's made-up INTERNAL, first or last. The call stands in for grpc.aio's, which runs
its done callbacks with itself each time its Cython call is given a status; the statuses
are grpc's own. The race itself, through the real entry and REST edge:
tests/unit/test_entry_forwarding.py and tests/unit/test_edge_server.py."""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from datapunk_nexus.backend_status import BackendStatus

# grpc's compiled core (AioRpcStatus is the status type grpc.aio's calls hold); its
# typing stubs do not describe it.
cygrpc: Any = importlib.import_module("grpc._cython.cygrpc")

MADE_UP = cygrpc.AioRpcStatus(
    cygrpc.StatusCode.internal,
    "Internal error from Core",
    (),
    'Failed "execute_batch": (<grpc._cython.cygrpc.SendMessageOperation object at 0x7f>,)',
)
REFUSED = cygrpc.AioRpcStatus(
    cygrpc.StatusCode.invalid_argument,
    "bad batch",
    (("grpc-status-details-bin", b"details"), ("x-request-id", "r-1")),
    "UNKNOWN:Error received from peer",
)
ANSWERED = cygrpc.AioRpcStatus(cygrpc.StatusCode.ok, "", (), "")


class _Call:
    """What ``BackendStatus`` uses of a grpc.aio call."""

    def __init__(self) -> None:
        self._cython_call = SimpleNamespace(_status=None)
        self._callbacks: list[Callable[[Any], None]] = []

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._callbacks.append(callback)

    def given(self, status: Any) -> grpc.aio.AioRpcError:
        """Set ``status`` as grpc.aio does; returns the error the call now reports."""
        self._cython_call._status = status
        for callback in self._callbacks:
            callback(self)
        return _error(status)


def _error(status: Any) -> grpc.aio.AioRpcError:
    code = next(c for c in grpc.StatusCode if c.value[0] == status.code())
    return grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata.from_tuple(status.trailing_metadata()),
        details=status.details(),
        debug_error_string=status.debug_error_string(),
    )


@pytest.mark.parametrize("made_up_first", [True, False])
async def test_the_backends_refusal_is_reported_in_either_order(made_up_first: bool) -> None:
    call = _Call()
    watched = BackendStatus(call)
    if made_up_first:
        reported = call.given(MADE_UP)
        call.given(REFUSED)  # arrives after the caller caught the made-up one
    else:
        call.given(REFUSED)
        reported = call.given(MADE_UP)
    assert reported.code() is grpc.StatusCode.INTERNAL
    error = await watched.of(reported)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "bad batch"
    assert tuple(error.trailing_metadata()) == REFUSED.trailing_metadata()


async def test_the_made_up_error_stays_when_no_backend_status_comes() -> None:
    call = _Call()
    watched = BackendStatus(call, delivery_wait=0.05)
    reported = call.given(MADE_UP)
    started = time.monotonic()
    assert await watched.of(reported) is reported
    assert time.monotonic() - started >= 0.05


async def test_the_made_up_error_stays_after_an_answer() -> None:
    # The backend answered before the upload ended; the answer is lost, and OK is no
    # failure to report.
    call = _Call()
    watched = BackendStatus(call)
    call.given(ANSWERED)
    reported = call.given(MADE_UP)
    assert await watched.of(reported) is reported


async def test_any_other_failure_is_reported_as_it_is_at_once() -> None:
    call = _Call()
    watched = BackendStatus(call, delivery_wait=60)
    reported = call.given(REFUSED)
    assert await asyncio.wait_for(watched.of(reported), 1) is reported
