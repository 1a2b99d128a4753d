"""How a forwarded call fails: the backend's own status passes through untouched (code,
message, ``grpc-status-details-bin`` and trailing metadata); what the entry itself
decides (no owner, backend unreachable, refused by the gate) goes out as a Datapunk
error with ``ErrorInfo`` and, where retrying helps, ``RetryInfo``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

import grpc
from datapunk_shared.errors import DatapunkError, Unavailable
from datapunk_shared.rpc.status_codes import STATUS_DETAILS_KEY, status_from_error

from datapunk_nexus.entry.metadata import returned

__all__ = ["BACKEND_RETRY_SECONDS", "abort_with_backend_status", "abort_with_error"]

BACKEND_RETRY_SECONDS = 1.0
"""What a client is told to wait before retrying a backend that could not be reached."""

ServicerContext = Any  # grpc.aio.ServicerContext over raw bytes; its stubs are generic


async def abort_with_error(
    context: ServicerContext,
    error: DatapunkError,
    request_id: str,
    headers: Mapping[str, str] | None = None,
) -> NoReturn:
    code, status = status_from_error(error)
    trailing = returned(((STATUS_DETAILS_KEY, status.SerializeToString()),), request_id, headers)
    await context.abort(code, error.message, trailing_metadata=trailing)
    raise AssertionError("context.abort returned")  # pragma: no cover


def _unreachable(error: grpc.aio.AioRpcError) -> bool:
    """UNAVAILABLE made up by our own channel (no connection), not sent by the backend:
    a backend's own UNAVAILABLE carries details and already says when to retry."""
    if error.code() is not grpc.StatusCode.UNAVAILABLE:
        return False
    return all(key != STATUS_DETAILS_KEY for key, _ in error.trailing_metadata() or ())


async def abort_with_backend_status(
    context: ServicerContext,
    error: grpc.aio.AioRpcError,
    owner: str,
    request_id: str,
    headers: Mapping[str, str] | None = None,
) -> NoReturn:
    """End the call as the backend ended it, or as UNAVAILABLE + RetryInfo when the
    backend could not be reached at all."""
    if _unreachable(error):
        await abort_with_error(
            context,
            Unavailable(
                f"the {owner} service cannot be reached; retry later",
                retry_after=BACKEND_RETRY_SECONDS,
                reason="BACKEND_UNAVAILABLE",
                metadata={"backend": owner},
            ),
            request_id,
            headers,
        )
    trailing = returned(error.trailing_metadata(), request_id, headers)
    await context.abort(error.code(), error.details() or "", trailing_metadata=trailing)
    raise AssertionError("context.abort returned")  # pragma: no cover
