import datetime

from buf.validate import validate_pb2 as _validate_pb2
from datapunk.common.v1 import status_pb2 as _status_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetStatusRequest(_message.Message):
    __slots__ = ("refresh", "probe_timeout", "engines")
    REFRESH_FIELD_NUMBER: _ClassVar[int]
    PROBE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    ENGINES_FIELD_NUMBER: _ClassVar[int]
    refresh: bool
    probe_timeout: _duration_pb2.Duration
    engines: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, refresh: _Optional[bool] = ..., probe_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., engines: _Optional[_Iterable[str]] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _status_pb2.ServiceStatus
    def __init__(self, status: _Optional[_Union[_status_pb2.ServiceStatus, _Mapping]] = ...) -> None: ...
