"""The edge's response printer (``datapunk_nexus.edge.proto_json``) writes exactly what
``json_format.MessageToDict(..., always_print_fields_with_no_presence=True)`` writes — the
same values and the same key order — for generated messages of every response type the
REST edge serves (the contracts and the edge's test contract), well-known types included,
and for a message with an extension set (printed by ``json_format`` itself)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from datapunk_nexus.edge.proto_json import message_to_json_object
from datapunk_nexus.edge.routes import default_descriptor_set, load_routes
from datapunk_nexus.edge.transcode import message_class
from google.api import annotations_pb2, http_pb2
from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    duration_pb2,
    json_format,
    struct_pb2,
    timestamp_pb2,
)
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.edge_support import edge_descriptor_set, edge_routes

_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}
_MAX_DEPTH = 3

Draw = Callable[..., Any]
"""``st.data().draw``."""


def _response_types() -> list[Descriptor]:
    found: dict[str, Descriptor] = {}
    for table in (load_routes(default_descriptor_set()), edge_routes()):
        for route in table.routes:
            found.setdefault(route.output.full_name, route.output)
    return [found[name] for name in sorted(found)]


def _expected(message: Message) -> Any:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def _same_json(message: Message) -> None:
    ours, theirs = message_to_json_object(message), _expected(message)
    # Key order too: the edge writes the object as json.dumps orders it.
    assert json.dumps(ours, allow_nan=True) == json.dumps(theirs, allow_nan=True)


def _scalar(draw: Draw, field: Any) -> Any:
    kind = field.cpp_type
    if kind in _RANGES:
        low, high = _RANGES[kind]
        return draw(st.one_of(st.integers(low, high), st.sampled_from([low, 0, high])))
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        return draw(st.booleans())
    if kind == FieldDescriptor.CPPTYPE_DOUBLE:
        return draw(st.floats(allow_nan=True, allow_infinity=True))
    if kind == FieldDescriptor.CPPTYPE_FLOAT:
        return draw(st.floats(width=32, allow_nan=True, allow_infinity=True))
    if kind == FieldDescriptor.CPPTYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        if not field.enum_type.is_closed:
            numbers.append(max(numbers) + 7)  # a number the enum does not name
        return draw(st.sampled_from(numbers))
    if field.type == FieldDescriptor.TYPE_BYTES:
        return draw(st.binary(max_size=12))
    return draw(st.text(max_size=12))


def _fill_well_known(draw: Draw, message: Message) -> bool:
    """Valid values for the well-known types that need them; False for the others."""
    name = message.DESCRIPTOR.full_name
    if name == "google.protobuf.Timestamp":
        message.seconds = draw(st.integers(-62135596800, 253402300799))  # type: ignore[attr-defined]
        message.nanos = draw(st.sampled_from([0, 5_000_000, 7_000, 123_456_789]))  # type: ignore[attr-defined]
    elif name == "google.protobuf.Duration":
        seconds = draw(st.integers(-315576000000, 315576000000))
        nanos = draw(st.sampled_from([0, 1_000_000, 999_000, 1]))
        message.seconds, message.nanos = seconds, -nanos if seconds < 0 else nanos  # type: ignore[attr-defined]
    elif name == "google.protobuf.FieldMask":
        message.paths.extend(draw(st.lists(st.sampled_from(["a", "b_c", "d.e_f"]), max_size=3)))  # type: ignore[attr-defined]
    elif name in ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"):
        value = draw(
            st.recursive(
                st.none() | st.booleans() | st.text(max_size=5) | st.integers(-1000, 1000),
                lambda inner: (
                    st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=4), inner, max_size=3)
                ),
                max_leaves=6,
            )
        )
        if name == "google.protobuf.Struct":
            message.update({"k": value})  # type: ignore[attr-defined]
        elif name == "google.protobuf.ListValue":
            message.extend([value])  # type: ignore[attr-defined]
        else:
            json_format.ParseDict(value, message)
    elif name == "google.protobuf.Any":
        inner = timestamp_pb2.Timestamp(seconds=draw(st.integers(0, 2**31)))
        message.Pack(inner)  # type: ignore[attr-defined]
    else:
        return False
    return True


def _fill(draw: Draw, message: Message, depth: int) -> None:
    if _fill_well_known(draw, message):
        return
    fields: Any = message.DESCRIPTOR.fields
    for field in fields:
        if not draw(st.booleans()):
            continue
        entry: Any = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            key_field = entry.fields_by_name["key"]
            value_field = entry.fields_by_name["value"]
            container = getattr(message, field.name)
            for _ in range(draw(st.integers(0, 3))):
                key = _scalar(draw, key_field)
                if value_field.message_type is not None:
                    if depth < _MAX_DEPTH:
                        _fill(draw, container[key], depth + 1)
                else:
                    container[key] = _scalar(draw, value_field)
        elif field.message_type is not None:
            if depth >= _MAX_DEPTH:
                continue
            if field.is_repeated:
                for _ in range(draw(st.integers(0, 2))):
                    _fill(draw, getattr(message, field.name).add(), depth + 1)
            else:
                nested = getattr(message, field.name)
                nested.SetInParent()
                _fill(draw, nested, depth + 1)
        elif field.is_repeated:
            getattr(message, field.name).extend(
                [_scalar(draw, field) for _ in range(draw(st.integers(0, 3)))]
            )
        else:
            setattr(message, field.name, _scalar(draw, field))


@pytest.mark.parametrize("descriptor", _response_types(), ids=lambda d: d.full_name)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_response_type_prints_as_json_format_does(
    descriptor: Descriptor, data: st.DataObject
) -> None:
    message = message_class(descriptor)()
    _fill(data.draw, message, 0)
    _same_json(message)
    # ...and the same after a trip through the wire, as the edge receives it.
    _same_json(message_class(descriptor).FromString(message.SerializeToString()))


def test_the_empty_message_of_every_response_type() -> None:
    for descriptor in _response_types():
        _same_json(message_class(descriptor)())


def test_well_known_types_at_the_top_and_nested() -> None:
    struct = struct_pb2.Struct()
    struct.update({"a": [1, "x", None, {"b": True}]})
    packed = any_pb2.Any()
    packed.Pack(timestamp_pb2.Timestamp(seconds=1, nanos=5))
    for message in (struct, packed, struct_pb2.Value(number_value=2.5), any_pb2.Any()):
        _same_json(message)


def test_a_message_with_an_extension_set_is_printed_by_json_format() -> None:
    options = descriptor_pb2.MethodOptions(deprecated=True)
    options.Extensions[annotations_pb2.http].CopyFrom(http_pb2.HttpRule(get="/v1/x/{name}"))
    document = message_to_json_object(options)
    assert document["[google.api.http]"]["get"] == "/v1/x/{name}"
    _same_json(options)


def test_what_json_format_refuses_is_refused_the_same_way() -> None:
    value = struct_pb2.Value(number_value=math.inf)
    with pytest.raises(ValueError, match="Infinity") as theirs:
        _expected(value)
    with pytest.raises(ValueError, match="Infinity") as ours:
        message_to_json_object(value)
    assert str(ours.value) == str(theirs.value)


def test_a_recursive_proto2_type_with_closed_enums() -> None:
    # DescriptorProto holds DescriptorProtos (nested types); its enums are closed.
    files = descriptor_pb2.FileDescriptorSet.FromString(edge_descriptor_set().read_bytes())
    for file in files.file:
        _same_json(file)


_NANOS = [0, 1, 999, 1_000, 7_000, 1_000_000, 5_000_000, 123_456_789, 999_999_999]


@given(
    seconds=st.integers(-62135596800, 253402300799)
    | st.sampled_from([-62135596800, 0, 253402300799]),
    nanos=st.sampled_from(_NANOS) | st.integers(0, 999_999_999),
)
def test_timestamps_print_as_json_format_does(seconds: int, nanos: int) -> None:
    _same_json(timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos))
    _same_json(timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos))  # remembered second


@given(
    seconds=st.integers(0, 315576000000) | st.sampled_from([0, 1, 315576000000]),
    nanos=st.sampled_from(_NANOS) | st.integers(0, 999_999_999),
    negative=st.booleans(),
)
def test_durations_print_as_json_format_does(seconds: int, nanos: int, negative: bool) -> None:
    sign = -1 if negative else 1
    _same_json(duration_pb2.Duration(seconds=sign * seconds, nanos=sign * nanos))


@pytest.mark.parametrize(
    "message",
    [
        timestamp_pb2.Timestamp(seconds=253402300800),
        timestamp_pb2.Timestamp(seconds=-62135596801),
        timestamp_pb2.Timestamp(seconds=1, nanos=-1),
        timestamp_pb2.Timestamp(seconds=1, nanos=1_000_000_000),
        duration_pb2.Duration(seconds=315576000001),
        duration_pb2.Duration(seconds=1, nanos=-1),
        duration_pb2.Duration(seconds=-1, nanos=1),
        duration_pb2.Duration(nanos=1_000_000_000),
    ],
    ids=str,
)
def test_out_of_range_timestamps_and_durations_fail_as_json_format_does(message: Message) -> None:
    with pytest.raises(ValueError, match="is not valid") as theirs:
        _expected(message)
    with pytest.raises(ValueError, match="is not valid") as ours:
        message_to_json_object(message)
    assert str(ours.value) == str(theirs.value)
