import datetime

from buf.validate import validate_pb2 as _validate_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AuditOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIT_OUTCOME_UNSPECIFIED: _ClassVar[AuditOutcome]
    AUDIT_OUTCOME_ALLOW: _ClassVar[AuditOutcome]
    AUDIT_OUTCOME_DENY: _ClassVar[AuditOutcome]
    AUDIT_OUTCOME_ERROR: _ClassVar[AuditOutcome]

class AuditOrder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIT_ORDER_UNSPECIFIED: _ClassVar[AuditOrder]
    AUDIT_ORDER_NEWEST_FIRST: _ClassVar[AuditOrder]
    AUDIT_ORDER_OLDEST_FIRST: _ClassVar[AuditOrder]

class AuditChainProblem(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIT_CHAIN_PROBLEM_UNSPECIFIED: _ClassVar[AuditChainProblem]
    AUDIT_CHAIN_PROBLEM_EDITED: _ClassVar[AuditChainProblem]
    AUDIT_CHAIN_PROBLEM_INSERTED: _ClassVar[AuditChainProblem]
    AUDIT_CHAIN_PROBLEM_MISSING: _ClassVar[AuditChainProblem]
    AUDIT_CHAIN_PROBLEM_OUT_OF_ORDER: _ClassVar[AuditChainProblem]
AUDIT_OUTCOME_UNSPECIFIED: AuditOutcome
AUDIT_OUTCOME_ALLOW: AuditOutcome
AUDIT_OUTCOME_DENY: AuditOutcome
AUDIT_OUTCOME_ERROR: AuditOutcome
AUDIT_ORDER_UNSPECIFIED: AuditOrder
AUDIT_ORDER_NEWEST_FIRST: AuditOrder
AUDIT_ORDER_OLDEST_FIRST: AuditOrder
AUDIT_CHAIN_PROBLEM_UNSPECIFIED: AuditChainProblem
AUDIT_CHAIN_PROBLEM_EDITED: AuditChainProblem
AUDIT_CHAIN_PROBLEM_INSERTED: AuditChainProblem
AUDIT_CHAIN_PROBLEM_MISSING: AuditChainProblem
AUDIT_CHAIN_PROBLEM_OUT_OF_ORDER: AuditChainProblem

class AuditEvent(_message.Message):
    __slots__ = ("sequence", "time", "tenant", "principal", "principal_kind", "credential_id", "action", "method", "resource", "outcome", "reason", "client_address", "request_id", "previous_hash", "hash")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_KIND_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    time: _timestamp_pb2.Timestamp
    tenant: str
    principal: str
    principal_kind: str
    credential_id: str
    action: str
    method: str
    resource: str
    outcome: AuditOutcome
    reason: str
    client_address: str
    request_id: str
    previous_hash: bytes
    hash: bytes
    def __init__(self, sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tenant: _Optional[str] = ..., principal: _Optional[str] = ..., principal_kind: _Optional[str] = ..., credential_id: _Optional[str] = ..., action: _Optional[str] = ..., method: _Optional[str] = ..., resource: _Optional[str] = ..., outcome: _Optional[_Union[AuditOutcome, str]] = ..., reason: _Optional[str] = ..., client_address: _Optional[str] = ..., request_id: _Optional[str] = ..., previous_hash: _Optional[bytes] = ..., hash: _Optional[bytes] = ...) -> None: ...

class AuditEventFilter(_message.Message):
    __slots__ = ("principal", "action", "resource_prefix", "outcome", "start_time", "end_time")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_PREFIX_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    principal: str
    action: str
    resource_prefix: str
    outcome: AuditOutcome
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, principal: _Optional[str] = ..., action: _Optional[str] = ..., resource_prefix: _Optional[str] = ..., outcome: _Optional[_Union[AuditOutcome, str]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SearchAuditEventsRequest(_message.Message):
    __slots__ = ("filter", "order", "page_size", "page_token", "platform")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    filter: AuditEventFilter
    order: AuditOrder
    page_size: int
    page_token: str
    platform: bool
    def __init__(self, filter: _Optional[_Union[AuditEventFilter, _Mapping]] = ..., order: _Optional[_Union[AuditOrder, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., platform: _Optional[bool] = ...) -> None: ...

class SearchAuditEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ExportAuditEventsRequest(_message.Message):
    __slots__ = ("filter", "order", "platform")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    filter: AuditEventFilter
    order: AuditOrder
    platform: bool
    def __init__(self, filter: _Optional[_Union[AuditEventFilter, _Mapping]] = ..., order: _Optional[_Union[AuditOrder, str]] = ..., platform: _Optional[bool] = ...) -> None: ...

class ExportAuditEventsResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: AuditEvent
    def __init__(self, event: _Optional[_Union[AuditEvent, _Mapping]] = ...) -> None: ...

class VerifyAuditTrailRequest(_message.Message):
    __slots__ = ("from_sequence", "to_sequence", "platform")
    FROM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TO_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    from_sequence: int
    to_sequence: int
    platform: bool
    def __init__(self, from_sequence: _Optional[int] = ..., to_sequence: _Optional[int] = ..., platform: _Optional[bool] = ...) -> None: ...

class VerifyAuditTrailResponse(_message.Message):
    __slots__ = ("ok", "checked_count", "first_sequence", "last_sequence", "checkpoint_sequence", "broken_sequence", "problem", "description")
    OK_FIELD_NUMBER: _ClassVar[int]
    CHECKED_COUNT_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    BROKEN_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    checked_count: int
    first_sequence: int
    last_sequence: int
    checkpoint_sequence: int
    broken_sequence: int
    problem: AuditChainProblem
    description: str
    def __init__(self, ok: _Optional[bool] = ..., checked_count: _Optional[int] = ..., first_sequence: _Optional[int] = ..., last_sequence: _Optional[int] = ..., checkpoint_sequence: _Optional[int] = ..., broken_sequence: _Optional[int] = ..., problem: _Optional[_Union[AuditChainProblem, str]] = ..., description: _Optional[str] = ...) -> None: ...
