"""The REST route table, built from the contracts' descriptor set — the same file Envoy's
JSON transcoder reads — so both edges serve the same paths.

Every ``google.api.http`` rule (and its ``additional_bindings``) of every service in a
``datapunk.<owner>.v<N>`` package becomes a route to that owner, so a ``v2`` package is
served beside ``v1`` with no code change."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from datapunk_nexus.contracts import default_descriptor_set, load_contracts, owner_of_package
from datapunk_nexus.edge.template import PathTemplate, TemplateError

__all__ = [
    "Comments",
    "Route",
    "RouteTable",
    "default_descriptor_set",
    "load_routes",
    "route_table_of",
]


@dataclass(frozen=True)
class Route:
    """One REST binding of one RPC."""

    http_method: str
    template: PathTemplate
    grpc_method: str
    """``/datapunk.lake.v1.VectorService/GetCollection``."""
    owner: str
    package: str
    service: str
    method_name: str
    input: Descriptor
    output: Descriptor
    body: str
    """``""`` (no body), ``"*"`` (the whole request) or a top-level field name."""
    response_body: str
    client_streaming: bool
    server_streaming: bool
    binding: int = 0
    """0 for the rule itself, 1.. for its ``additional_bindings``."""

    def body_fields(self) -> list[FieldDescriptor]:
        """The request fields a client may set in the query string."""
        if self.body == "*":
            return []
        bound = {v.split(".")[0] for v in self.template.variables}
        return [f for f in self.input.fields if f.name not in bound and f.name != self.body]

    @cached_property
    def query_names(self) -> frozenset[str]:
        """The names (proto and JSON) of ``body_fields``, worked out once per route."""
        fields = self.body_fields()
        return frozenset(f.name for f in fields) | frozenset(f.json_name for f in fields)


class Comments:
    """Leading comments of messages, fields and methods, by full name (for OpenAPI)."""

    def __init__(self) -> None:
        self.by_name: dict[str, str] = {}

    def get(self, full_name: str) -> str:
        return self.by_name.get(full_name, "")


@dataclass(frozen=True)
class RouteTable:
    routes: tuple[Route, ...]
    pool: descriptor_pool.DescriptorPool
    comments: Comments

    def entries(self) -> list[tuple[str, str, str]]:
        """``(HTTP method, path template, gRPC method)`` of every route, sorted."""
        return route_table_of(self.routes)


def route_table_of(routes: Iterable[Route]) -> list[tuple[str, str, str]]:
    return sorted((r.http_method, r.template.text, r.grpc_method) for r in routes)


def _rules(rule: http_pb2.HttpRule) -> list[tuple[str, str, str, str]]:
    found: list[tuple[str, str, str, str]] = []
    kind = rule.WhichOneof("pattern")
    if kind == "custom":
        found.append((rule.custom.kind.upper(), rule.custom.path, rule.body, rule.response_body))
    elif kind is not None:
        found.append((kind.upper(), getattr(rule, kind), rule.body, rule.response_body))
    for extra in rule.additional_bindings:
        found.extend(_rules(extra))
    return found


def _collect_comments(file: descriptor_pb2.FileDescriptorProto, comments: Comments) -> None:
    by_path = {
        tuple(location.path): location.leading_comments.strip()
        for location in file.source_code_info.location
        if location.leading_comments
    }
    prefix = f"{file.package}." if file.package else ""

    def messages(
        protos: Sequence[descriptor_pb2.DescriptorProto], path: tuple[int, ...], scope: str
    ) -> None:
        for i, message in enumerate(protos):
            here = (*path, i)
            name = f"{scope}{message.name}"
            comments.by_name[name] = by_path.get(here, "")
            for j, field in enumerate(message.field):
                comments.by_name[f"{name}.{field.name}"] = by_path.get((*here, 2, j), "")
            for j, enum in enumerate(message.enum_type):
                comments.by_name[f"{name}.{enum.name}"] = by_path.get((*here, 4, j), "")
            messages(message.nested_type, (*here, 3), f"{name}.")

    messages(file.message_type, (4,), prefix)
    for i, enum in enumerate(file.enum_type):
        comments.by_name[f"{prefix}{enum.name}"] = by_path.get((5, i), "")
    for i, service in enumerate(file.service):
        for j, method in enumerate(service.method):
            comments.by_name[f"{prefix}{service.name}.{method.name}"] = by_path.get(
                (6, i, 2, j), ""
            )


def load_routes(descriptor_set: Path) -> RouteTable:
    """Every route of every ``datapunk.<owner>.v<N>`` service in ``descriptor_set``.

    Raises ``TemplateError`` for a malformed template or a body naming no field."""
    contracts = load_contracts(descriptor_set)
    files, pool = contracts.files, contracts.pool
    comments = Comments()
    for file in files.file:
        _collect_comments(file, comments)
    routes: list[Route] = []
    for file in files.file:
        owner = owner_of_package(file.package)
        if owner is None:
            continue
        for service in file.service:
            for method in service.method:
                rule = method.options.Extensions[annotations_pb2.http]
                full = f"{file.package}.{service.name}"
                input_type = pool.FindMessageTypeByName(method.input_type.lstrip("."))
                output_type = pool.FindMessageTypeByName(method.output_type.lstrip("."))
                for binding, (http_method, path, body, response_body) in enumerate(_rules(rule)):
                    template = PathTemplate.parse(path)
                    for name in (body, response_body):
                        if name not in ("", "*") and name not in (
                            input_type.fields_by_name
                            if name == body
                            else output_type.fields_by_name
                        ):
                            raise TemplateError(f"{full}/{method.name}: no field {name!r}")
                    routes.append(
                        Route(
                            http_method=http_method,
                            template=template,
                            grpc_method=f"/{full}/{method.name}",
                            owner=owner,
                            package=file.package,
                            service=service.name,
                            method_name=method.name,
                            input=input_type,
                            output=output_type,
                            body=body,
                            response_body=response_body,
                            client_streaming=method.client_streaming,
                            server_streaming=method.server_streaming,
                            binding=binding,
                        )
                    )
    # Templates with a verb first, then more literal segments first: the most specific
    # template wins when two could match.
    routes.sort(key=lambda r: (not r.template.verb, -_literal_count(r.template)))
    return RouteTable(tuple(routes), pool, comments)


def _literal_count(template: PathTemplate) -> int:
    return sum(1 for part in template.parts if isinstance(part, str) and part not in ("*", "**"))
