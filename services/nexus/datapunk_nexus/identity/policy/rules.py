"""The policy's vocabulary: actions, resource types, classifications, permissions, roles,
bindings and decisions, plus the built-in roles every tenant has.

A resource is written ``<type>/<name>``, such as ``collection/docs`` or
``route/datapunk.nexus.v1.PolicyService.PutRole``. It never names a tenant: the tenant
is always the caller's, so a request cannot even express another tenant's object."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from datapunk_shared.errors import FieldViolation, InvalidArgument

__all__ = [
    "ACTIONS",
    "ANY_TYPE",
    "BUILTIN_ROLE_IDS",
    "CLASSIFICATIONS",
    "CLASSIFICATION_LEVELS",
    "HIGHEST_LEVEL",
    "LABELLED_TYPES",
    "PLATFORM_TYPE",
    "RESOURCE_TYPES",
    "TENANT_TYPES",
    "Binding",
    "Decision",
    "Label",
    "MatchedRule",
    "Permission",
    "Role",
    "builtin_roles",
    "classification_level",
    "is_labellable",
    "is_valid_name",
    "is_valid_role_id",
    "parse_resource",
]

ACTIONS: Final = ("read", "write", "admin")
"""What a permission allows. Actions do not include each other: write does not read."""

PLATFORM_TYPE: Final = "platform"
TENANT_TYPES: Final = ("collection", "series", "layer", "dataset", "pipeline", "route")
RESOURCE_TYPES: Final = (*TENANT_TYPES, PLATFORM_TYPE)
LABELLED_TYPES: Final = ("collection", "series", "layer", "dataset", "pipeline")
"""The types whose resources hold data, and so take a classification label."""
ANY_TYPE: Final = "*"
"""A permission's type that covers every tenant type (never ``platform``)."""

CLASSIFICATIONS: Final = ("public", "internal", "confidential", "restricted")
"""Data classifications from least to most sensitive; a level is the index plus one."""
CLASSIFICATION_LEVELS: Final = {name: index + 1 for index, name in enumerate(CLASSIFICATIONS)}
HIGHEST_LEVEL: Final = len(CLASSIFICATIONS)

_ROLE_ID = re.compile(r"[a-z][a-z0-9_.:-]{0,62}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:~-]{0,199}")
_PATTERN = re.compile(r"[A-Za-z0-9._:~*?\[\]-]{1,200}")

BUILTIN_ROLE_IDS: Final = frozenset({"admin", "writer", "reader"})


def classification_level(name: str | None, *, missing: int, unknown: int) -> int:
    """The level of classification ``name``: ``missing`` when it is empty or None,
    ``unknown`` when it is not one of CLASSIFICATIONS."""
    if not name:
        return missing
    return CLASSIFICATION_LEVELS.get(name, unknown)


def is_valid_role_id(role_id: str) -> bool:
    return _ROLE_ID.fullmatch(role_id) is not None


def is_valid_name(name: str) -> bool:
    """Whether ``name`` can name a resource (``*`` stands for all of a type)."""
    return name == "*" or _NAME.fullmatch(name) is not None


def parse_resource(resource: str) -> tuple[str, str] | None:
    """``(type, name)`` of a resource written ``<type>/<name>``; None when it is not one."""
    kind, slash, name = resource.partition("/")
    if not slash or kind not in RESOURCE_TYPES or not is_valid_name(name):
        return None
    return kind, name


@dataclass(frozen=True, slots=True)
class Permission:
    """Allows ``actions`` on the resources of ``resource_type`` (or every tenant type,
    ``*``) whose names match ``name_pattern`` (an exact name or a glob), when the
    conditions hold: the resource is classified at most ``max_classification`` (empty:
    any), and, with ``require_clearance``, at most the caller's clearance."""

    resource_type: str
    name_pattern: str
    actions: tuple[str, ...]
    max_classification: str = ""
    require_clearance: bool = False

    def problems(self, field: str) -> list[FieldViolation]:
        """What is wrong with this permission, as field violations under ``field``."""
        found = []
        if self.resource_type != ANY_TYPE and self.resource_type not in RESOURCE_TYPES:
            found.append(FieldViolation(f"{field}.resource_type", "unknown resource type"))
        if _PATTERN.fullmatch(self.name_pattern) is None:
            found.append(FieldViolation(f"{field}.name_pattern", "not a valid name pattern"))
        if not self.actions or any(a not in ACTIONS for a in self.actions):
            found.append(FieldViolation(f"{field}.actions", "actions are read, write, admin"))
        if len(set(self.actions)) != len(self.actions):
            found.append(FieldViolation(f"{field}.actions", "actions must be distinct"))
        if self.max_classification and self.max_classification not in CLASSIFICATIONS:
            found.append(FieldViolation(f"{field}.conditions.max_classification", "unknown level"))
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.resource_type,
            "pattern": self.name_pattern,
            "actions": list(self.actions),
            "max_classification": self.max_classification,
            "require_clearance": self.require_clearance,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Permission:
        return cls(
            resource_type=str(value["type"]),
            name_pattern=str(value["pattern"]),
            actions=tuple(str(a) for a in value["actions"]),
            max_classification=str(value.get("max_classification", "")),
            require_clearance=bool(value.get("require_clearance", False)),
        )


