"""The error vocabulary survives the trip to a google.rpc.Status and back."""

from __future__ import annotations

import grpc
from datapunk_shared.errors import (
    DOMAIN,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from datapunk_shared.rpc.status_codes import error_from_status, status_from_error
from google.rpc import error_details_pb2


def test_invalid_argument_carries_error_info_and_bad_request() -> None:
    error = InvalidArgument(
        "bad", violations=[FieldViolation("engines[0]", "no", "string.pattern")], reason="X"
    )
    code, status = status_from_error(error)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain) == ("X", DOMAIN)
    assert status.details[1].Unpack(bad)
    assert bad.field_violations[0].field == "engines[0]"

    back = error_from_status(code.name, status.message, status)
    assert isinstance(back, InvalidArgument)
    assert back.violations == error.violations
    assert back.reason == "X"


def test_unavailable_carries_retry_info() -> None:
    code, status = status_from_error(Unavailable("down", retry_after=1.5, metadata={"e": "pg"}))
    back = error_from_status(code.name, status.message, status)
    assert isinstance(back, Unavailable)
    assert back.retry_after == 1.5
    assert back.metadata == {"e": "pg"}


def test_not_found_round_trip() -> None:
    code, status = status_from_error(NotFound("nope", reason="LAYER_NOT_FOUND"))
    assert code is grpc.StatusCode.NOT_FOUND
    back = error_from_status(code.name, status.message, status)
    assert isinstance(back, NotFound)
    assert back.reason == "LAYER_NOT_FOUND"


def test_unknown_code_without_details_becomes_internal() -> None:
    back = error_from_status("DATA_LOSS", "lost", None)
    assert isinstance(back, Internal)
    assert back.metadata["grpc_code"] == "DATA_LOSS"
