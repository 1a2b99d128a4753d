"""GeoJSON text to EWKB and the properties checks of the spatial store (pure logic; the
same cases against PostGIS are in tests/integration/test_lake_spatial.py)."""

from __future__ import annotations

import json
import struct

import pytest
from datapunk_lake.spatial.geojson import (
    GeoJSONError,
    _plain_point,
    bbox_geometry,
    parse_geometry,
    parse_properties,
)
from datapunk_lake.spatial.postgis import prepare_batch, prepare_batch_cooperatively
from datapunk_shared.errors import InvalidArgument
from hypothesis import given
from hypothesis import strategies as st


def test_point_is_little_endian_ewkb_with_srid_4326() -> None:
    geometry = parse_geometry('{"type": "Point", "coordinates": [1, 2]}')
    assert geometry.kind == "Point"
    # What PostGIS prints for ST_AsEWKB('SRID=4326;POINT(1 2)') in NDR.
    assert geometry.ewkb.hex().upper() == "0101000020E6100000000000000000F03F0000000000000040"
    assert not geometry.needs_validity_check


def test_polygon_with_hole_and_multi_polygon_layout() -> None:
    polygon = parse_geometry(
        json.dumps(
            {
                "type": "Polygon",
                "coordinates": [
                    [[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]],
                    [[1, 1], [1, 2], [2, 2], [2, 1], [1, 1]],
                ],
            }
        )
    )
    order, kind, srid, rings, first_ring = struct.unpack_from("<BIIII", polygon.ewkb)
    assert (order, kind, srid, rings, first_ring) == (1, 0x20000003, 4326, 2, 5)
    assert len(polygon.ewkb) == 9 + 4 + 2 * (4 + 5 * 16)  # header, ring count, rings
    assert polygon.needs_validity_check

    multi = parse_geometry(json.dumps({"type": "MultiPoint", "coordinates": [[1, 2], [3, 4]]}))
    order, kind, srid, parts = struct.unpack_from("<BIII", multi.ewkb)
    assert (kind, parts) == (0x20000004, 2)
    # Parts carry no SRID: byte order, plain type, coordinates.
    assert struct.unpack_from("<BIdd", multi.ewkb, 13) == (1, 1, 1.0, 2.0)
    assert not multi.needs_validity_check


@pytest.mark.parametrize(
    ("text", "reason", "words"),
    [
        ("{", "INVALID_GEOJSON", "not valid JSON"),
        ('{"type": "Point", "coordinates": [1, 2]} extra', "INVALID_GEOJSON", "extra data"),
        ("null", "INVALID_GEOJSON", "JSON object"),
        ('{"coordinates": [1, 2]}', "INVALID_GEOJSON", "needs a type"),
        ('{"type": "Circle", "coordinates": [1, 2]}', "UNSUPPORTED_GEOMETRY_TYPE", "Circle"),
        (
            '{"type": "GeometryCollection", "geometries": []}',
            "UNSUPPORTED_GEOMETRY_TYPE",
            "GeometryCollection",
        ),
        ('{"type": "Point", "coordinates": [true, 2]}', "INVALID_GEOJSON", "numbers"),
        ('{"type": "Point", "coordinates": [1]}', "INVALID_GEOJSON", "2 numbers"),
        ('{"type": "Point", "coordinates": [Infinity, 2]}', "INVALID_GEOJSON", "Infinity"),
        ('{"type": "Point", "coordinates": [-180.0001, 0]}', "COORDINATE_OUT_OF_RANGE", "4326"),
        ('{"type": "MultiPoint", "coordinates": []}', "INVALID_GEOJSON", "empty"),
        (
            '{"type": "MultiLineString", "coordinates": [[0, 0], [1, 1]]}',
            "INVALID_GEOJSON",
            "array of positions",
        ),
        (
            '{"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]}',
            "INVALID_GEOJSON",
            "at least 4",
        ),
    ],
)
def test_bad_geometries(text: str, reason: str, words: str) -> None:
    with pytest.raises(GeoJSONError) as caught:
        parse_geometry(text)
    assert caught.value.reason == reason
    assert words in caught.value.description


def test_bbox_across_the_antimeridian_is_two_polygons() -> None:
    plain = bbox_geometry(0, 0, 1, 1)
    assert plain.kind == "Polygon"
    across = bbox_geometry(170, -10, -170, 10)
    assert across.kind == "MultiPolygon"
    assert struct.unpack_from("<BIII", across.ewkb)[3] == 2


def test_properties() -> None:
    assert parse_properties("", 10) == b"{}"
    assert parse_properties(' {"a": 1} ', 100) == b' {"a": 1} '
    for text, reason in [
        ("[1]", "INVALID_PROPERTIES"),
        ('{"a": NaN}', "INVALID_PROPERTIES"),
        ('{"a": "\\u0000"}', "INVALID_PROPERTIES"),
        ('{"a": "' + "é" * 10 + '"}', "PAYLOAD_TOO_LARGE"),  # 20 UTF-8 bytes of text
    ]:
        with pytest.raises(GeoJSONError) as caught:
            parse_properties(text, 25)
        assert caught.value.reason == reason, text


class _Feature:
    def __init__(self, fid: str, geometry: str, properties: str = "") -> None:
        self.id, self.geometry, self.properties = fid, geometry, properties


