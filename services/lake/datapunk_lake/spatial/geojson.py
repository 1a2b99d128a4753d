"""GeoJSON (RFC 7946) geometry text to EWKB for SRID 4326, and JSON properties checks.

Parsing happens in the Lake, before anything reaches PostgreSQL, so that a bad feature is
refused with the path of the bad field and a precise reason, and so that the database
receives compact binary geometries (extended WKB) through COPY. What the GeoJSON structure
cannot tell (a self-intersecting polygon, say) PostGIS checks afterwards, inside the write
transaction, with ``ST_IsValidReason``; :attr:`Geometry.needs_validity_check` says when.
"""

from __future__ import annotations

import json
import math
import re
import struct
from typing import Any, NamedTuple

__all__ = [
    "SRID",
    "GeoJSONError",
    "Geometry",
    "bbox_geometry",
    "parse_geometry",
    "parse_properties",
]

SRID = 4326
_SRID_FLAG = 0x20000000
_TYPES = {
    "Point": 1,
    "LineString": 2,
    "Polygon": 3,
    "MultiPoint": 4,
    "MultiLineString": 5,
    "MultiPolygon": 6,
}
_POINT_EWKB = struct.Struct("<BIIdd")
_HEADER_EWKB = struct.Struct("<BII")  # byte order, type with SRID flag, SRID
_HEADER_WKB = struct.Struct("<BI")  # byte order, type (parts of a multi-geometry)
_COUNT = struct.Struct("<I")
_XY = struct.Struct("<dd")


class GeoJSONError(ValueError):
    """A GeoJSON text that cannot be stored; ``reason`` is a stable UPPER_SNAKE_CASE code."""

    def __init__(self, description: str, reason: str = "INVALID_GEOJSON") -> None:
        super().__init__(description)
        self.description = description
        self.reason = reason


class Geometry(NamedTuple):
    """A parsed geometry: its GeoJSON type and its extended WKB (little-endian, SRID 4326).
    (A named tuple: a bulk load makes one per feature, and a tuple is made in a fraction
    of a frozen dataclass's time.)"""

    kind: str
    ewkb: bytes

    @property
    def needs_validity_check(self) -> bool:
        """Points and multi-points are valid once their coordinates are; lines and polygons
        need PostGIS's OGC validity check (self-intersections, repeated points...)."""
        return self.kind not in ("Point", "MultiPoint")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_WHITESPACE = " \t\n\r"


def _loads(text: str) -> Any:
    """Strict JSON (no NaN or Infinity) with one shared decoder: ``json.loads`` with a
    keyword argument builds a new decoder on every call, which costs more than parsing a
    point."""
    stripped = text.strip(_WHITESPACE)
    value, end = _DECODER.raw_decode(stripped)
    if end != len(stripped):
        raise ValueError(f"extra data after the JSON value (character {end})")
    return value


def _xy(position: Any) -> tuple[float, float]:
    if type(position) is not list:
        raise GeoJSONError(f"a position must be an array [longitude, latitude], got {position!r}")
    if len(position) != 2:
        if len(position) == 3:
            raise GeoJSONError(
                "positions with an altitude are not supported: give [longitude, latitude]",
                "UNSUPPORTED_DIMENSION",
            )
        raise GeoJSONError(
            f"a position must be an array of 2 numbers [longitude, latitude], got {position!r}"
        )
    x, y = position
    if type(x) not in (float, int) or type(y) not in (float, int):
        raise GeoJSONError(f"a position must hold numbers, got {position!r}")
    try:
        lon, lat = float(x), float(y)
    except OverflowError:  # an integer literal beyond any double
        lon = lat = math.inf
    if not (math.isfinite(lon) and math.isfinite(lat)):
        raise GeoJSONError(f"coordinates must be finite, got {position!r}")
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
        raise GeoJSONError(
            f"position {position!r} is outside SRID 4326: longitude must be within "
            "[-180, 180] and latitude within [-90, 90]",
            "COORDINATE_OUT_OF_RANGE",
        )
    return lon, lat


def _array(value: Any, what: str) -> list[Any]:
    if type(value) is not list:
        raise GeoJSONError(f"{what} must be an array, got {value!r}"[:300])
    if not value:
        raise GeoJSONError(f"{what} must not be empty")
    return value


def _positions(value: Any, what: str) -> list[Any]:
    positions = _array(value, what)
    if type(positions[0]) is not list:
        raise GeoJSONError(
            f"{what} must be an array of positions [longitude, latitude], got {value!r}"[:300]
        )
    return positions


def _points(value: Any, what: str, minimum: int) -> bytes:
    positions = _positions(value, what)
    if len(positions) < minimum:
        raise GeoJSONError(f"{what} needs at least {minimum} positions, got {len(positions)}")
    out = [_COUNT.pack(len(positions))]
    out.extend(_XY.pack(*_xy(p)) for p in positions)
    return b"".join(out)


def _ring(value: Any, what: str) -> bytes:
    positions = _positions(value, what)
    if len(positions) < 4:
        raise GeoJSONError(f"{what} is a linear ring and needs at least 4 positions")
    if positions[0] != positions[-1]:
        raise GeoJSONError(f"{what} is not closed: its first and last positions differ")
    return _points(positions, what, 4)


def _polygon(value: Any, what: str) -> bytes:
    rings = _array(value, what)
    return _COUNT.pack(len(rings)) + b"".join(
        _ring(ring, f"{what}[{i}]") for i, ring in enumerate(rings)
    )


