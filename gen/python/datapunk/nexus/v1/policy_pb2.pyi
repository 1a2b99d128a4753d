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

class ResourceType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESOURCE_TYPE_UNSPECIFIED: _ClassVar[ResourceType]
    RESOURCE_TYPE_ANY: _ClassVar[ResourceType]
    RESOURCE_TYPE_COLLECTION: _ClassVar[ResourceType]
    RESOURCE_TYPE_SERIES: _ClassVar[ResourceType]
    RESOURCE_TYPE_LAYER: _ClassVar[ResourceType]
    RESOURCE_TYPE_DATASET: _ClassVar[ResourceType]
    RESOURCE_TYPE_PIPELINE: _ClassVar[ResourceType]
    RESOURCE_TYPE_ROUTE: _ClassVar[ResourceType]
    RESOURCE_TYPE_PLATFORM: _ClassVar[ResourceType]

class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_UNSPECIFIED: _ClassVar[Action]
    ACTION_READ: _ClassVar[Action]
    ACTION_WRITE: _ClassVar[Action]
    ACTION_ADMIN: _ClassVar[Action]

class Classification(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLASSIFICATION_UNSPECIFIED: _ClassVar[Classification]
    CLASSIFICATION_PUBLIC: _ClassVar[Classification]
    CLASSIFICATION_INTERNAL: _ClassVar[Classification]
    CLASSIFICATION_CONFIDENTIAL: _ClassVar[Classification]
    CLASSIFICATION_RESTRICTED: _ClassVar[Classification]
RESOURCE_TYPE_UNSPECIFIED: ResourceType
RESOURCE_TYPE_ANY: ResourceType
RESOURCE_TYPE_COLLECTION: ResourceType
RESOURCE_TYPE_SERIES: ResourceType
RESOURCE_TYPE_LAYER: ResourceType
RESOURCE_TYPE_DATASET: ResourceType
RESOURCE_TYPE_PIPELINE: ResourceType
RESOURCE_TYPE_ROUTE: ResourceType
RESOURCE_TYPE_PLATFORM: ResourceType
ACTION_UNSPECIFIED: Action
ACTION_READ: Action
ACTION_WRITE: Action
ACTION_ADMIN: Action
CLASSIFICATION_UNSPECIFIED: Classification
CLASSIFICATION_PUBLIC: Classification
CLASSIFICATION_INTERNAL: Classification
CLASSIFICATION_CONFIDENTIAL: Classification
CLASSIFICATION_RESTRICTED: Classification

class Conditions(_message.Message):
    __slots__ = ("max_classification", "require_clearance")
    MAX_CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_CLEARANCE_FIELD_NUMBER: _ClassVar[int]
    max_classification: Classification
    require_clearance: bool
    def __init__(self, max_classification: _Optional[_Union[Classification, str]] = ..., require_clearance: _Optional[bool] = ...) -> None: ...

class Permission(_message.Message):
    __slots__ = ("resource_type", "name_pattern", "actions", "conditions")
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_PATTERN_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    resource_type: ResourceType
    name_pattern: str
    actions: _containers.RepeatedScalarFieldContainer[Action]
    conditions: Conditions
    def __init__(self, resource_type: _Optional[_Union[ResourceType, str]] = ..., name_pattern: _Optional[str] = ..., actions: _Optional[_Iterable[_Union[Action, str]]] = ..., conditions: _Optional[_Union[Conditions, _Mapping]] = ...) -> None: ...

class Role(_message.Message):
    __slots__ = ("name", "description", "permissions", "builtin", "create_time", "update_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PERMISSIONS_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    permissions: _containers.RepeatedCompositeFieldContainer[Permission]
    builtin: bool
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., permissions: _Optional[_Iterable[_Union[Permission, _Mapping]]] = ..., builtin: _Optional[bool] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RoleBinding(_message.Message):
    __slots__ = ("principal", "role", "create_time")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    principal: str
    role: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, principal: _Optional[str] = ..., role: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PutRoleRequest(_message.Message):
    __slots__ = ("role",)
    ROLE_FIELD_NUMBER: _ClassVar[int]
    role: Role
    def __init__(self, role: _Optional[_Union[Role, _Mapping]] = ...) -> None: ...

class PutRoleResponse(_message.Message):
    __slots__ = ("role", "created")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    role: Role
    created: bool
    def __init__(self, role: _Optional[_Union[Role, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetRoleRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetRoleResponse(_message.Message):
    __slots__ = ("role",)
    ROLE_FIELD_NUMBER: _ClassVar[int]
    role: Role
    def __init__(self, role: _Optional[_Union[Role, _Mapping]] = ...) -> None: ...

class ListRolesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRolesResponse(_message.Message):
    __slots__ = ("roles", "next_page_token")
    ROLES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    roles: _containers.RepeatedCompositeFieldContainer[Role]
    next_page_token: str
    def __init__(self, roles: _Optional[_Iterable[_Union[Role, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteRoleRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteRoleResponse(_message.Message):
    __slots__ = ("deleted_binding_count",)
    DELETED_BINDING_COUNT_FIELD_NUMBER: _ClassVar[int]
    deleted_binding_count: int
    def __init__(self, deleted_binding_count: _Optional[int] = ...) -> None: ...

class GrantRoleRequest(_message.Message):
    __slots__ = ("principal", "role")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    principal: str
    role: str
    def __init__(self, principal: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class GrantRoleResponse(_message.Message):
    __slots__ = ("binding", "created")
    BINDING_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    binding: RoleBinding
    created: bool
    def __init__(self, binding: _Optional[_Union[RoleBinding, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class RevokeRoleRequest(_message.Message):
    __slots__ = ("principal", "role")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    principal: str
    role: str
    def __init__(self, principal: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class RevokeRoleResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRoleBindingsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "principal", "role")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    principal: str
    role: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., principal: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class ListRoleBindingsResponse(_message.Message):
    __slots__ = ("bindings", "next_page_token")
    BINDINGS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    bindings: _containers.RepeatedCompositeFieldContainer[RoleBinding]
    next_page_token: str
    def __init__(self, bindings: _Optional[_Iterable[_Union[RoleBinding, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CheckPermissionRequest(_message.Message):
    __slots__ = ("principal", "action", "resource", "classification")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    principal: str
    action: Action
    resource: str
    classification: Classification
    def __init__(self, principal: _Optional[str] = ..., action: _Optional[_Union[Action, str]] = ..., resource: _Optional[str] = ..., classification: _Optional[_Union[Classification, str]] = ...) -> None: ...

class ResourceLabel(_message.Message):
    __slots__ = ("resource", "classification", "update_time")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    resource: str
    classification: Classification
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, resource: _Optional[str] = ..., classification: _Optional[_Union[Classification, str]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class LabelResourceRequest(_message.Message):
    __slots__ = ("label",)
    LABEL_FIELD_NUMBER: _ClassVar[int]
    label: ResourceLabel
    def __init__(self, label: _Optional[_Union[ResourceLabel, _Mapping]] = ...) -> None: ...

class LabelResourceResponse(_message.Message):
    __slots__ = ("label", "previous_classification")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    label: ResourceLabel
    previous_classification: Classification
    def __init__(self, label: _Optional[_Union[ResourceLabel, _Mapping]] = ..., previous_classification: _Optional[_Union[Classification, str]] = ...) -> None: ...

class GetResourceLabelRequest(_message.Message):
    __slots__ = ("resource",)
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    resource: str
    def __init__(self, resource: _Optional[str] = ...) -> None: ...

class GetResourceLabelResponse(_message.Message):
    __slots__ = ("label",)
    LABEL_FIELD_NUMBER: _ClassVar[int]
    label: ResourceLabel
    def __init__(self, label: _Optional[_Union[ResourceLabel, _Mapping]] = ...) -> None: ...

class ListResourceLabelsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListResourceLabelsResponse(_message.Message):
    __slots__ = ("labels", "next_page_token")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[ResourceLabel]
    next_page_token: str
    def __init__(self, labels: _Optional[_Iterable[_Union[ResourceLabel, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteResourceLabelRequest(_message.Message):
    __slots__ = ("resource",)
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    resource: str
    def __init__(self, resource: _Optional[str] = ...) -> None: ...

class DeleteResourceLabelResponse(_message.Message):
    __slots__ = ("previous_classification",)
    PREVIOUS_CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    previous_classification: Classification
    def __init__(self, previous_classification: _Optional[_Union[Classification, str]] = ...) -> None: ...

class MatchedRule(_message.Message):
    __slots__ = ("role", "permission")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PERMISSION_FIELD_NUMBER: _ClassVar[int]
    role: str
    permission: Permission
    def __init__(self, role: _Optional[str] = ..., permission: _Optional[_Union[Permission, _Mapping]] = ...) -> None: ...

class CheckPermissionResponse(_message.Message):
    __slots__ = ("allowed", "reason", "matched_rule", "roles", "principal")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MATCHED_RULE_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    reason: str
    matched_rule: MatchedRule
    roles: _containers.RepeatedScalarFieldContainer[str]
    principal: str
    def __init__(self, allowed: _Optional[bool] = ..., reason: _Optional[str] = ..., matched_rule: _Optional[_Union[MatchedRule, _Mapping]] = ..., roles: _Optional[_Iterable[str]] = ..., principal: _Optional[str] = ...) -> None: ...
