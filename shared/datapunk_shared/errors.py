"""The one error vocabulary of Datapunk.

Domain code raises these exceptions; it never imports grpc. The server's error
interceptor maps each class once to a gRPC status code plus a ``google.rpc.ErrorInfo``
(``reason``, ``domain``, ``metadata``) and, where it applies, ``BadRequest`` field
violations or ``RetryInfo``. The client facade maps statuses back to the same classes,
so callers on both sides of the wire catch the same exceptions.

Hierarchy::

    DatapunkError
    ├── ConfigError              (process start-up; not sent over the wire)
    ├── InvalidArgument          INVALID_ARGUMENT  + BadRequest
    ├── NotFound                 NOT_FOUND
    ├── AlreadyExists            ALREADY_EXISTS
    ├── FailedPrecondition       FAILED_PRECONDITION
    ├── PermissionDenied         PERMISSION_DENIED
    ├── Unauthenticated          UNAUTHENTICATED
    ├── ResourceExhausted        RESOURCE_EXHAUSTED + RetryInfo
    ├── Unavailable              UNAVAILABLE        + RetryInfo
    ├── DeadlineExceeded         DEADLINE_EXCEEDED
    ├── Cancelled                CANCELLED
    ├── Unimplemented            UNIMPLEMENTED
    └── Internal                 INTERNAL
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "DOMAIN",
    "AlreadyExists",
    "Cancelled",
    "ConfigError",
    "DatapunkError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "engine_unavailable",
    "error_for_code",
]

DOMAIN = "datapunk.dev"
"""The ``ErrorInfo.domain`` of every error Datapunk raises."""


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request: its path (``engines[2]``) and what is wrong."""

    field: str
    description: str
    reason: str = ""


class DatapunkError(Exception):
    """Base of every Datapunk error.

    ``reason`` is a stable UPPER_SNAKE_CASE identifier clients can switch on;
    ``metadata`` carries machine-readable context (names, limits), never secrets.
    """

    code: str = "UNKNOWN"
    default_reason: str = "UNKNOWN"
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r})"


class ConfigError(DatapunkError):
    """The configuration is invalid; the process refuses to start."""

    code = "FAILED_PRECONDITION"
    default_reason = "INVALID_CONFIGURATION"

    def __init__(self, message: str, *, keys: Sequence[str] = ()) -> None:
        super().__init__(message, metadata={"keys": ",".join(keys)} if keys else None)
        self.keys = list(keys)


class InvalidArgument(DatapunkError):
    """The request is malformed; retrying it unchanged will fail again."""

    code = "INVALID_ARGUMENT"
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        violations: Sequence[FieldViolation] = (),
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = list(violations)


class NotFound(DatapunkError):
    """A named resource does not exist."""

    code = "NOT_FOUND"
    default_reason = "NOT_FOUND"


class AlreadyExists(DatapunkError):
    """A resource with that name exists already."""

    code = "ALREADY_EXISTS"
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(DatapunkError):
    """The system is not in a state in which the request can run."""

    code = "FAILED_PRECONDITION"
    default_reason = "FAILED_PRECONDITION"


class PermissionDenied(DatapunkError):
    """The caller is known but may not do this."""

    code = "PERMISSION_DENIED"
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(DatapunkError):
    """The caller's credentials are missing or invalid."""

    code = "UNAUTHENTICATED"
    default_reason = "UNAUTHENTICATED"


class _Retryable(DatapunkError):
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = retry_after


class ResourceExhausted(_Retryable):
    """A limit was reached; retry after ``retry_after`` seconds."""

    code = "RESOURCE_EXHAUSTED"
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(_Retryable):
    """An engine or service cannot be reached now; nothing was written. Retry later."""

    code = "UNAVAILABLE"
    default_reason = "UNAVAILABLE"


def engine_unavailable(
    engine: str,
    message: str,
    *,
    reason: str = "ENGINE_UNAVAILABLE",
    retry_after: float = 1.0,
) -> Unavailable:
    """The error for a storage engine that cannot be reached now: ``reason`` and
    ``metadata={"engine": engine}`` let clients tell which engine, ``retry_after`` when."""
    return Unavailable(message, retry_after=retry_after, reason=reason, metadata={"engine": engine})


class DeadlineExceeded(DatapunkError):
    """The call ran out of time; it may or may not have taken effect."""

    code = "DEADLINE_EXCEEDED"
    default_reason = "DEADLINE_EXCEEDED"


class Cancelled(DatapunkError):
    """The caller cancelled the call."""

    code = "CANCELLED"
    default_reason = "CANCELLED"


class Unimplemented(DatapunkError):
    """No service offers the method that was called."""

    code = "UNIMPLEMENTED"
    default_reason = "UNIMPLEMENTED"


class Internal(DatapunkError):
    """A bug or an unexpected engine answer; details are logged, not sent."""

    code = "INTERNAL"
    default_reason = "INTERNAL"


_BY_CODE: dict[str, type[DatapunkError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Cancelled,
        Unimplemented,
        Internal,
    )
}


def error_for_code(code: str) -> type[DatapunkError]:
    """The exception class for a status code name such as ``"NOT_FOUND"``."""
    return _BY_CODE.get(code, DatapunkError)
