"""An OpenAPI 3 document generated from the route table: paths from the ``google.api.http``
rules, schemas from the messages in their proto3 JSON form with the contracts' comments
as descriptions, every error as a ``google.rpc.Status``, and — for an edge that enforces
access — the credentials it accepts (a bearer token or an ``x-api-key`` header) with the
401 and 403 answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from datapunk_nexus.edge.routes import Comments, Route, RouteTable

__all__ = ["build_openapi", "operation_id"]

Json = dict[str, Any]

STATUS_SCHEMA = "google.rpc.Status"
_FD = FieldDescriptor
_INT32 = {_FD.TYPE_INT32, _FD.TYPE_SINT32, _FD.TYPE_SFIXED32}
_UINT32 = {_FD.TYPE_UINT32, _FD.TYPE_FIXED32}
_INT64 = {_FD.TYPE_INT64, _FD.TYPE_SINT64, _FD.TYPE_SFIXED64}
_UINT64 = {_FD.TYPE_UINT64, _FD.TYPE_FIXED64}
_NON_FINITE = {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}
_WKT: dict[str, Json] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        "description": "A duration in seconds with an `s` suffix, e.g. `1.5s`.",
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": "Comma-separated lowerCamelCase field paths.",
    },
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "additionalProperties": True,
    },
}
_WRAPPED = {
    f"google.protobuf.{name}Value": field
    for name, field in (
        ("Double", "double"),
        ("Float", "float"),
        ("Int64", "int64"),
        ("UInt64", "uint64"),
        ("Int32", "int32"),
        ("UInt32", "uint32"),
        ("Bool", "bool"),
        ("String", "string"),
        ("Bytes", "bytes"),
    )
}
_ERROR_RESPONSES = {
    "400": "The request is malformed (wrong JSON, unknown fields, invalid values or path).",
    "404": "No such route or resource.",
    "413": "The request body is too large.",
    "429": "A rate limit was reached; see `Retry-After`.",
    "503": "The owning service is unavailable; retry after `Retry-After` seconds.",
    "504": "The owning service did not answer within the route's timeout.",
}


# The credentials the edge accepts (docs/identity.md): either one, never both.
_SECURITY_SCHEMES: Json = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "An access token: Nexus's own (OAuth client credentials, "
        "`POST /oauth/token`) or one of a trusted OpenID Connect provider.",
    },
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "An API key, `dpk_<id>_<secret>`.",
    },
}
_AUTH_RESPONSES = {
    "401": "No credential, or one that is not valid (malformed, expired, revoked, of an "
    "untrusted issuer); the `WWW-Authenticate` header names the scheme.",
    "403": "The caller may not make this call (its policy allows no such action on this "
    "resource); ErrorInfo names the `action` and `resource`.",
}


def operation_id(route: Route) -> str:
    return f"{route.package}.{route.service}.{route.method_name}"


class _Schemas:
    def __init__(self, comments: Comments) -> None:
        self.comments = comments
        self.components: Json = {STATUS_SCHEMA: _status_schema()}

    def ref(self, descriptor: Descriptor) -> Json:
        name = descriptor.full_name
        if name in _WKT:
            return dict(_WKT[name])
        if name in _WRAPPED:
            inner = self.scalar(descriptor.fields_by_name["value"])
            return {**inner, "nullable": True}
        if name not in self.components:
            self.components[name] = {}  # placeholder: recursion ends here
            self.components[name] = self.message(descriptor, exclude=())
        return {"$ref": f"#/components/schemas/{name}"}

    def message(self, descriptor: Descriptor, exclude: tuple[str, ...]) -> Json:
        properties: Json = {}
        for field in descriptor.fields:
            if field.name in exclude:
                continue
            schema = self.field(field)
            description = self.comments.get(f"{descriptor.full_name}.{field.name}")
            if description:
                schema = (
                    {"allOf": [schema], "description": description}
                    if "$ref" in schema
                    else {**schema, "description": description}
                )
            properties[field.json_name] = schema
        out: Json = {"type": "object", "properties": properties, "additionalProperties": False}
        description = self.comments.get(descriptor.full_name)
        if description:
            out["description"] = description
        return out

    def field(self, field: FieldDescriptor) -> Json:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value = self.field(field.message_type.fields_by_name["value"])
            return {"type": "object", "additionalProperties": value}
        single = self.ref(field.message_type) if field.message_type else self.scalar(field)
        if field.is_repeated:
            return {"type": "array", "items": single}
        return single

    def scalar(self, field: FieldDescriptor) -> Json:
        kind = field.type
        if kind in _INT32:
            return {"type": "integer", "format": "int32"}
        if kind in _UINT32:
            return {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1}
        if kind in _INT64:
            return {"type": "string", "format": "int64", "pattern": r"^-?[0-9]{1,19}$"}
        if kind in _UINT64:
            return {"type": "string", "format": "uint64", "pattern": r"^[0-9]{1,20}$"}
        if kind in (_FD.TYPE_DOUBLE, _FD.TYPE_FLOAT):
            return {"oneOf": [{"type": "number"}, _NON_FINITE]}
        if kind == _FD.TYPE_BOOL:
            return {"type": "boolean"}
        if kind == _FD.TYPE_BYTES:
            return {"type": "string", "format": "byte"}
        if field.enum_type is not None:
            return _enum(field.enum_type)
        return {"type": "string"}


def _enum(enum: EnumDescriptor) -> Json:
    return {"type": "string", "enum": [v.name for v in enum.values]}


def _status_schema() -> Json:
    return {
        "type": "object",
        "description": "google.rpc.Status: the gRPC code, a message, and typed details "
        "(google.rpc.ErrorInfo, BadRequest, RetryInfo) in their proto3 JSON form.",
        "properties": {
            "code": {"type": "integer", "format": "int32"},
            "message": {"type": "string"},
            "details": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"@type": {"type": "string"}},
                    "required": ["@type"],
                    "additionalProperties": True,
                },
            },
        },
        "required": ["code", "message"],
    }


def _query_parameters(
    schemas: _Schemas, fields: list[FieldDescriptor], prefix: str, depth: int
) -> list[Json]:
    params: list[Json] = []
    for field in fields:
        name = prefix + field.json_name
        message = field.message_type
        repeated = field.is_repeated
        if message is not None and (message.GetOptions().map_entry or message.full_name in _WKT):
            if (
                message.full_name
                not in (
                    "google.protobuf.Timestamp",
                    "google.protobuf.Duration",
                    "google.protobuf.FieldMask",
                )
                or repeated
            ):
                continue
            schema = dict(_WKT[message.full_name])
        elif message is not None and message.full_name in _WRAPPED:
            schema = schemas.scalar(message.fields_by_name["value"])
        elif message is not None:
            if repeated or depth >= 3:
                continue
            params += _query_parameters(schemas, list(message.fields), f"{name}.", depth + 1)
            continue
        else:
            schema = schemas.scalar(field)
        if repeated:
            schema = {"type": "array", "items": schema}
        param: Json = {"name": name, "in": "query", "required": False, "schema": schema}
        if repeated:
            param |= {"style": "form", "explode": True}
        owner = field.containing_type.full_name if field.containing_type else ""
        description = schemas.comments.get(f"{owner}.{field.name}")
        if description:
            param["description"] = description
        params.append(param)
    return params


def _operation(
    schemas: _Schemas, route: Route, suffix: str, is_public: Callable[[str], bool] | None
) -> Json:
    _, path_params = route.template.openapi()
    parameters: list[Json] = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "description": (
                f"Part of the field `{field_path}`"
                + (f" (`{prefix}/{{{name}}}`)." if prefix else ".")
            ),
            "schema": {"type": "string", "minLength": 1},
        }
        for name, field_path, prefix in path_params
    ]
    bound = {v.split(".")[0] for v in route.template.variables}
    if route.body != "*":
        parameters += _query_parameters(schemas, route.body_fields(), "", 0)
    media = "application/x-ndjson" if route.client_streaming else "application/json"
    operation: Json = {
        "operationId": operation_id(route) + suffix,
        "tags": [f"{route.package}.{route.service}"],
        "summary": route.method_name,
        "description": schemas.comments.get(f"{route.package}.{route.service}.{route.method_name}")
        + f"\n\ngRPC: `{route.grpc_method}`",
        "parameters": parameters,
    }
    if route.body == "*":
        body_schema = schemas.message(route.input, exclude=tuple(bound))
        operation["requestBody"] = {"required": False, "content": {media: {"schema": body_schema}}}
    elif route.body:
        schema = schemas.field(route.input.fields_by_name[route.body])
        operation["requestBody"] = {"required": False, "content": {media: {"schema": schema}}}
    if route.response_body:
        ok_schema = schemas.field(route.output.fields_by_name[route.response_body])
    else:
        ok_schema = schemas.ref(route.output)
    if route.server_streaming:
        content = {
            "application/x-ndjson": {"schema": ok_schema},
            "text/event-stream": {"schema": {"type": "string"}},
        }
        ok = "One JSON message per line (server-sent events with `Accept: text/event-stream`)."
    else:
        content = {"application/json": {"schema": ok_schema}}
        ok = "The response message."
    responses: Json = {"200": {"description": ok, "content": content}}
    errors = list(_ERROR_RESPONSES)
    if is_public is not None:
        # Any call with a bad credential is refused; only a protected one can be denied.
        public = is_public(route.grpc_method)
        errors += ["401"] if public else ["401", "403"]
        if public:
            operation["security"] = []  # anyone may call it
    for code in sorted(errors):
        responses[code] = {"$ref": f"#/components/responses/E{code}"}
    responses["default"] = {"$ref": "#/components/responses/Error"}
    operation["responses"] = responses
    return operation


def build_openapi(
    table: RouteTable,
    *,
    title: str = "Datapunk REST API",
    is_public: Callable[[str], bool] | None = None,
) -> Json:
    """The OpenAPI 3.0 document of every route. ``is_public`` (gRPC method -> whether
    anyone may call it) is given by an edge that enforces access: the document then
    declares its credentials, required on every other operation, and the 401/403
    answers; without it the document declares none (an edge without access control)."""
    schemas = _Schemas(table.comments)
    paths: Json = {}
    for route in sorted(table.routes, key=lambda r: (r.template.openapi()[0], r.http_method)):
        path = route.template.openapi()[0]
        suffix = f"_{route.binding}" if route.binding else ""
        paths.setdefault(path, {})[route.http_method.lower()] = _operation(
            schemas, route, suffix, is_public
        )
    error_content = {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{STATUS_SCHEMA}"}}
    }
    responses: Json = {
        f"E{code}": {"description": text, "content": error_content}
        for code, text in _ERROR_RESPONSES.items()
    }
    responses["Error"] = {"description": "Any other error.", "content": error_content}
    components: Json = {"schemas": schemas.components, "responses": responses}
    security: list[Json] = []
    if is_public is not None:
        responses.update(
            {
                f"E{code}": {"description": text, "content": error_content}
                for code, text in _AUTH_RESPONSES.items()
            }
        )
        responses["E401"]["headers"] = {
            "WWW-Authenticate": {
                "description": "The authentication scheme to use (RFC 6750).",
                "schema": {"type": "string"},
            }
        }
        components["securitySchemes"] = _SECURITY_SCHEMES
        # One of the two, on every operation that does not say otherwise.
        security = [{"bearerAuth": []}, {"apiKey": []}]
    packages = sorted({r.package for r in table.routes})
    document: Json = {
        "openapi": "3.0.3",
        "info": {
            "title": title,
            "version": ", ".join(sorted({p.rsplit(".", 1)[-1] for p in packages})),
            "description": "Generated from the Protobuf contracts (packages "
            + ", ".join(packages)
            + "). Every operation is also a gRPC method; errors are google.rpc.Status.",
        },
        "paths": paths,
        "components": components,
    }
    if security:
        document["security"] = security
    return document
