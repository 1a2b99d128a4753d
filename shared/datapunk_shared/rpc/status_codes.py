"""Mapping between the error vocabulary and ``google.rpc.Status`` with rich details,
used by the server interceptor (exception → status) and the client facade (status →
exception)."""

from __future__ import annotations

import math

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from datapunk_shared.errors import (
    DOMAIN,
    DatapunkError,
    FieldViolation,
    Internal,
    InvalidArgument,
    error_for_code,
)

__all__ = ["STATUS_DETAILS_KEY", "error_from_status", "status_from_error"]

STATUS_DETAILS_KEY = "grpc-status-details-bin"


def status_from_error(error: DatapunkError) -> tuple[grpc.StatusCode, status_pb2.Status]:
    """The gRPC code and the ``google.rpc.Status`` (ErrorInfo, BadRequest, RetryInfo)
    that stand for ``error`` on the wire."""
    code = (
        grpc.StatusCode[error.code]
        if error.code in grpc.StatusCode.__members__
        else (grpc.StatusCode.UNKNOWN)
    )
    status = status_pb2.Status(code=code.value[0], message=error.message)
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    )
    if isinstance(error, InvalidArgument) and error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description, reason=v.reason
                )
                for v in error.violations
            ]
        )
        status.details.add().Pack(bad_request)
    retry_after: float | None = getattr(error, "retry_after", None)
    if retry_after is not None:
        seconds = math.floor(retry_after)
        delay = duration_pb2.Duration(seconds=seconds, nanos=int((retry_after - seconds) * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return code, status


def error_from_status(
    code_name: str, message: str, status: status_pb2.Status | None
) -> DatapunkError:
    """The Datapunk exception for a status received from a server."""
    cls = error_for_code(code_name)
    reason: str | None = None
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    retry_after: float | None = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [
                FieldViolation(v.field, v.description, v.reason) for v in bad.field_violations
            ]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info_retry = error_details_pb2.RetryInfo()
            detail.Unpack(info_retry)
            retry_after = info_retry.retry_delay.ToTimedelta().total_seconds()
    if issubclass(cls, InvalidArgument):
        return cls(message, violations=violations, reason=reason, metadata=metadata)
    if cls.retryable:
        return cls(message, retry_after=retry_after, reason=reason, metadata=metadata)  # type: ignore[call-arg]
    if cls is DatapunkError:
        return Internal(
            message, reason=reason or code_name, metadata={**metadata, "grpc_code": code_name}
        )
    return cls(message, reason=reason, metadata=metadata)


# Keep the numeric codes of google.rpc and grpc in step (both follow the same table).
assert grpc.StatusCode.INVALID_ARGUMENT.value[0] == code_pb2.INVALID_ARGUMENT