@dataclass(frozen=True, slots=True)
class Role:
    """A named set of permissions in a tenant."""

    role_id: str
    permissions: tuple[Permission, ...]
    description: str = ""
    builtin: bool = False
    create_time: datetime | None = None
    update_time: datetime | None = None

    def check(self, *, platform_tenant: bool) -> None:
        """Raise InvalidArgument naming every bad field of this role."""
        problems: list[FieldViolation] = []
        if not is_valid_role_id(self.role_id):
            problems.append(FieldViolation("role.name", "not a valid role name"))
        for index, permission in enumerate(self.permissions):
            field = f"role.permissions[{index}]"
            problems.extend(permission.problems(field))
            if permission.resource_type == PLATFORM_TYPE and not platform_tenant:
                problems.append(
                    FieldViolation(
                        f"{field}.resource_type",
                        "platform resources can only be given in the platform tenant",
                        "PLATFORM_PERMISSION",
                    )
                )
        if problems:
            reason = next((p.reason for p in problems if p.reason), "INVALID_ROLE")
            raise InvalidArgument(
                "invalid role: " + "; ".join(f"{p.field}: {p.description}" for p in problems),
                violations=problems,
                reason=reason,
            )


@dataclass(frozen=True, slots=True)
class Binding:
    """``principal`` holds role ``role_id`` in a tenant."""

    principal: str
    role_id: str
    create_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Label:
    """Resource ``resource`` (``<type>/<name>``) of a tenant is classified
    ``classification`` (one of CLASSIFICATIONS)."""

    resource: str
    classification: str
    update_time: datetime | None = None


def is_labellable(resource: str) -> bool:
    """Whether ``resource`` names one resource of a type that takes a label."""
    parsed = parse_resource(resource)
    return parsed is not None and parsed[0] in LABELLED_TYPES and parsed[1] != "*"


@dataclass(frozen=True, slots=True)
class MatchedRule:
    """The permission that allowed an action, and the role it belongs to."""

    role_id: str
    permission: Permission


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to "may this identity take this action on this resource?"."""

    allowed: bool
    reason: str
    """For people and the audit trail: which role allowed it, or why it was denied
    (``default deny`` when no permission matched)."""
    rule: MatchedRule | None = None
    """The rule that allowed the action; None when it was denied."""
    roles: tuple[str, ...] = ()
    """The roles that were evaluated, in name order."""


_EVERYTHING = ("read", "write", "admin")


def builtin_roles(*, platform_tenant: bool) -> dict[str, Role]:
    """The roles every tenant has: ``admin`` (every action on every resource of the
    tenant, and on the platform's in the platform tenant), ``writer`` (read and write)
    and ``reader`` (read)."""
    admin = [Permission(ANY_TYPE, "*", _EVERYTHING)]
    if platform_tenant:
        admin.append(Permission(PLATFORM_TYPE, "*", _EVERYTHING))
    return {
        "admin": Role(
            "admin",
            tuple(admin),
            "Every action on every resource of the tenant, its policy included.",
            builtin=True,
        ),
        "reader": Role(
            "reader",
            (Permission(ANY_TYPE, "*", ("read",)),),
            "Read every resource of the tenant.",
            builtin=True,
        ),
        "writer": Role(
            "writer",
            (Permission(ANY_TYPE, "*", ("read", "write")),),
            "Read and write every resource of the tenant.",
            builtin=True,
        ),
    }