def _body(kind: str, coordinates: Any) -> bytes:
    """The WKB body (after the header) of a geometry of type ``kind``."""
    if kind == "Point":
        return _XY.pack(*_xy(coordinates))
    if kind == "LineString":
        return _points(coordinates, "coordinates", 2)
    if kind == "Polygon":
        return _polygon(coordinates, "coordinates")
    parts = _array(coordinates, "coordinates")
    single = {"MultiPoint": 1, "MultiLineString": 2, "MultiPolygon": 3}[kind]
    out = [_COUNT.pack(len(parts))]
    for i, part in enumerate(parts):
        what = f"coordinates[{i}]"
        out.append(_HEADER_WKB.pack(1, single))
        if single == 1:
            out.append(_XY.pack(*_xy(part)))
        elif single == 2:
            out.append(_points(part, what, 2))
        else:
            out.append(_polygon(part, what))
    return b"".join(out)


# A point written the plain way, ``{"type":"Point","coordinates":[x,y]}`` compact or with
# the spaces of ``json.dumps``: the shape of nearly every point a bulk load sends. Checking
# the fixed text and the two JSON numbers costs a fraction of a JSON decode.
_PLAIN_PREFIXES = ('{"type":"Point","coordinates":[', '{"type": "Point", "coordinates": [')
_NUMBER = "(-?(?:0|[1-9][0-9]*)(?:[.][0-9]+)?(?:[eE][-+]?[0-9]+)?)"
_PLAIN_XY = re.compile(f"{_NUMBER}, ?{_NUMBER}")


def _plain_point(text: str) -> Geometry | None:
    """The point ``text`` holds when it is a plain point with usable coordinates, else
    None (then the full parser decides, and words any error). A JSON number converted
    with ``float`` is the double ``json`` would give; zeros go the full way because
    ``float("-0")`` is -0.0 where JSON's integer -0 is 0.0."""
    if not text.endswith("]}"):
        return None
    for prefix in _PLAIN_PREFIXES:
        if text.startswith(prefix):
            match = _PLAIN_XY.fullmatch(text, len(prefix), len(text) - 2)
            break
    else:
        return None
    if match is None:
        return None
    lon, lat = float(match[1]), float(match[2])
    if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0) or lon == 0.0 or lat == 0.0:
        return None
    return Geometry("Point", _POINT_EWKB.pack(1, 1 | _SRID_FLAG, SRID, lon, lat))


def parse_geometry(text: str) -> Geometry:
    """Parse GeoJSON geometry text into EWKB, or raise :class:`GeoJSONError`."""
    plain = _plain_point(text)
    if plain is not None:
        return plain
    try:
        value = _loads(text)
    except ValueError as exc:
        raise GeoJSONError(f"not valid JSON: {exc}") from None
    if type(value) is not dict:
        raise GeoJSONError("a GeoJSON geometry must be a JSON object with type and coordinates")
    kind = value.get("type")
    if not isinstance(kind, str):
        raise GeoJSONError(f"a GeoJSON geometry needs a type, got {kind!r}")
    code = _TYPES.get(kind)
    if code is None:
        raise GeoJSONError(
            f"unsupported geometry type {kind!r}: expected one of {', '.join(_TYPES)}",
            "UNSUPPORTED_GEOMETRY_TYPE",
        )
    if "coordinates" not in value:
        raise GeoJSONError(f"a {kind} needs coordinates")
    coordinates = value["coordinates"]
    if code == 1:  # the common case, kept short
        return Geometry(kind, _POINT_EWKB.pack(1, 1 | _SRID_FLAG, SRID, *_xy(coordinates)))
    return Geometry(kind, _HEADER_EWKB.pack(1, code | _SRID_FLAG, SRID) + _body(kind, coordinates))


def bbox_geometry(west: float, south: float, east: float, north: float) -> Geometry:
    """A bounding box as a polygon, or as two polygons when it crosses the antimeridian
    (``west > east``)."""
    boxes = [(west, east)] if west <= east else [(west, 180.0), (-180.0, east)]
    polygons = []
    for w, e in boxes:
        ring = [[w, south], [e, south], [e, north], [w, north], [w, south]]
        polygons.append([ring])
    if len(polygons) == 1:
        body = _polygon(polygons[0], "bbox")
        return Geometry("Polygon", _HEADER_EWKB.pack(1, 3 | _SRID_FLAG, SRID) + body)
    return Geometry(
        "MultiPolygon",
        _HEADER_EWKB.pack(1, 6 | _SRID_FLAG, SRID) + _body("MultiPolygon", polygons),
    )


def parse_properties(text: str, max_bytes: int) -> bytes:
    """Check that ``text`` is a JSON object of at most ``max_bytes`` UTF-8 bytes and
    return those bytes (``{}`` when ``text`` is empty); raise :class:`GeoJSONError`."""
    if not text:
        return b"{}"
    data = text.encode()
    if len(data) > max_bytes:
        raise GeoJSONError(
            f"properties are {len(data)} bytes; the limit is {max_bytes} bytes",
            "PAYLOAD_TOO_LARGE",
        )
    try:
        value = _loads(text)
    except ValueError as exc:
        raise GeoJSONError(f"properties are not valid JSON: {exc}", "INVALID_PROPERTIES") from None
    if type(value) is not dict:
        raise GeoJSONError(
            f"properties must be a JSON object, got {type(value).__name__}", "INVALID_PROPERTIES"
        )
    if "\\u0000" in text:
        raise GeoJSONError(
            "properties may not contain the NUL character (\\u0000)", "INVALID_PROPERTIES"
        )
    return data
