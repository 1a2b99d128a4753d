"""The PolicyService servicer: checks that the caller may call the method (the same
requirement the edges check, ``resources.requirement_of``), then converts between
protobuf and ``PolicyAdmin``."""

from __future__ import annotations

from typing import Any, Final

from datapunk.nexus.v1 import policy_pb2, policy_pb2_grpc
from datapunk_shared.auth.identity import Identity, identity_var
from datapunk_shared.config import PolicySettings
from datapunk_shared.errors import Unauthenticated
from datapunk_shared.rpc.server import ServiceContext
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from psycopg_pool import AsyncConnectionPool

from datapunk_nexus.identity.policy.admin import PolicyAdmin
from datapunk_nexus.identity.policy.authorizer import PolicyAuthorizer
from datapunk_nexus.identity.policy.resources import Requirements
from datapunk_nexus.identity.policy.rules import (
    ANY_TYPE,
    CLASSIFICATIONS,
    Binding,
    Decision,
    Label,
    Permission,
    Role,
)
from datapunk_nexus.identity.policy.store import PolicyStore

__all__ = ["PolicyServicer", "add_policy_service", "build_policy"]

_METHOD: Final = "/datapunk.nexus.v1.PolicyService/"

_TYPES: Final = {
    policy_pb2.RESOURCE_TYPE_ANY: ANY_TYPE,
    policy_pb2.RESOURCE_TYPE_COLLECTION: "collection",
    policy_pb2.RESOURCE_TYPE_SERIES: "series",
    policy_pb2.RESOURCE_TYPE_LAYER: "layer",
    policy_pb2.RESOURCE_TYPE_DATASET: "dataset",
    policy_pb2.RESOURCE_TYPE_PIPELINE: "pipeline",
    policy_pb2.RESOURCE_TYPE_ROUTE: "route",
    policy_pb2.RESOURCE_TYPE_PLATFORM: "platform",
}
_TYPE_ENUMS: Final = {name: value for value, name in _TYPES.items()}
_ACTIONS: Final = {
    policy_pb2.ACTION_READ: "read",
    policy_pb2.ACTION_WRITE: "write",
    policy_pb2.ACTION_ADMIN: "admin",
}
_ACTION_ENUMS: Final = {name: value for value, name in _ACTIONS.items()}
_CLASSIFICATIONS: Final = {
    policy_pb2.CLASSIFICATION_PUBLIC: "public",
    policy_pb2.CLASSIFICATION_INTERNAL: "internal",
    policy_pb2.CLASSIFICATION_CONFIDENTIAL: "confidential",
    policy_pb2.CLASSIFICATION_RESTRICTED: "restricted",
}
_CLASSIFICATION_ENUMS: Final = {name: value for value, name in _CLASSIFICATIONS.items()}
assert set(_CLASSIFICATIONS.values()) == set(CLASSIFICATIONS)


def _role_id(name: str) -> str:
    return name.removeprefix("roles/")


def _permission(message: policy_pb2.Permission) -> Permission:
    return Permission(
        resource_type=_TYPES.get(message.resource_type, ""),
        name_pattern=message.name_pattern,
        actions=tuple(_ACTIONS.get(a, "") for a in message.actions),
        max_classification=_CLASSIFICATIONS.get(message.conditions.max_classification, ""),
        require_clearance=message.conditions.require_clearance,
    )


def _permission_message(permission: Permission) -> policy_pb2.Permission:
    return policy_pb2.Permission(
        resource_type=_TYPE_ENUMS[permission.resource_type],
        name_pattern=permission.name_pattern,
        actions=[_ACTION_ENUMS[a] for a in permission.actions],
        conditions=policy_pb2.Conditions(
            max_classification=_CLASSIFICATION_ENUMS.get(
                permission.max_classification, policy_pb2.CLASSIFICATION_UNSPECIFIED
            ),
            require_clearance=permission.require_clearance,
        ),
    )


