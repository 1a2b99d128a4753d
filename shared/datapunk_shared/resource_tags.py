"""Resource tags: what a call is about, so that a write can drop the cached answers
about the same resource — in Nexus's response cache, whether the write went through
Nexus or straight to the service that owns the resource.

A call's tag is its REST path (from the contract's ``google.api.http`` rule) without the
version and custom verb, cut after the first path variable's value:

    GET  /v1/lake/{name=collections/*}                   -> lake/collections/docs
    POST /v1/lake/{collection=collections/*}/points:search -> lake/collections/docs
    GET  /v1/lake/{name=collections/*/stats}             -> lake/collections/docs/stats
    GET  /v1/lake/{name=layers/*/features/*}             -> lake/layers/roads/features/7
    GET  /v1/lake/collections  (a list)                  -> lake/collections
    POST /v1/lake/series:streamWrite                     -> lake/series/cpu
         (no variable, but a request field named like the path's last segment,
         series="series/cpu", names the resource; without it: lake/series)

Tags form a tree by their ``/`` segments. Invalidating a tag drops the entries tagged
with it, below it (everything about that resource) and above it (the lists and parents
that may summarize it), and nothing else: invalidating ``lake/collections/docs`` drops
GetCollection, GetCollectionStats and SearchPoints of ``docs`` and ListCollections, but
not the entries of ``lake/collections/other``. Dropping too much costs a miss; dropping
too little would serve stale data, so where a tag cannot be derived the call's tag is
its service alone (``lake``), whose invalidation drops everything of that service.

Each tenant has its own objects under the same names (``auth.tenancy``), so the cache
keeps its entries under *scoped* tags, ``<tenant>/<tag>`` (``acme/lake/collections/docs``):
a write of one tenant drops that tenant's entries only."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

__all__ = [
    "ResourceTags",
    "Route",
    "ancestors",
    "routes_of_files",
    "routes_of_services",
    "scoped",
    "tag_matches",
]

_VARIABLE = re.compile(r"\{([^}=]+)(?:=([^}]*))?\}")
_VERSION = re.compile(r"^v\d+[a-z0-9]*$")


def ancestors(tag: str) -> list[str]:
    """The strict ancestors of ``tag``, nearest last: ``a/b/c`` -> ``[a, a/b]``."""
    parts = tag.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def tag_matches(entry_tag: str, invalidated: str) -> bool:
    """True when invalidating ``invalidated`` drops an entry tagged ``entry_tag``: the
    same resource, one below it, or one above it."""
    return (
        entry_tag == invalidated
        or entry_tag.startswith(invalidated + "/")
        or invalidated.startswith(entry_tag + "/")
    )


def scoped(tenant: str, tag: str) -> str:
    """``tag`` of ``tenant``'s objects, as the cache keeps and invalidates it. Tenant ids
    contain no ``/`` (``auth.tenancy.TENANT_PATTERN``), so the scope is unambiguous."""
    return f"{tenant}/{tag}"


@dataclass(frozen=True, slots=True)
class Route:
    """How to find the tag of one method's calls."""

    service: str
    literal: str
    """The path's literal part up to the first variable (or whole), without the verb."""
    field_path: tuple[str, ...]
    """The first variable's field path, empty when the path has none."""
    message: type[Message] | None
    """The request class to decode a serialized request with (None: nothing to read)."""
    prefix: str = ""
    """What the field's value must start with to name a resource (for a field found by
    name rather than in the path, whose template would have checked it)."""


