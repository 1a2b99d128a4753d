"""The proto3 JSON object of a response message, exactly as
``json_format.MessageToDict(message, always_print_fields_with_no_presence=True)`` builds it,
with each message type's fields worked out once instead of on every call.

``MessageToDict`` makes a new printer per call, looks up each field's kind, and, for every
enum, searches the default pool for the JSON-name extension; for a small status answer
that was most of the edge's transcoding time. Here each message type gets a table (JSON
name, value converter, shape) built on first use. Anything unusual keeps
``json_format``'s own code: the well-known types other than Timestamp, Duration, FieldMask
and the wrappers (``Any``, ``Struct``, ``Value``, ``ListValue``) are printed by
``MessageToDict``; a message with an extension set, or whose printing fails, is printed
whole by ``MessageToDict``; enums are
left to it altogether when the ``pb.enumvalue.json`` extension (custom JSON names) is
loaded. ``tests/unit/test_edge_proto_json.py`` compares both on every response type of
the contracts with generated messages."""

from __future__ import annotations

import base64
import datetime
import math
from collections.abc import Callable
from typing import Any

from google.protobuf import descriptor_pool, json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.internal.type_checkers import ToShortestFloat
from google.protobuf.message import Message

__all__ = ["message_to_json_object"]

_Convert = Callable[[Any], Any]
_Entry = tuple[str, int, "_Convert | None"]

_BY_JSON_FORMAT = frozenset(
    {
        "google.protobuf.Any",
        "google.protobuf.Struct",
        "google.protobuf.Value",
        "google.protobuf.ListValue",
    }
)
_INT64 = frozenset({FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64})


class _Fallback(Exception):
    """This message (or type) is printed by ``json_format`` itself."""


def _json_format(message: Message) -> Any:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def message_to_json_object(message: Message) -> Any:
    """``MessageToDict(message, always_print_fields_with_no_presence=True)``, faster."""
    try:
        return _converter_of(message.DESCRIPTOR)(message)
    except Exception:  # json_format decides (and raises its own error)
        return _json_format(message)


_converters: dict[Any, _Convert] = {}


def _converter_of(descriptor: Any) -> _Convert:
    """The printer of a message type (a ``Descriptor``), made on first use."""
    found = _converters.get(descriptor)
    if found is None:
        # A type that contains itself meets this stand-in while it is being worked out.
        made: list[_Convert] = []
        _converters[descriptor] = lambda message: made[0](message)
        found = _message_converter(descriptor)
        made.append(found)
        _converters[descriptor] = found
    return found


def _message_converter(descriptor: Descriptor) -> _Convert:
    name = descriptor.full_name
    if name == "google.protobuf.Timestamp":
        return _timestamp
    if name == "google.protobuf.Duration":
        return _duration
    if name == "google.protobuf.FieldMask":
        return _to_json_string
    if name in _BY_JSON_FORMAT:
        return _json_format
    if descriptor.file.name == "google/protobuf/wrappers.proto":
        convert = _value_converter(descriptor.fields_by_name["value"])
        return lambda message: convert(message.value)
    try:
        return _RegularMessage(descriptor)
    except _Fallback:
        return _json_format


# Shapes of a field: one value as it is, one converted value, a list, a map.
_PLAIN, _SINGULAR, _REPEATED, _MAP = 0, 1, 2, 3


def _to_json_string(message: Any) -> Any:
    return message.ToJsonString()


# Timestamp.ToJsonString and Duration.ToJsonString, without their float arithmetic and
# repeated checks: the same text (an out-of-range value goes to them, to raise their
# error). A timestamp's date and time part is remembered per second: answers carry the
# same few instants (start times, the last health check) again and again.
_TIMESTAMP_MIN, _TIMESTAMP_MAX = -62135596800, 253402300799
_DURATION_MAX = 315576000000
_NANOS = 1_000_000_000
_EPOCH = datetime.datetime(1970, 1, 1)
_SECONDS_TEXT: dict[int, str] = {}


def _fraction(nanos: int) -> str:
    if nanos == 0:
        return ""
    if nanos % 1_000_000 == 0:
        return f".{nanos // 1_000_000:03d}"
    if nanos % 1000 == 0:
        return f".{nanos // 1000:06d}"
    return f".{nanos:09d}"


def _timestamp(message: Any) -> str:
    seconds, nanos = message.seconds, message.nanos
    if not (_TIMESTAMP_MIN <= seconds <= _TIMESTAMP_MAX and 0 <= nanos < _NANOS):
        return str(message.ToJsonString())
    text = _SECONDS_TEXT.get(seconds)
    if text is None:
        if len(_SECONDS_TEXT) >= 4096:
            _SECONDS_TEXT.clear()
        text = _SECONDS_TEXT[seconds] = (_EPOCH + datetime.timedelta(seconds=seconds)).isoformat()
    return f"{text}{_fraction(nanos)}Z"