def _timestamp(value: Any) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _role_message(role: Role) -> policy_pb2.Role:
    return policy_pb2.Role(
        name=f"roles/{role.role_id}",
        description=role.description,
        permissions=[_permission_message(p) for p in role.permissions],
        builtin=role.builtin,
        create_time=_timestamp(role.create_time),
        update_time=_timestamp(role.update_time),
    )


def _binding_message(binding: Binding) -> policy_pb2.RoleBinding:
    return policy_pb2.RoleBinding(
        principal=binding.principal,
        role=f"roles/{binding.role_id}",
        create_time=_timestamp(binding.create_time),
    )


def _label_message(label: Label) -> policy_pb2.ResourceLabel:
    return policy_pb2.ResourceLabel(
        resource=label.resource,
        classification=_CLASSIFICATION_ENUMS[label.classification],
        update_time=_timestamp(label.update_time),
    )


def _classification_enum(name: str) -> policy_pb2.Classification:
    return _CLASSIFICATION_ENUMS.get(name, policy_pb2.CLASSIFICATION_UNSPECIFIED)


def _check_response(principal: str, decision: Decision) -> policy_pb2.CheckPermissionResponse:
    response = policy_pb2.CheckPermissionResponse(
        allowed=decision.allowed,
        reason=decision.reason,
        roles=list(decision.roles),
        principal=principal,
    )
    if decision.rule is not None:
        response.matched_rule.role = f"roles/{decision.rule.role_id}"
        response.matched_rule.permission.CopyFrom(_permission_message(decision.rule.permission))
    return response


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(
        self, admin: PolicyAdmin, authorizer: PolicyAuthorizer, requirements: Requirements
    ) -> None:
        self._admin = admin
        self._authorizer = authorizer
        self._requirements = requirements

    async def _caller(self, method: str, request: Message) -> Identity:
        """The caller, once it may call ``method`` with ``request``."""
        identity = identity_var.get()
        if identity is None:
            raise Unauthenticated(
                "this call needs an authenticated caller", reason="MISSING_CREDENTIALS"
            )
        await self._authorizer.authorize(identity, self._requirements.of(_METHOD + method, request))
        return identity

    async def PutRole(
        self, request: policy_pb2.PutRoleRequest, context: Any
    ) -> policy_pb2.PutRoleResponse:
        caller = await self._caller("PutRole", request)
        role = Role(
            role_id=_role_id(request.role.name),
            permissions=tuple(_permission(p) for p in request.role.permissions),
            description=request.role.description,
        )
        stored, created = await self._admin.put_role(caller, role)
        return policy_pb2.PutRoleResponse(role=_role_message(stored), created=created)

    async def GetRole(
        self, request: policy_pb2.GetRoleRequest, context: Any
    ) -> policy_pb2.GetRoleResponse:
        caller = await self._caller("GetRole", request)
        role = await self._admin.get_role(caller, _role_id(request.name))
        return policy_pb2.GetRoleResponse(role=_role_message(role))

    async def ListRoles(
        self, request: policy_pb2.ListRolesRequest, context: Any
    ) -> policy_pb2.ListRolesResponse:
        caller = await self._caller("ListRoles", request)
        roles, token = await self._admin.list_roles(caller, request.page_size, request.page_token)
        return policy_pb2.ListRolesResponse(
            roles=[_role_message(r) for r in roles], next_page_token=token
        )

    async def DeleteRole(
        self, request: policy_pb2.DeleteRoleRequest, context: Any
    ) -> policy_pb2.DeleteRoleResponse:
        caller = await self._caller("DeleteRole", request)
        deleted = await self._admin.delete_role(caller, _role_id(request.name))
        return policy_pb2.DeleteRoleResponse(deleted_binding_count=deleted)

    async def GrantRole(
        self, request: policy_pb2.GrantRoleRequest, context: Any
    ) -> policy_pb2.GrantRoleResponse:
        caller = await self._caller("GrantRole", request)
        binding, created = await self._admin.grant(
            caller, request.principal, _role_id(request.role)
        )
        return policy_pb2.GrantRoleResponse(binding=_binding_message(binding), created=created)

    async def RevokeRole(
        self, request: policy_pb2.RevokeRoleRequest, context: Any
    ) -> policy_pb2.RevokeRoleResponse:
        caller = await self._caller("RevokeRole", request)
        await self._admin.revoke(caller, request.principal, _role_id(request.role))
        return policy_pb2.RevokeRoleResponse()

    async def ListRoleBindings(
        self, request: policy_pb2.ListRoleBindingsRequest, context: Any
    ) -> policy_pb2.ListRoleBindingsResponse:
        caller = await self._caller("ListRoleBindings", request)
        bindings, token = await self._admin.list_bindings(
            caller,
            principal=request.principal,
            role_id=_role_id(request.role),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return policy_pb2.ListRoleBindingsResponse(
            bindings=[_binding_message(b) for b in bindings], next_page_token=token
        )

    async def LabelResource(
        self, request: policy_pb2.LabelResourceRequest, context: Any
    ) -> policy_pb2.LabelResourceResponse:
        caller = await self._caller("LabelResource", request)
        label, previous = await self._admin.label(
            caller,
            request.label.resource,
            _CLASSIFICATIONS.get(request.label.classification, ""),
        )
        return policy_pb2.LabelResourceResponse(
            label=_label_message(label), previous_classification=_classification_enum(previous)
        )

    async def GetResourceLabel(
        self, request: policy_pb2.GetResourceLabelRequest, context: Any
    ) -> policy_pb2.GetResourceLabelResponse:
        caller = await self._caller("GetResourceLabel", request)
        label = await self._admin.get_label(caller, request.resource)
        return policy_pb2.GetResourceLabelResponse(label=_label_message(label))

    async def ListResourceLabels(
        self, request: policy_pb2.ListResourceLabelsRequest, context: Any
    ) -> policy_pb2.ListResourceLabelsResponse:
        caller = await self._caller("ListResourceLabels", request)
        labels, token = await self._admin.list_labels(caller, request.page_size, request.page_token)
        return policy_pb2.ListResourceLabelsResponse(
            labels=[_label_message(label) for label in labels], next_page_token=token
        )

    async def DeleteResourceLabel(
        self, request: policy_pb2.DeleteResourceLabelRequest, context: Any
    ) -> policy_pb2.DeleteResourceLabelResponse:
        caller = await self._caller("DeleteResourceLabel", request)
        previous = await self._admin.delete_label(caller, request.resource)
        return policy_pb2.DeleteResourceLabelResponse(
            previous_classification=_classification_enum(previous)
        )

    async def CheckPermission(
        self, request: policy_pb2.CheckPermissionRequest, context: Any
    ) -> policy_pb2.CheckPermissionResponse:
        caller = await self._caller("CheckPermission", request)
        principal, decision = await self._admin.check(
            caller,
            principal=request.principal,
            action=_ACTIONS.get(request.action, ""),
            resource=request.resource,
            classification=_CLASSIFICATIONS.get(request.classification, ""),
        )
        return _check_response(principal, decision)


def build_policy(
    pool: AsyncConnectionPool, settings: PolicySettings
) -> tuple[PolicyStore, PolicyAuthorizer]:
    """The policy store over ``pool`` and the authorizer deciding with it (not started)."""
    store = PolicyStore(pool, pool_timeout=settings.pool_timeout)
    return store, PolicyAuthorizer(store, settings)


async def add_policy_service(
    context: ServiceContext, pool: AsyncConnectionPool
) -> PolicyAuthorizer:
    """Register PolicyService on the Nexus's server and start the authorizer (stopped at
    shutdown). Returns the authorizer, for the edges to decide with."""
    nexus = context.settings.nexus
    store, authorizer = build_policy(pool, nexus.auth.policy)
    servicer = PolicyServicer(
        PolicyAdmin(store, authorizer), authorizer, Requirements(nexus.descriptor_set)
    )
    policy_pb2_grpc.add_PolicyServiceServicer_to_server(  # type: ignore[no-untyped-call]
        servicer, context.server
    )
    context.service_names.append(policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name)
    await authorizer.start()
    context.cleanups.append(authorizer.aclose)
    return authorizer