def _route(rule: http_pb2.HttpRule, input_type: descriptor.Descriptor) -> Route | None:
    pattern = rule.WhichOneof("pattern")
    if pattern is None or pattern == "custom":
        return None
    template: str = getattr(rule, pattern)
    segments = template.split(":", 1)[0].strip("/").split("/")
    if segments and _VERSION.match(segments[0]):
        segments = segments[1:]
    if not segments or not segments[0]:
        return None
    path = "/".join(segments)
    found = _VARIABLE.search(path)
    if found is None:
        last = segments[-1]
        named = input_type.fields_by_name.get(last)
        if named is not None and named.type == named.TYPE_STRING and len(segments) > 1:
            message = message_factory.GetMessageClass(input_type)
            return Route(segments[0], path, (last,), message, prefix=f"{last}/")
        return Route(segments[0], path, (), None)
    # Up to the variable, plus its pattern's leading literals: {name=collections/*}
    # falls back to the collection, lake/collections.
    fixed = []
    for segment in (found.group(2) or "").split("/"):
        if "*" in segment or not segment:
            break
        fixed.append(segment)
    literal = "/".join([path[: found.start()].rstrip("/"), *fixed])
    message_class = message_factory.GetMessageClass(input_type)
    return Route(segments[0], literal, tuple(found.group(1).split(".")), message_class)


def routes_of_files(
    files: descriptor_pb2.FileDescriptorSet, pool: descriptor_pool.DescriptorPool
) -> dict[str, Route]:
    """The routes of every method in a descriptor set (``pool`` holds its files)."""
    routes: dict[str, Route] = {}
    for file in files.file:
        for service in file.service:
            full_service = f"{file.package}.{service.name}" if file.package else service.name
            for method in service.method:
                if not method.options.HasExtension(annotations_pb2.http):
                    continue
                rule = method.options.Extensions[annotations_pb2.http]
                input_type = pool.FindMessageTypeByName(method.input_type.lstrip("."))
                route = _route(rule, input_type)
                if route is not None:
                    routes[f"/{full_service}/{method.name}"] = route
    return routes


def routes_of_services(services: Iterable[descriptor.ServiceDescriptor]) -> dict[str, Route]:
    """The routes of the methods of ``services`` (descriptors of generated modules)."""
    routes: dict[str, Route] = {}
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue
            route = _route(options.Extensions[annotations_pb2.http], method.input_type)
            if route is not None:
                routes[f"/{service.full_name}/{method.name}"] = route
    return routes


def _service_of_method(method: str) -> str:
    # /datapunk.lake.v1.VectorService/GetCollection -> lake
    package = method.lstrip("/").split("/", 1)[0].split(".")
    return package[1] if len(package) > 2 and package[0] == "datapunk" else package[0]


class ResourceTags:
    """Tags of calls, from the routes of their methods."""

    def __init__(self, routes: Mapping[str, Route]) -> None:
        self._routes = dict(routes)

    def add_routes(self, routes: Mapping[str, Route]) -> None:
        """Know the routes of more methods (a service registering another servicer)."""
        self._routes.update(routes)

    def tag(self, method: str, request: bytes) -> str:
        """The tag of a call of ``method`` with the serialized ``request``."""
        route = self._routes.get(method)
        if route is None:
            return _service_of_method(method)
        if route.message is None:
            return route.literal
        try:
            message: Message = route.message.FromString(request)
        except DecodeError:
            return route.service
        return self._tag_of(route, message)

    def broad_tag(self, method: str) -> str:
        """The tag above every call of ``method``: its path's literal part (the list),
        or its service."""
        route = self._routes.get(method)
        if route is None:
            return _service_of_method(method)
        return route.literal or route.service

    def message_tag(self, method: str, request: Message) -> str:
        """The tag of a call of ``method`` with the already decoded ``request`` (a message
        of the method's input type, from any descriptor pool)."""
        route = self._routes.get(method)
        if route is None:
            return _service_of_method(method)
        if route.message is None:
            return route.literal
        return self._tag_of(route, request)

    @staticmethod
    def _tag_of(route: Route, message: Message) -> str:
        value: object = message
        for name in route.field_path:
            value = getattr(value, name, "")
        if (
            not isinstance(value, str)
            or not value
            or value.startswith("/")
            or not value.startswith(route.prefix)
            or value == route.prefix
        ):
            return route.literal or route.service
        return f"{route.service}/{value}"
