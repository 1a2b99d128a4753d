"""REST request -> protobuf request bytes, and protobuf response bytes -> JSON, following
the ``google.api.http`` rules and the proto3 JSON mapping (``google.protobuf.json_format``:
enums by name, int64 as strings, timestamps, durations and field masks as strings).

Path variables, query parameters and the body are merged into one JSON document and
parsed once, strictly: unknown fields, wrong types, unknown query parameters and a field
bound both by the path and the body are ``InvalidArgument`` with ``BadRequest``
violations, as Envoy's transcoder is configured to reject them."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable
from typing import Any

from datapunk_shared.errors import FieldViolation, Internal, InvalidArgument
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from datapunk_nexus.edge.proto_json import message_to_json_object
from datapunk_nexus.edge.routes import Route

__all__ = ["decode_response", "encode_request", "message_class", "parse_json_body"]

Json = dict[str, Any]

# Well-known types a query parameter or path variable may carry as their JSON string.
_STRING_WKTS = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
)
_WRAPPERS = frozenset(
    f"google.protobuf.{name}"
    for name in [
        "DoubleValue",
        "FloatValue",
        "Int64Value",
        "UInt64Value",
        "Int32Value",
        "UInt32Value",
        "BoolValue",
        "StringValue",
        "BytesValue",
    ]
)

_classes: dict[str, type[Message]] = {}


def message_class(descriptor: Descriptor) -> type[Message]:
    cls = _classes.get(descriptor.full_name)
    if cls is None:
        cls = _classes[descriptor.full_name] = message_factory.GetMessageClass(descriptor)
    return cls


def _bad(field: str, description: str, reason: str) -> InvalidArgument:
    return InvalidArgument(
        f"{field}: {description}" if field else description,
        violations=[FieldViolation(field or "body", description, reason)],
        reason=reason,
    )


def parse_json_body(raw: bytes) -> Any:
    """The JSON value of a request body (or one NDJSON line)."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad("", f"the body is not valid JSON: {exc}", "MALFORMED_JSON") from None


def _find_field(descriptor: Descriptor, name: str) -> FieldDescriptor | None:
    field = descriptor.fields_by_name.get(name)
    if field is None:
        field = next((f for f in descriptor.fields if f.json_name == name), None)
    return field


def _leaf_value(field: FieldDescriptor, value: str, where: str) -> Any:
    """A query/path string as the JSON value ``json_format`` expects for ``field``."""
    kind = field.type
    if field.message_type is not None:
        name = field.message_type.full_name
        if name in _STRING_WKTS:
            return value
        if name in _WRAPPERS:
            return _leaf_value(field.message_type.fields_by_name["value"], value, where)
        raise _bad(where, "a message field cannot be set from the query string", "NOT_A_LEAF")
    if kind == FieldDescriptor.TYPE_BOOL:
        if value in ("true", "false"):
            return value == "true"
        raise _bad(where, f"expected true or false, got {value!r}", "INVALID_VALUE")
    return value


