"""Resource tags: what a call is about, so that a write can drop the cached answers
about the same resource.

A call's tag is its REST path (from the contract's ``google.api.http`` rule) without the
version and custom verb, cut after the first path variable's value:

    GET  /v1/lake/{name=collections/*}                   -> lake/collections/docs
    POST /v1/lake/{collection=collections/*}/points:search -> lake/collections/docs
    GET  /v1/lake/{name=collections/*/stats}             -> lake/collections/docs/stats
    GET  /v1/lake/{name=layers/*/features/*}             -> lake/layers/roads/features/7
    GET  /v1/lake/collections  (a list)                  -> lake/collections
    POST /v1/lake/series:streamWrite (no variable)       -> lake/series

Tags form a tree by their ``/`` segments. Invalidating a tag drops the entries tagged
with it, below it (everything about that resource) and above it (the lists and parents
that may summarize it), and nothing else: invalidating ``lake/collections/docs`` drops
GetCollection, GetCollectionStats and SearchPoints of ``docs`` and ListCollections, but
not the entries of ``lake/collections/other``. Dropping too much costs a miss; dropping
too little would serve stale data, so where a tag cannot be derived the call's tag is
its service alone (``lake``), whose invalidation drops everything of that service."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from datapunk_nexus.contracts import default_descriptor_set, load_contracts

__all__ = ["ResourceTags", "ancestors", "default_descriptor_set", "tag_matches"]

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


@dataclass(frozen=True, slots=True)
class _Route:
    service: str
    literal: str
    """The path's literal part up to the first variable (or whole), without the verb."""
    field_path: tuple[str, ...]
    """The first variable's field path, empty when the path has none."""
    message: type[Message] | None


def _service_of_method(method: str) -> str:
    # /datapunk.lake.v1.VectorService/GetCollection -> lake
    package = method.lstrip("/").split("/", 1)[0].split(".")
    return package[1] if len(package) > 2 and package[0] == "datapunk" else package[0]


class ResourceTags:
    """Tags of calls, from the contracts' descriptor set."""

    def __init__(self, descriptor_set: Path | None = None) -> None:
        contracts = load_contracts(descriptor_set)
        files, pool = contracts.files, contracts.pool
        self._routes: dict[str, _Route] = {}
        for file in files.file:
            for service in file.service:
                full_service = f"{file.package}.{service.name}" if file.package else service.name
                for method in service.method:
                    route = self._route(pool, method, full_service)
                    if route is not None:
                        self._routes[f"/{full_service}/{method.name}"] = route

    @staticmethod
    def _route(
        pool: descriptor_pool.DescriptorPool,
        method: descriptor_pb2.MethodDescriptorProto,
        full_service: str,
    ) -> _Route | None:
        if not method.options.HasExtension(annotations_pb2.http):
            return None
        rule: http_pb2.HttpRule = method.options.Extensions[annotations_pb2.http]
        pattern = rule.WhichOneof("pattern")
        if pattern is None or pattern == "custom":
            return None
        template: str = getattr(rule, pattern)
        segments = template.split(":", 1)[0].strip("/").split("/")
        if segments and _VERSION.match(segments[0]):
            segments = segments[1:]
        if not segments:
            return None
        path = "/".join(segments)
        found = _VARIABLE.search(path)
        input_type = method.input_type.lstrip(".")
        message_class = message_factory.GetMessageClass(pool.FindMessageTypeByName(input_type))
        if found is None:
            return _Route(segments[0], path, (), None)
        # Up to the variable, plus its pattern's leading literals: {name=collections/*}
        # falls back to the collection, lake/collections.
        fixed = []
        for segment in (found.group(2) or "").split("/"):
            if "*" in segment or not segment:
                break
            fixed.append(segment)
        literal = "/".join([path[: found.start()].rstrip("/"), *fixed])
        return _Route(segments[0], literal, tuple(found.group(1).split(".")), message_class)

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
    def _tag_of(route: _Route, message: Message) -> str:
        value: object = message
        for name in route.field_path:
            value = getattr(value, name, "")
        if not isinstance(value, str) or not value or value.startswith("/"):
            return route.literal or route.service
        return f"{route.service}/{value}"
