"""A typed client facade over the generated stubs.

Every failed call raises the Datapunk exception for its status (``NotFound``,
``InvalidArgument`` with its field violations, ``Unavailable`` with ``retry_after``...),
never a raw ``grpc.RpcError``; idempotent calls are retried under a RetryPolicy.

    async with LakeClient("127.0.0.1:50051") as lake:
        status = await lake.get_status(refresh=True)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
from google.protobuf import duration_pb2
from google.rpc import status_pb2

from datapunk_shared.errors import DatapunkError
from datapunk_shared.retry import RetryPolicy, retry_call
from datapunk_shared.rpc.status_codes import STATUS_DETAILS_KEY, error_from_status
from datapunk_shared.rpc.status_messages import report_from_proto
from datapunk_shared.status import StatusReport

__all__ = ["LakeClient", "NexusClient", "ServiceClient", "StreamClient", "error_from_rpc_error"]

R = TypeVar("R")

DEFAULT_RETRY = RetryPolicy()


def error_from_rpc_error(error: grpc.aio.AioRpcError) -> DatapunkError:
    """The Datapunk exception for a failed call, details included."""
    status: status_pb2.Status | None = None
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
    return error_from_status(error.code().name, error.details() or "", status)


class ServiceClient:
    """A channel to one service plus the call/retry/error plumbing of its methods."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 10.0,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retry = retry
        self._own_channel = channel is None
        self.channel = channel if channel is not None else grpc.aio.insecure_channel(target)

    async def call(
        self,
        method: Callable[..., Awaitable[R]],
        request: Any,
        *,
        idempotent: bool,
        timeout: float | None = None,
    ) -> R:
        """Invoke a unary stub method, mapping errors and retrying idempotent calls."""

        async def once() -> R:
            try:
                return await method(request, timeout=timeout or self.timeout)
            except grpc.aio.AioRpcError as exc:
                raise error_from_rpc_error(exc) from None

        if idempotent and self.retry is not None:
            return await retry_call(once, self.retry)
        return await once()

    async def close(self) -> None:
        if self._own_channel:
            await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class _StatusClient(ServiceClient):
    _pb2: Any
    _pb2_grpc: Any

    def __init__(self, target: str, **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        self._status = self._pb2_grpc.StatusServiceStub(self.channel)

    async def get_status(
        self,
        *,
        refresh: bool = False,
        probe_timeout: float | None = None,
        engines: Sequence[str] = (),
    ) -> StatusReport:
        """The service's status; see ``GetStatus`` in the contract."""
        request = self._pb2.GetStatusRequest(refresh=refresh, engines=list(engines))
        if probe_timeout is not None:
            duration = duration_pb2.Duration()
            duration.FromNanoseconds(round(probe_timeout * 1e9))
            request.probe_timeout.CopyFrom(duration)
        response = await self.call(self._status.GetStatus, request, idempotent=True)
        return report_from_proto(response.status)


class LakeClient(_StatusClient):
    """Client of the Lake (storage)."""

    from datapunk.lake.v1 import status_pb2 as _pb2
    from datapunk.lake.v1 import status_pb2_grpc as _pb2_grpc


class StreamClient(_StatusClient):
    """Client of the Stream (ingestion)."""

    from datapunk.stream.v1 import status_pb2 as _pb2
    from datapunk.stream.v1 import status_pb2_grpc as _pb2_grpc


class NexusClient(_StatusClient):
    """Client of Nexus (the gateway)."""

    from datapunk.nexus.v1 import status_pb2 as _pb2
    from datapunk.nexus.v1 import status_pb2_grpc as _pb2_grpc