def _set_path(
    document: Json, descriptor: Descriptor, dotted: str, value: str, *, repeated_ok: bool
) -> None:
    """Set ``a.b.c`` in ``document`` (keyed by proto field names) from a string."""
    names = dotted.split(".")
    current: Json = document
    current_descriptor = descriptor
    for depth, name in enumerate(names):
        field = _find_field(current_descriptor, name)
        where = ".".join(names[: depth + 1])
        if field is None:
            raise _bad(
                where, f"{current_descriptor.full_name} has no field {name!r}", "UNKNOWN_FIELD"
            )
        last = depth == len(names) - 1
        if not last:
            if field.message_type is None or _is_repeated(field):
                raise _bad(where, "only singular message fields can be traversed", "NOT_A_LEAF")
            if field.message_type.full_name in _STRING_WKTS | _WRAPPERS:
                raise _bad(where, "a well-known type is set as a whole", "NOT_A_LEAF")
            nested = current.setdefault(field.name, {})
            if not isinstance(nested, dict):
                raise _bad(where, "set twice", "DUPLICATE_FIELD")
            current, current_descriptor = nested, field.message_type
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            raise _bad(where, "a map cannot be set from the query string", "NOT_A_LEAF")
        leaf = _leaf_value(field, value, where)
        if _is_repeated(field):
            if not repeated_ok:
                raise _bad(where, "a path variable cannot bind a repeated field", "NOT_A_LEAF")
            current.setdefault(field.name, []).append(leaf)
        elif field.name in current:
            raise _bad(where, "given more than once", "DUPLICATE_FIELD")
        else:
            current[field.name] = leaf


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _strip_bound(document: Json, descriptor: Descriptor, dotted: str) -> bool:
    """Whether ``document`` (client JSON, any field naming) already sets ``dotted``."""
    current: Any = document
    current_descriptor: Descriptor | None = descriptor
    for name in dotted.split("."):
        if not isinstance(current, dict):
            return False
        field = current_descriptor.fields_by_name[name] if current_descriptor else None
        keys = {name, field.json_name} if field is not None else {name}
        key = next((k for k in keys if k in current), None)
        if key is None:
            return False
        current = current[key]
        current_descriptor = field.message_type if field is not None else None
    return True


def _merge_bindings(
    route: Route,
    document: Json,
    path_values: dict[str, str],
    query: Iterable[tuple[str, str]],
) -> None:
    descriptor = route.input
    for dotted, value in path_values.items():
        if _strip_bound(document, descriptor, dotted):
            raise _bad(
                dotted, "bound by the URL path; do not repeat it in the body", "BINDING_COLLISION"
            )
        _set_path(document, descriptor, dotted, value, repeated_ok=False)
    for key, value in query:
        top = key.split(".")[0]
        if top not in route.query_names:
            raise _bad(key, "unknown query parameter", "UNKNOWN_QUERY_PARAMETER")
        _set_path(document, descriptor, key, value, repeated_ok=True)


def encode_request(
    route: Route,
    path_values: dict[str, str],
    query: Collection[tuple[str, str]],
    body: Any,
) -> bytes:
    """The serialized request message. ``body`` is the parsed JSON body (None: no body)."""
    if body is None and not path_values and not query:
        return b""  # nothing set: the empty message, whatever its type
    document: Json = {}
    if route.body == "*":
        if body is not None:
            if not isinstance(body, dict):
                raise _bad("", "the body must be a JSON object", "INVALID_VALUE")
            document = body
    elif route.body:
        if body is not None:
            field = route.input.fields_by_name[route.body]
            document[field.name] = body
    elif body is not None:
        raise _bad(
            "", f"{route.http_method} {route.template.text} takes no body", "UNEXPECTED_BODY"
        )
    _merge_bindings(route, document, path_values, query)
    message = message_class(route.input)()
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise _parse_error(route.input, str(exc)) from None
    return message.SerializeToString()


_FAILED = re.compile(r"Failed to parse (\S+) field")
_NO_FIELD = re.compile(r'has no field named "([^"]+)"')


def _parse_error(descriptor: Descriptor, text: str) -> InvalidArgument:
    names = _FAILED.findall(text)
    unknown = _NO_FIELD.search(text)
    if unknown is not None:
        names.append(unknown.group(1))
    description = text.split("\n")[0]
    description = description.rsplit("field: ", 1)[-1].rstrip(".") or description
    reason = "UNKNOWN_FIELD" if unknown is not None else "INVALID_VALUE"
    return _bad(".".join(names), description, reason)


def decode_response(route: Route, data: bytes) -> bytes:
    """The proto3 JSON of one response message (or its ``response_body`` field)."""
    message = message_class(route.output)()
    try:
        message.ParseFromString(data)
    except DecodeError:
        raise Internal("the backend answered with a malformed message") from None
    document: Any = message_to_json_object(message)
    if route.response_body:
        field = route.output.fields_by_name[route.response_body]
        document = document.get(field.json_name)
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