def test_prepare_batch_names_every_bad_field() -> None:
    point = '{"type": "Point", "coordinates": [1, 2]}'
    good = prepare_batch([_Feature("a", point, '{"x": 1}')], 100)
    assert good.rows == [("a", parse_geometry(point).ewkb, b'\x01{"x": 1}')]
    with pytest.raises(InvalidArgument) as caught:
        prepare_batch(
            [
                _Feature("a", point),
                _Feature("b", "{}", "[]"),
                _Feature("c", '{"type": "Point", "coordinates": [0, 99]}'),
            ],
            100,
        )
    fields = [(v.field, v.reason) for v in caught.value.violations]
    assert fields == [
        ("features[1].geometry", "INVALID_GEOJSON"),
        ("features[1].properties", "INVALID_PROPERTIES"),
        ("features[2].geometry", "COORDINATE_OUT_OF_RANGE"),
    ]
    assert caught.value.reason == "INVALID_GEOJSON"


def _full_parse(text: str) -> bytes:
    """The EWKB the full JSON parser gives for the point ``text`` (the same point with
    its keys in the other order, which the plain-point shortcut does not take)."""
    value = json.loads(text)
    swapped = json.dumps({"coordinates": value["coordinates"], "type": value["type"]})
    return parse_geometry(swapped).ewkb


@given(
    lon=st.one_of(st.floats(-180, 180, allow_nan=False), st.integers(-180, 180), st.just(-0.0)),
    lat=st.one_of(st.floats(-90, 90, allow_nan=False), st.integers(-90, 90), st.just(-0.0)),
    space=st.sampled_from(["", " ", "\n\t", "\r "]),
)
def test_plain_points_parse_as_the_full_parser_parses_them(
    lon: float, lat: float, space: str
) -> None:
    tokens = ["{", '"type"', ":", '"Point"', ",", '"coordinates"', ":", "[", repr(lon), ","]
    text = space.join(["", *tokens, repr(lat), "]", "}", ""])
    assert parse_geometry(text).ewkb == _full_parse(text)


@given(
    lon=st.one_of(st.floats(-180, 180, allow_nan=False), st.integers(-180, 180)),
    lat=st.one_of(st.floats(-90, 90, allow_nan=False), st.integers(-90, 90)),
    separators=st.sampled_from([(",", ":"), (", ", ": ")]),
)
def test_points_as_json_writes_them_take_the_shortcut(
    lon: float, lat: float, separators: tuple[str, str]
) -> None:
    text = json.dumps({"type": "Point", "coordinates": [lon, lat]}, separators=separators)
    assert parse_geometry(text).ewkb == _full_parse(text)
    assert (_plain_point(text) is None) == (lon == 0 or lat == 0)


@pytest.mark.parametrize(
    ("coordinates", "shortcut"),
    [
        ("-0, 5", False),
        ("5, -0", False),
        ("1e2, 5", True),
        ("5.5E-1,-45", True),
        ("179.999999999999999999, 1", True),
        ("-180, -90", True),
        ("1 , 2", False),
        ("+1, 2", False),
    ],
)
def test_plain_point_edge_numbers(coordinates: str, *, shortcut: bool) -> None:
    text = f'{{"type": "Point", "coordinates": [{coordinates}]}}'
    if coordinates.startswith("+"):
        with pytest.raises(GeoJSONError):
            parse_geometry(text)
        return
    assert parse_geometry(text).ewkb == _full_parse(text)
    assert (_plain_point(text) is not None) == shortcut


@pytest.mark.parametrize(
    ("coordinates", "reason"),
    [
        ("181, 0", "COORDINATE_OUT_OF_RANGE"),
        ("1e400, 0", "INVALID_GEOJSON"),  # infinite
        ("1" + "0" * 400 + ", 0", "INVALID_GEOJSON"),  # an integer beyond any double
        ("01, 2", "INVALID_GEOJSON"),  # not JSON
        ("1, 2, 3", "UNSUPPORTED_DIMENSION"),
    ],
)
def test_plain_looking_points_with_bad_numbers_are_refused(coordinates: str, reason: str) -> None:
    with pytest.raises(GeoJSONError) as caught:
        parse_geometry(f'{{"type": "Point", "coordinates": [{coordinates}]}}')
    assert caught.value.reason == reason


def test_prepared_batch_copy_payload_is_postgres_binary_copy() -> None:
    point = '{"type": "Point", "coordinates": [1, 2]}'
    batch = prepare_batch([_Feature("é", point, '{"x": 1}'), _Feature("b", point)], 100)
    ewkb = parse_geometry(point).ewkb
    expected = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
    for fid, properties in [("é".encode(), b'\x01{"x": 1}'), (b"b", b"\x01{}")]:
        expected += struct.pack(">hi", 3, len(fid)) + fid
        expected += struct.pack(">i", len(ewkb)) + ewkb
        expected += struct.pack(">i", len(properties)) + properties
    assert batch.copy_data == expected + struct.pack(">h", -1)
    line = '{"type": "LineString", "coordinates": [[1, 2], [3, 4]]}'
    assert prepare_batch([_Feature("a", line)], 100).copy_data == b""  # staged instead


async def test_cooperative_preparation_gives_the_same_batch() -> None:
    points = [
        _Feature(f"f{n}", f'{{"type":"Point","coordinates":[{n % 90},1.5]}}') for n in range(1234)
    ]
    cooperative = await prepare_batch_cooperatively(points, 100)
    assert cooperative == prepare_batch(points, 100)
    bad = [*points[:700], _Feature("x", "{}"), *points[700:]]
    with pytest.raises(InvalidArgument) as caught:
        await prepare_batch_cooperatively(bad, 100)
    assert [v.field for v in caught.value.violations] == ["features[700].geometry"]
    line = _Feature("l", '{"type": "LineString", "coordinates": [[1, 2], [3, 4]]}')
    mixed = await prepare_batch_cooperatively([*points, line], 100)
    assert mixed.needs_validity_check
    assert mixed.copy_data == b""
    assert mixed.rows == prepare_batch([*points, line], 100).rows