def _duration(message: Any) -> str:
    seconds, nanos = message.seconds, message.nanos
    if (
        not (-_DURATION_MAX <= seconds <= _DURATION_MAX and -_NANOS < nanos < _NANOS)
        or (nanos < 0 and seconds > 0)
        or (nanos > 0 and seconds < 0)
    ):
        return str(message.ToJsonString())
    if seconds < 0 or nanos < 0:
        return f"-{-seconds}{_fraction(-nanos)}s"
    return f"{seconds}{_fraction(nanos)}s"


class _RegularMessage:
    """The printer of one message type: the fields that are set, in ``ListFields``
    order, then the defaults of the fields without presence that were not set."""

    __slots__ = ("_defaults", "_fields")

    def __init__(self, descriptor: Descriptor) -> None:
        self._fields: dict[FieldDescriptor, _Entry] = {}
        defaults: list[tuple[str, int, Any]] = []
        for field in descriptor.fields:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                shape = _MAP
                convert = _value_converter(field.message_type.fields_by_name["value"])
            else:
                convert = _value_converter(field)
                if field.is_repeated:
                    shape = _REPEATED
                else:
                    shape = _PLAIN if convert is _same else _SINGULAR
            self._fields[field] = (field.json_name, shape, None if convert is _same else convert)
            if not field.has_presence:
                single = shape in (_PLAIN, _SINGULAR)
                defaults.append(
                    (field.json_name, shape, convert(field.default_value) if single else None)
                )
        self._defaults = tuple(defaults)

    def __call__(self, message: Message) -> dict[str, Any]:
        js: dict[str, Any] = {}
        fields = self._fields
        for field, value in message.ListFields():
            entry = fields.get(field)
            if entry is None:  # an extension
                raise _Fallback
            name, shape, convert = entry
            if shape == _PLAIN:
                js[name] = value
            elif shape == _SINGULAR:
                js[name] = convert(value)  # type: ignore[misc]
            elif shape == _REPEATED:
                js[name] = list(value) if convert is None else [convert(v) for v in value]
            elif convert is None:
                js[name] = {_map_key(key): value[key] for key in value}
            else:
                js[name] = {_map_key(key): convert(value[key]) for key in value}
        for name, shape, default in self._defaults:
            if name not in js:
                if shape <= _SINGULAR:
                    js[name] = default
                else:
                    js[name] = [] if shape == _REPEATED else {}
        return js


def _map_key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


def _value_converter(field: FieldDescriptor) -> _Convert:
    """How one value of ``field`` is printed (``json_format._FieldToJsonObject``)."""
    kind = field.cpp_type
    if kind == FieldDescriptor.CPPTYPE_MESSAGE:
        return _converter_of(field.message_type)
    if kind == FieldDescriptor.CPPTYPE_ENUM:
        return _enum_converter(field)
    if kind == FieldDescriptor.CPPTYPE_STRING:
        if field.type == FieldDescriptor.TYPE_BYTES:
            return _bytes
        return _same
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        return _same  # upb hands out bools already
    if kind in _INT64:
        return str
    if kind == FieldDescriptor.CPPTYPE_DOUBLE:
        return _double
    if kind == FieldDescriptor.CPPTYPE_FLOAT:
        return _float
    return _same


def _same(value: Any) -> Any:
    return value


def _bytes(value: bytes) -> str:
    return base64.b64encode(value).decode("utf-8")


def _non_finite(value: float) -> str | None:
    if math.isinf(value):
        return "-Infinity" if value < 0.0 else "Infinity"
    if math.isnan(value):
        return "NaN"
    return None


def _double(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return _non_finite(value) or value


def _float(value: float) -> float | str:
    if math.isfinite(value):
        return float(ToShortestFloat(value))
    return _non_finite(value) or value


_enum_json_names_loaded: bool | None = None


def _enum_json_names() -> bool:
    """Whether enum values may carry custom JSON names (json_format then decides)."""
    global _enum_json_names_loaded
    if _enum_json_names_loaded is None:
        try:
            descriptor_pool.Default().FindExtensionByName("pb.enumvalue.json")
            _enum_json_names_loaded = True
        except KeyError:
            _enum_json_names_loaded = False
    return _enum_json_names_loaded


def _enum_converter(field: FieldDescriptor) -> _Convert:
    enum: Any = field.enum_type
    if enum.full_name == "google.protobuf.NullValue":
        return lambda value: None
    if _enum_json_names():
        raise _Fallback
    names = {number: value.name for number, value in enum.values_by_number.items()}
    # An open enum may hold a number it does not name (printed as the number); a closed
    # one cannot (upb keeps such a value among the unknown fields).
    return lambda value: names.get(value, value)
