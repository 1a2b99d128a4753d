"""What each call needs: ``requirement_of(method, request) -> Requirement``, for every
RPC of every Datapunk service.

Data calls (the Lake's vectors, time series and spatial layers) need an action on the
resource their request names, found the way the cache finds a call's resource tag
(``datapunk_nexus.cache.tags``): ``GET /v1/lake/{name=collections/*}`` with
``name="collections/docs"`` is about ``collection/docs``. A list is about every resource
of its type (the name ``*``), so only a permission on all of them allows it. The action
comes from the method's verb: reads (Get, List, Search, Read, Count, Scroll, Aggregate,
Query, Compute) need ``read``; writes need ``write``; creating, deleting, updating or
optimizing a collection, series or layer itself needs ``admin``.

Administrative calls (policy, API keys, OAuth clients, the audit trail, the cache) need
``admin`` on their route, ``route/<package>.<Service>.<Method>``; the token signing keys
need it on ``platform/...``. Status, health and reflection are public; the OAuth token
endpoints are public too (the client authenticates in the request). A few calls only act
on the caller itself and need no permission beyond being authenticated.

Every method must be listed here or follow a known verb of a data service:
``requirement_of`` raises ``UnmappedMethod`` (PERMISSION_DENIED) for any other, so a new
RPC is refused until someone decides what it needs (tests/unit/test_policy_resources.py
fails for it first)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

from datapunk_shared.auth.interceptor import is_public_method
from datapunk_shared.errors import PermissionDenied
from google.protobuf.message import Message

from datapunk_nexus.cache.tags import ResourceTags
from datapunk_nexus.identity.policy.rules import is_valid_name

__all__ = [
    "AUTHENTICATED",
    "PUBLIC",
    "Requirement",
    "Requirements",
    "UnmappedMethod",
    "platform_route",
    "requirement_of",
    "route",
]


@dataclass(frozen=True, slots=True)
class Requirement:
    """What a call needs: ``action`` on ``resource`` (and on each of ``also``), or
    nothing but an authenticated caller (``action`` empty), or nothing at all
    (``public``)."""

    action: str
    resource: str
    public: bool = False
    also: tuple[str, ...] = ()
    """Further resources the call reaches with the same action (a distance between two
    features of different layers needs both layers)."""

    @property
    def resources(self) -> tuple[str, ...]:
        """Every resource the action is needed on; empty when no permission is needed."""
        return (self.resource, *self.also) if self.action else ()


PUBLIC: Final = Requirement("", "", public=True)
"""Anyone may call, authenticated or not."""
AUTHENTICATED: Final = Requirement("", "")
"""Any authenticated caller may call: the method only ever acts on the caller itself."""


class UnmappedMethod(PermissionDenied):
    """A method nobody has decided the needs of; refused."""

    def __init__(self, method: str) -> None:
        super().__init__(
            f"{method} has no permission mapping and is refused",
            reason="UNMAPPED_METHOD",
            metadata={"method": method},
        )


def route(method: str) -> str:
    """``/datapunk.nexus.v1.PolicyService/PutRole`` -> its route resource,
    ``route/datapunk.nexus.v1.PolicyService.PutRole``."""
    return "route/" + method.lstrip("/").replace("/", ".")


def platform_route(method: str) -> str:
    """The platform resource of a method that administers the whole platform."""
    return "platform/" + method.lstrip("/").replace("/", ".")


# --- data services ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _DataService:
    resource_type: str
    """The resource type, ``collection``."""
    segment: str
    """The first path segment of its REST paths after the service, ``collections``."""
    noun: str
    """How method names call it, ``Collection``."""
    id_field: str
    """The field of its Create request naming the new resource, ``collection_id``."""


_DATA_SERVICES: Final = {
    "datapunk.lake.v1.VectorService": _DataService(
        "collection", "collections", "Collection", "collection_id"
    ),
    "datapunk.lake.v1.TimeSeriesService": _DataService("series", "series", "Series", "series_id"),
    "datapunk.lake.v1.SpatialService": _DataService("layer", "layers", "Layer", "layer_id"),
}

_READ_VERBS: Final = (
    "BatchSearch",
    "Get",
    "List",
    "Search",
    "Read",
    "Count",
    "Scroll",
    "Aggregate",
    "Query",
    "Compute",
)
_WRITE_VERBS: Final = (
    "StreamWrite",
    "Upsert",
    "Import",
    "Load",
    "Write",
    "Set",
    "Delete",
    "Create",
    "Update",
)
_ADMIN_VERBS: Final = ("Create", "Delete", "Update", "Optimize")
"""Verbs that need ``admin`` when their object is the resource itself (CreateCollection,
OptimizeCollection, UpdateSeries: retention changes can drop data); on anything inside
it (DeletePoints, CreateDownsamplingRule) Create, Delete and Update are writes."""

_NAME_FIELDS: Final = {"StreamWriteRows": "series"}
"""Methods whose REST path names no resource but whose request does, in this field."""
_SECOND_RESOURCE_FIELDS: Final = {"ComputeDistance": "to_feature"}
"""Methods that reach a second resource, named by this field."""


def _verb_action(name: str, noun: str) -> str | None:
    for verb in _ADMIN_VERBS:
        if name == verb + noun:
            return "admin"
    for verbs, action in ((_READ_VERBS, "read"), (_WRITE_VERBS, "write")):
        for verb in verbs:
            rest = name[len(verb) :]
            if name.startswith(verb) and rest[:1].isupper():
                return action
    return None


def _name_in(path: str, segment: str) -> str:
    """The resource name in a resource path such as ``collections/docs/points`` (after
    ``segment``), or ``*`` when there is none or it is not a plain name."""
    parts = path.split("/")
    if len(parts) >= 2 and parts[0] == segment and is_valid_name(parts[1]) and parts[1] != "*":
        return parts[1]
    return "*"


# --- the other services, method by method ----------------------------------------------

_Rule = Callable[[str, Message], Requirement]


def _admin(method: str, request: Message) -> Requirement:
    return Requirement("admin", route(method))


def _platform_admin(method: str, request: Message) -> Requirement:
    return Requirement("admin", platform_route(method))


def _public(method: str, request: Message) -> Requirement:
    return PUBLIC


def _authenticated(method: str, request: Message) -> Requirement:
    return AUTHENTICATED


def _check_permission(method: str, request: Message) -> Requirement:
    # About the caller itself: nothing to protect. About another principal: admin.
    principal = getattr(request, "principal", "")
    return _admin(method, request) if principal else AUTHENTICATED


def _audit_trail(method: str, request: Message) -> Requirement:
    # The platform's own trail (records of no tenant) belongs to the platform's admins.
    if getattr(request, "platform", False):
        return _platform_admin(method, request)
    return _admin(method, request)


_METHODS: Final[Mapping[str, Mapping[str, _Rule]]] = {
    "datapunk.nexus.v1.PolicyService": {
        "PutRole": _admin,
        "GetRole": _admin,
        "ListRoles": _admin,
        "DeleteRole": _admin,
        "GrantRole": _admin,
        "RevokeRole": _admin,
        "ListRoleBindings": _admin,
        "LabelResource": _admin,
        "GetResourceLabel": _admin,
        "ListResourceLabels": _admin,
        "DeleteResourceLabel": _admin,
        "CheckPermission": _check_permission,
    },
    "datapunk.nexus.v1.ApiKeyService": {
        "CreateApiKey": _admin,
        "GetApiKey": _admin,
        "ListApiKeys": _admin,
        "RevokeApiKey": _admin,
        "RotateApiKey": _admin,
    },
    "datapunk.nexus.v1.AuthService": {
        "CreateClient": _admin,
        "GetClient": _admin,
        "ListClients": _admin,
        "DeleteClient": _admin,
        "RotateClientSecret": _admin,
        # The token endpoint and its RFC 7009/7662 twins authenticate the client from
        # the request itself (client id and secret), so the edge lets them through.
        "IssueToken": _public,
        "RevokeToken": _public,
        "IntrospectToken": _public,
        "RotateSigningKey": _platform_admin,
        "ListSigningKeys": _platform_admin,
        "DeleteSigningKey": _platform_admin,
        "WhoAmI": _authenticated,
    },
    "datapunk.nexus.v1.AuditService": {
        "SearchAuditEvents": _audit_trail,
        "ExportAuditEvents": _audit_trail,
        "VerifyAuditTrail": _audit_trail,
    },
    "datapunk.nexus.v1.CacheService": {"InvalidateCache": _admin},
}

_METHOD_NAME: Final = re.compile(r"^/([A-Za-z0-9_.]+)/([A-Za-z0-9_]+)$")


class Requirements:
    """The requirement of every call, with resource names found through the contracts'
    descriptor set (the one ``[nexus] descriptor_set`` names, by default)."""

    def __init__(self, descriptor_set: Path | None = None) -> None:
        self._tags = ResourceTags(descriptor_set)

    def of(self, method: str, request: Message) -> Requirement:
        """What a call of ``method`` (``/package.Service/Method``) with ``request`` (its
        decoded request message; for a client stream, each message) needs. Raises
        UnmappedMethod for a method nobody mapped."""
        found = _METHOD_NAME.match(method)
        if found is None:
            raise UnmappedMethod(method[:200])
        service, name = found.groups()
        if is_public_method(method):
            return PUBLIC
        data = _DATA_SERVICES.get(service)
        if data is not None:
            return self._data(method, name, data, request)
        rule = _METHODS.get(service, {}).get(name)
        if rule is None:
            raise UnmappedMethod(method)
        return rule(method, request)

    def _data(self, method: str, name: str, data: _DataService, request: Message) -> Requirement:
        action = _verb_action(name, data.noun)
        if action is None:
            raise UnmappedMethod(method)
        if name == "Create" + data.noun:
            resource_name = str(getattr(request, data.id_field, ""))
            if not is_valid_name(resource_name):
                resource_name = "*"
        elif name in _NAME_FIELDS:
            resource_name = _name_in(str(getattr(request, _NAME_FIELDS[name], "")), data.segment)
        else:
            # lake/collections/docs/... -> collections/docs/...
            tag = self._tags.message_tag(method, request)
            resource_name = _name_in(tag.partition("/")[2], data.segment)
        also: tuple[str, ...] = ()
        second = _SECOND_RESOURCE_FIELDS.get(name)
        if second is not None:
            other = _name_in(str(getattr(request, second, "")), data.segment)
            if other != resource_name:
                also = (f"{data.resource_type}/{other}",)
        return Requirement(action, f"{data.resource_type}/{resource_name}", also=also)


@cache
def _default() -> Requirements:
    return Requirements()


def requirement_of(method: str, request: Message) -> Requirement:
    """``Requirements().of(method, request)`` with the default descriptor set."""
    return _default().of(method, request)
