"""Pure logic of the vector store: the Qdrant server adapter's translation of filters and
requests (the server path cannot run here: no server binary), its error mapping, the
checks of vectors, payloads and filters, page tokens, and bulk vector decoding."""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from datapunk.lake.v1 import vectors_pb2 as pb
from datapunk_lake.vectors.convert import (
    decode_name_token,
    decode_offset_token,
    encode_name_token,
    encode_offset_token,
    filter_from_pb,
    points_from_pb,
    scored_list_to_pb,
)
from datapunk_lake.vectors.domain import (
    CollectionConfig,
    DatetimeRange,
    Distance,
    FieldCondition,
    FieldType,
    Filter,
    GeoBox,
    GeoRadius,
    HasId,
    Hnsw,
    Match,
    MatchAny,
    Nested,
    NumberRange,
    PayloadField,
    Point,
    Quantization,
    ScoredPoint,
    Selector,
    TextMatch,
    VectorQuery,
)
from datapunk_lake.vectors.server import map_error
from datapunk_lake.vectors.server_translate import (
    METADATA_KEY,
    collection_params,
    point_struct,
    query_request,
    selector,
    server_filter,
)
from datapunk_lake.vectors.validation import (
    check_filter,
    check_payload,
    check_vector,
    normalize_payload,
    suspect_vectors,
)
from datapunk_shared.errors import (
    AlreadyExists,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from google.protobuf import struct_pb2
from qdrant_client import models as m
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

CONFIG = CollectionConfig(
    name="docs",
    vector_size=3,
    distance=Distance.COSINE,
    hnsw=Hnsw(m=8, ef_construct=50, ef=40, full_scan_threshold_kb=500),
    quantization=Quantization.SCALAR,
    quantile=0.95,
    payload_fields=(
        PayloadField("kind", FieldType.KEYWORD),
        PayloadField("rank", FieldType.INTEGER),
        PayloadField("price", FieldType.FLOAT),
        PayloadField("where", FieldType.GEO),
        PayloadField("at", FieldType.DATETIME),
        PayloadField("body", FieldType.TEXT),
        PayloadField("live", FieldType.BOOL),
    ),
)


# ---- server translation --------------------------------------------------------------


def test_collection_params_carry_the_whole_configuration() -> None:
    params = collection_params(CONFIG)
    assert params["collection_name"] == "docs"
    assert params["vectors_config"] == m.VectorParams(size=3, distance=m.Distance.COSINE)
    assert params["hnsw_config"] == m.HnswConfigDiff(m=8, ef_construct=50, full_scan_threshold=500)
    assert params["quantization_config"] == m.ScalarQuantization(
        scalar=m.ScalarQuantizationConfig(type=m.ScalarType.INT8, quantile=0.95)
    )
    stored = params["metadata"][METADATA_KEY]
    assert CollectionConfig.from_json(stored) == CONFIG
    binary = collection_params(
        CollectionConfig("b", 4, Distance.EUCLID, quantization=Quantization.BINARY, on_disk=True)
    )
    assert isinstance(binary["quantization_config"], m.BinaryQuantization)
    assert binary["vectors_config"].on_disk is True


def test_every_condition_translates_to_the_server_model() -> None:
    at = datetime(2024, 1, 2, tzinfo=UTC)
    flt = Filter(
        must=(
            FieldCondition("kind", Match("a")),
            FieldCondition("rank", MatchAny((1, 2))),
            FieldCondition("price", NumberRange(gte=1.0, lt=2.0)),
            FieldCondition("at", DatetimeRange(gt=at)),
            FieldCondition("where", GeoRadius(13.4, 52.5, 1000.0)),
            FieldCondition("where", GeoBox(13.0, 53.0, 14.0, 52.0)),
            FieldCondition("body", TextMatch("red")),
        ),
        should=(Filter(must_not=(FieldCondition("live", Match(True)),)),),
        must_not=(
            Nested("tags", Filter(must=(FieldCondition("w", Match(3)),))),
            HasId((1, "00000000-0000-0000-0000-000000000001")),
        ),
    )
    out = server_filter(flt)
    assert out.must == [
        m.FieldCondition(key="kind", match=m.MatchValue(value="a")),
        m.FieldCondition(key="rank", match=m.MatchAny(any=[1, 2])),
        m.FieldCondition(key="price", range=m.Range(gte=1.0, lt=2.0)),
        m.FieldCondition(key="at", range=m.DatetimeRange(gt=at)),
        m.FieldCondition(
            key="where",
            geo_radius=m.GeoRadius(center=m.GeoPoint(lon=13.4, lat=52.5), radius=1000.0),
        ),
        m.FieldCondition(
            key="where",
            geo_bounding_box=m.GeoBoundingBox(
                top_left=m.GeoPoint(lon=13.0, lat=53.0),
                bottom_right=m.GeoPoint(lon=14.0, lat=52.0),
            ),
        ),
        m.FieldCondition(key="body", match=m.MatchText(text="red")),
    ]
    assert out.should == [
        m.Filter(must_not=[m.FieldCondition(key="live", match=m.MatchValue(value=True))])
    ]
    assert out.must_not == [
        m.NestedCondition(
            nested=m.Nested(
                key="tags",
                filter=m.Filter(must=[m.FieldCondition(key="w", match=m.MatchValue(value=3))]),
            )
        ),
        m.HasIdCondition(has_id=[1, "00000000-0000-0000-0000-000000000001"]),
    ]
    # The translated filter is what the server's REST API accepts.
    assert m.Filter.model_validate(out.model_dump(mode="json")) == out


def test_query_request_uses_the_collection_ef_unless_the_query_says() -> None:
    query = VectorQuery(vector=[1.0, 0.0, 0.0], limit=5, offset=2, score_threshold=0.5)
    request = query_request(query, 40)
    assert request.query == [1.0, 0.0, 0.0]
    assert request.limit == 5
    assert request.offset == 2
    assert request.score_threshold == 0.5
    assert request.params == m.SearchParams(hnsw_ef=40, exact=False)
    assert request.filter is None
    assert request.with_payload is False
    own = query_request(VectorQuery(vector=[1.0], hnsw_ef=300, exact=True, filter=Filter()), 40)
    assert own.params == m.SearchParams(hnsw_ef=300, exact=True)
    assert own.filter is None  # an empty filter matches everything


def test_points_and_selectors_translate() -> None:
    struct = point_struct(Point("00000000-0000-0000-0000-000000000002", (1.0, 2.0), {"a": 1}))
    assert struct == m.PointStruct(
        id="00000000-0000-0000-0000-000000000002", vector=[1.0, 2.0], payload={"a": 1}
    )
    assert selector(Selector(ids=(1, 2))) == m.PointIdsList(points=[1, 2])
    by_filter = selector(Selector(filter=Filter(must=(FieldCondition("k", Match("v")),))))
    assert isinstance(by_filter, m.FilterSelector)


def test_server_errors_map_to_the_vocabulary() -> None:
    down = map_error(ResponseHandlingException(httpx.ConnectError("refused")), "docs")
    assert isinstance(down, Unavailable)
    assert down.retry_after is not None
    assert (down.reason, down.metadata, down.retry_after) == (
        "ENGINE_UNAVAILABLE",
        {"engine": "qdrant"},
        1.0,
    )
    assert isinstance(map_error(httpx.ConnectError("refused")), Unavailable)
    missing = map_error(UnexpectedResponse(404, "Not Found", b"", httpx.Headers()), "docs")
    assert isinstance(missing, NotFound)
    assert missing.reason == "COLLECTION_NOT_FOUND"
    assert missing.metadata == {"collection": "collections/docs"}
    exists = map_error(UnexpectedResponse(409, "Conflict", b"", httpx.Headers()), "docs")
    assert isinstance(exists, AlreadyExists)
    busy = map_error(UnexpectedResponse(503, "Unavailable", b"", httpx.Headers()), "docs")
    assert isinstance(busy, Unavailable)
    assert (busy.reason, busy.metadata) == ("ENGINE_UNAVAILABLE", {"engine": "qdrant"})
    assert isinstance(map_error(ValueError("odd")), Internal)


# ---- checks --------------------------------------------------------------------------


def test_check_vector() -> None:
    out: list[FieldViolation] = []
    check_vector([1.0, 2.0, 3.0], 3, "v", out)
    assert out == []
    check_vector([1.0, 2.0], 3, "a", out)
    check_vector([1.0, math.nan, 3.0], 3, "b", out)
    check_vector([math.inf, 1.0, 3.0], 3, "c", out)
    assert [(v.field, v.reason) for v in out] == [
        ("a", "VECTOR_SIZE_MISMATCH"),
        ("b", "VECTOR_NOT_FINITE"),
        ("c", "VECTOR_NOT_FINITE"),
    ]
    assert "value 1" in out[1].description


@pytest.mark.parametrize(
    ("payload", "ok"),
    [
        ({"kind": "a", "rank": 3, "price": 2, "live": True}, True),
        ({"kind": ["a", "b"], "rank": [1, 2]}, True),
        ({"where": {"lon": 1, "lat": 2}, "at": "2024-01-01T00:00:00Z"}, True),
        ({"rank": None, "other": {"anything": [1, "x"]}}, True),
        ({"rank": 1.5}, False),
        ({"rank": True}, False),
        ({"rank": 2.0**70}, False),
        ({"kind": 1}, False),
        ({"price": "1"}, False),
        ({"live": 1}, False),
        ({"where": {"lon": 1}}, False),
        ({"where": {"lon": 1, "lat": 95}}, False),
        ({"at": "not a date"}, False),
        ({"body": ["ok", 3]}, False),
    ],
)
def test_check_payload_types(payload: dict[str, Any], ok: bool) -> None:
    out: list[FieldViolation] = []
    check_payload(normalize_payload(dict(payload), CONFIG), 10, CONFIG, 100, "p", out)
    assert (out == []) is ok, out
    if not ok:
        assert out[0].reason == "PAYLOAD_TYPE_MISMATCH"


def test_payload_size_limit_and_number_normalization() -> None:
    out: list[FieldViolation] = []
    check_payload({}, 101, CONFIG, 100, "p", out)
    assert [(v.field, v.reason) for v in out] == [("p", "PAYLOAD_TOO_LARGE")]
    normalized = normalize_payload({"rank": 3.0, "price": 2.0, "x": [1.0, 1.5]}, CONFIG)
    assert normalized == {"rank": 3, "price": 2.0, "x": [1, 1.5]}
    assert isinstance(normalized["rank"], int)
    assert isinstance(normalized["price"], float)


def test_check_filter_types_and_depth() -> None:
    out: list[FieldViolation] = []
    good = Filter(
        must=(
            FieldCondition("kind", Match("a")),
            FieldCondition("rank", NumberRange(gt=1)),
            FieldCondition("price", NumberRange(gt=1)),
            FieldCondition("undeclared", TextMatch("x")),
            FieldCondition("live", Match(False)),
            Nested("tags", Filter(must=(FieldCondition("kind", NumberRange(gt=1)),))),
        )
    )
    check_filter(good, CONFIG, "filter", out)
    assert out == []
    bad = Filter(
        should=(
            FieldCondition("kind", NumberRange(gt=1)),
            Filter(must_not=(FieldCondition("rank", MatchAny(("a",))),)),
            FieldCondition("live", Match(1)),
            FieldCondition("where", DatetimeRange(gt=datetime(2024, 1, 1, tzinfo=UTC))),
        )
    )
    check_filter(bad, CONFIG, "filter", out)
    assert [v.field for v in out] == [
        "filter.should[0].field",
        "filter.should[1].filter.must_not[0].field",
        "filter.should[2].field",
        "filter.should[3].field",
    ]
    assert {v.reason for v in out} == {"FILTER_TYPE_MISMATCH"}
    deep = Filter(must=(FieldCondition("kind", Match("a")),))
    for _ in range(16):
        deep = Filter(must=(deep,))
    out = []
    check_filter(deep, CONFIG, "filter", out)
    assert [v.reason for v in out] == ["FILTER_TOO_DEEP"]


# ---- conversion ----------------------------------------------------------------------


def test_page_tokens_round_trip_and_refuse_forgeries() -> None:
    for value in (0, 2**64 - 1, "8e1c2bde-5b8e-4d0b-9a4e-5a2f8c1d0e11"):
        assert decode_offset_token(encode_offset_token(value)) == value
    assert decode_name_token(encode_name_token("docs-1")) == "docs-1"
    for forged in ("", "!!!", encode_name_token("docs"), "bjotMQ"):
        with pytest.raises(InvalidArgument) as caught:
            decode_offset_token(forged)
        assert caught.value.reason == "INVALID_PAGE_TOKEN"
    with pytest.raises(InvalidArgument):
        decode_name_token(encode_offset_token(3))


def test_points_from_pb_decodes_vectors_in_bulk() -> None:
    request = pb.UpsertPointsRequest(
        points=[
            pb.Point(id=pb.PointId(num=1), vector=[0.5, -1.25, 3.0]),
            pb.Point(id=pb.PointId(uuid="8E1C2BDE-5B8E-4D0B-9A4E-5A2F8C1D0E11"), vector=[1.0]),
            pb.Point(id=pb.PointId(num=2)),
        ]
    )
    request.points[0].payload.update({"a": 1, "b": [True, "x"], "c": {"d": None}})
    points = points_from_pb(request.points)
    assert [p.id for p in points] == [1, "8e1c2bde-5b8e-4d0b-9a4e-5a2f8c1d0e11", 2]
    assert [list(p.vector) for p in points] == [[0.5, -1.25, 3.0], [1.0], []]
    assert points[0].payload == {"a": 1.0, "b": [True, "x"], "c": {"d": None}}
    assert points[0].payload_bytes == request.points[0].payload.ByteSize()
    assert points[1].payload is None
    same = points_from_pb(
        [pb.Point(id=pb.PointId(num=i), vector=[float(i), math.nan]) for i in range(3)]
    )
    assert same[2].vector[0] == 2.0
    assert math.isnan(same[2].vector[1])


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def test_points_from_pb_reads_vectors_in_any_field_order_and_run() -> None:
    """Vectors come out right whatever the encoding: the id after the vector, unpacked
    floats, a packed run split in two, a long id, and many dimensions (a 2-byte length)."""
    first, rest = struct.pack("<2f", 1.5, 2.5), struct.pack("<f", -3.5)
    odd = (
        b"\x12" + _varint(len(first)) + first  # packed run before the id
        + b"\x0a\x02\x08\x07"  # id 7
        + b"\x15" + rest  # one unpacked float
    )  # fmt: skip
    wide = [float(i) / 7 for i in range(1000)]
    messages = [
        pb.Point.FromString(odd),
        pb.Point(id=pb.PointId(uuid="8e1c2bde-5b8e-4d0b-9a4e-5a2f8c1d0e11"), vector=[0.25] * 9),
        pb.Point(id=pb.PointId(num=2**64 - 1), vector=wide),
    ]
    points = points_from_pb(messages)
    assert [p.id for p in points] == [7, "8e1c2bde-5b8e-4d0b-9a4e-5a2f8c1d0e11", 2**64 - 1]
    assert list(points[0].vector) == [1.5, 2.5, -3.5]
    assert list(points[1].vector) == [0.25] * 9
    assert list(points[2].vector) == [struct.unpack("<f", struct.pack("<f", v))[0] for v in wide]


def test_suspect_vectors_finds_what_check_vector_refuses() -> None:
    views = [
        p.vector
        for p in points_from_pb(
            [pb.Point(vector=[1.0, v]) for v in (0.5, math.nan, -math.inf, 2.0)]
        )
    ]
    assert suspect_vectors(views, 2) == {1, 2}
    assert suspect_vectors([[1.0, 2.0], [math.inf, 0.0]], 2) == {1}
    assert suspect_vectors([], 2) == set()
    # A wrong size anywhere leaves every vector to check_vector.
    assert suspect_vectors([[1.0, 2.0], [1.0]], 2) == {0, 1}
    out: list[FieldViolation] = []
    for index in sorted(suspect_vectors(views, 2)):
        check_vector(views[index], 2, f"points[{index}].vector", out)
    assert [(v.field, v.reason) for v in out] == [
        ("points[1].vector", "VECTOR_NOT_FINITE"),
        ("points[2].vector", "VECTOR_NOT_FINITE"),
    ]
    assert "value 1 of the vector is -inf" in out[1].description


def test_scored_points_to_pb() -> None:
    found = [
        ScoredPoint(id=3, score=0.5, vector=None, payload=None),
        ScoredPoint(
            id="8e1c2bde-5b8e-4d0b-9a4e-5a2f8c1d0e11",
            score=0.25,
            vector=[1.0, 2.0],
            payload={"a": "x"},
        ),
    ]
    response = pb.SearchPointsResponse()
    scored_list_to_pb(found, response.points)
    assert response == pb.SearchPointsResponse(
        points=[
            pb.ScoredPoint(id=pb.PointId(num=3), score=0.5),
            pb.ScoredPoint(
                id=pb.PointId(uuid="8e1c2bde-5b8e-4d0b-9a4e-5a2f8c1d0e11"),
                score=0.25,
                vector=[1.0, 2.0],
                payload=struct_pb2.Struct(fields={"a": struct_pb2.Value(string_value="x")}),
            ),
        ]
    )


def test_filter_from_pb_builds_the_domain_tree() -> None:
    message = pb.Filter(
        must=[
            pb.Condition(field=pb.FieldCondition(key="k", match=pb.Match(boolean=False))),
            pb.Condition(field=pb.FieldCondition(key="r", range=pb.Range(lte=3))),
            pb.Condition(field=pb.FieldCondition(key="a", any=pb.MatchAny(integers=[1, 2]))),
        ],
        must_not=[pb.Condition(has_id=pb.PointIdList(ids=[pb.PointId(num=4)]))],
    )
    assert filter_from_pb(message) == Filter(
        must=(
            FieldCondition("k", Match(False)),
            FieldCondition("r", NumberRange(lte=3.0)),
            FieldCondition("a", MatchAny((1, 2))),
        ),
        must_not=(HasId((4,)),),
    )
