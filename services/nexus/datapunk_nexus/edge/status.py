"""gRPC statuses as HTTP answers: the standard code mapping (google/rpc/code.proto) and a
JSON ``google.rpc.Status`` body with its details (``ErrorInfo``, ``BadRequest``,
``RetryInfo``) in the proto3 JSON form, ``@type`` included. Never text/plain."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import grpc
from datapunk_shared.errors import DOMAIN, DatapunkError
from datapunk_shared.rpc.status_codes import STATUS_DETAILS_KEY, status_from_error
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

__all__ = [
    "HTTP_STATUS",
    "JSON_CONTENT_TYPE",
    "ErrorAnswer",
    "answer_for_error",
    "answer_for_rpc_error",
    "status_body",
]

JSON_CONTENT_TYPE = "application/json"

HTTP_STATUS: dict[int, int] = {
    0: 200,  # OK
    1: 499,  # CANCELLED (client closed request)
    2: 500,  # UNKNOWN
    3: 400,  # INVALID_ARGUMENT
    4: 504,  # DEADLINE_EXCEEDED
    5: 404,  # NOT_FOUND
    6: 409,  # ALREADY_EXISTS
    7: 403,  # PERMISSION_DENIED
    8: 429,  # RESOURCE_EXHAUSTED
    9: 400,  # FAILED_PRECONDITION
    10: 409,  # ABORTED
    11: 400,  # OUT_OF_RANGE
    12: 501,  # UNIMPLEMENTED
    13: 500,  # INTERNAL
    14: 503,  # UNAVAILABLE
    15: 500,  # DATA_LOSS
    16: 401,  # UNAUTHENTICATED
}
"""gRPC code number -> HTTP status, as google.rpc.Code documents it (and Envoy maps it)."""


class ErrorAnswer:
    """An error ready to send: HTTP status, headers and the JSON body."""

    __slots__ = ("body", "headers", "http_status", "status")

    def __init__(self, status: status_pb2.Status, http_status: int | None = None) -> None:
        self.status = status
        self.http_status = http_status or HTTP_STATUS.get(status.code, 500)
        self.body = status_body(status)
        self.headers: dict[str, str] = {"Content-Type": JSON_CONTENT_TYPE}
        retry_after = _retry_after(status)
        if retry_after is not None and self.http_status in (429, 503):
            self.headers["Retry-After"] = str(retry_after)


def status_body(status: status_pb2.Status) -> bytes:
    """The proto3 JSON of ``status``; details of types this process cannot name are left
    out rather than failing the whole answer."""
    known = status_pb2.Status(code=status.code, message=status.message)
    for detail in status.details:
        try:
            json_format.MessageToDict(detail)
        except (TypeError, KeyError, json_format.Error):
            continue
        known.details.add().CopyFrom(detail)
    document = json_format.MessageToDict(known, always_print_fields_with_no_presence=True)
    return json.dumps(document, separators=(",", ":")).encode()


def _retry_after(status: status_pb2.Status) -> int | None:
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            seconds: float = float(info.retry_delay.seconds) + info.retry_delay.nanos / 1e9
            return max(1, math.ceil(seconds))
    return None


def answer_for_error(error: DatapunkError, http_status: int | None = None) -> ErrorAnswer:
    """The answer for an error the edge itself raises (or a policy raised)."""
    _, status = status_from_error(error)
    return ErrorAnswer(status, http_status)


def answer_for_rpc_error(
    error: grpc.aio.AioRpcError, *, backend: str, timeout: float | None
) -> ErrorAnswer:
    """The answer for a failed backend call: the backend's own ``google.rpc.Status``
    when it sent one, else one made here — a backend that cannot be reached gets
    ``RetryInfo`` so clients know to come back."""
    code = error.code()
    number = code.value[0] if isinstance(code, grpc.StatusCode) else 2
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            if status.code == number:
                return ErrorAnswer(status)
    status = status_pb2.Status(code=number, message=error.details() or code.name.lower())
    metadata: Mapping[str, str] = {"backend": backend}
    if code is grpc.StatusCode.UNAVAILABLE:
        status.message = f"the {backend} service is unavailable: {error.details()}"
        _add_info(status, "BACKEND_UNAVAILABLE", metadata)
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromSeconds(1)
        status.details.add().Pack(retry)
    elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
        status.message = f"the {backend} service did not answer in time"
        _add_info(
            status,
            "BACKEND_TIMEOUT",
            {**metadata, **({"timeout_seconds": f"{timeout:g}"} if timeout else {})},
        )
    else:
        _add_info(status, code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN", metadata)
    return ErrorAnswer(status)


def _add_info(status: status_pb2.Status, reason: str, metadata: Mapping[str, str]) -> None:
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=dict(metadata))
    )
