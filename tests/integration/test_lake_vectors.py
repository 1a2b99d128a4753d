"""The Lake's VectorService as a real process over gRPC, on the embedded Qdrant engine
(qdrant-edge) with its shards in a temporary directory: every RPC, every kind of bad
input with its exact status and details, persistence across a restart, background
optimization, and a kill -9 in the middle of a bulk load."""

from __future__ import annotations

import asyncio
import math
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
from datapunk.lake.v1 import vectors_pb2 as pb
from datapunk.lake.v1 import vectors_pb2_grpc as pb_grpc
from datapunk_shared.config import load_settings
from datapunk_shared.errors import DatapunkError
from datapunk_shared.rpc.client import error_from_rpc_error
from google.protobuf import timestamp_pb2

from tests.auth_support import authed_channel, tenant_caller
from tests.support import CONNECTION_LOST_CODES, RunningService, run_service, wait_until

T = TypeVar("T")
DIM = 8
MAX_PAYLOAD = 4096


def _lake_env(vectors: Path, **extra: str) -> dict[str, str]:
    """The Lake's environment: its vector shards under ``vectors``; the other engines
    where the configuration says (the Lake serves vectors whatever their state)."""
    settings = load_settings()
    env = {
        "DATAPUNK_LAKE__VECTORS__PATH": str(vectors),
        "DATAPUNK_LAKE__MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD),
        "DATAPUNK_ENGINES__POSTGRES__URL": settings.engines.postgres.url,
        "DATAPUNK_ENGINES__QUESTDB__HTTP_URL": settings.engines.questdb.http_url,
        "DATAPUNK_ENGINES__QUESTDB__PG_URL": settings.engines.questdb.pg_url,
    }
    env.update(extra)
    return env


def _channel(address: str) -> grpc.aio.Channel:
    """A channel to the Lake whose calls arrive as Nexus forwards those of a client of the
    tenant ``default`` (whose objects keep their plain engine names)."""
    return authed_channel(address, "lake", on_behalf=tenant_caller("default"))


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    tmp = tmp_path_factory.mktemp("lake-vectors")
    with run_service("lake", tmp, _lake_env(tmp / "vectors")) as service:
        yield service


@pytest.fixture
async def stub(lake: RunningService) -> AsyncIterator[Any]:
    async with _channel(lake.address) as channel:
        yield pb_grpc.VectorServiceStub(channel)


async def _fails(code: grpc.StatusCode, call: Awaitable[Any]) -> DatapunkError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return error_from_rpc_error(caught.value)


def _name() -> str:
    return f"c{uuid.uuid4().hex[:12]}"


FIELDS = [
    pb.PayloadField(name="kind", type=pb.PAYLOAD_FIELD_TYPE_KEYWORD),
    pb.PayloadField(name="rank", type=pb.PAYLOAD_FIELD_TYPE_INTEGER),
    pb.PayloadField(name="price", type=pb.PAYLOAD_FIELD_TYPE_FLOAT),
    pb.PayloadField(name="live", type=pb.PAYLOAD_FIELD_TYPE_BOOL),
    pb.PayloadField(name="where", type=pb.PAYLOAD_FIELD_TYPE_GEO),
    pb.PayloadField(name="at", type=pb.PAYLOAD_FIELD_TYPE_DATETIME),
    pb.PayloadField(name="body", type=pb.PAYLOAD_FIELD_TYPE_TEXT),
]


async def _create(stub: Any, name: str, **fields: Any) -> pb.Collection:
    collection = pb.Collection(
        vector_size=fields.pop("vector_size", DIM),
        distance=fields.pop("distance", pb.DISTANCE_COSINE),
        payload_fields=fields.pop("payload_fields", FIELDS),
        **fields,
    )
    response = await stub.CreateCollection(
        pb.CreateCollectionRequest(collection_id=name, collection=collection)
    )
    result: pb.Collection = response.collection
    return result


def _vec(i: int) -> list[float]:
    rng = np.random.default_rng(i)
    return [float(x) for x in rng.normal(size=DIM)]


def _point(i: int | str, payload: dict[str, Any] | None = None, seed: int = 0) -> pb.Point:
    pid = pb.PointId(num=i) if isinstance(i, int) else pb.PointId(uuid=i)
    point = pb.Point(id=pid, vector=_vec(seed or (i if isinstance(i, int) else 7)))
    if payload is not None:
        point.payload.update(payload)
    return point


def _items(i: int) -> dict[str, Any]:
    return {
        "kind": ["a", "b", "c"][i % 3],
        "rank": i,
        "price": i + 0.5,
        "live": i % 2 == 0,
        "where": {"lon": 13.4 + i * 0.01, "lat": 52.5},
        "at": f"2024-01-{i + 1:02d}T00:00:00Z",
        "body": f"item number {i} is {'red' if i % 2 else 'blue'}",
        "tags": [{"name": "t", "weight": i}],
    }


async def _seed(stub: Any, name: str, n: int = 12) -> None:
    await stub.UpsertPoints(
        pb.UpsertPointsRequest(
            collection=f"collections/{name}", points=[_point(i, _items(i)) for i in range(n)]
        )
    )


async def _count(stub: Any, name: str, flt: pb.Filter | None = None) -> int:
    request = pb.CountPointsRequest(collection=f"collections/{name}")
    if flt is not None:
        request.filter.CopyFrom(flt)
    response = await stub.CountPoints(request)
    count: int = response.count
    return count


def _field(key: str, **condition: Any) -> pb.Condition:
    return pb.Condition(field=pb.FieldCondition(key=key, **condition))


# ---- collections ---------------------------------------------------------------------


async def test_collection_lifecycle(stub: Any) -> None:
    name = _name()
    created = await _create(
        stub,
        name,
        description="docs",
        hnsw=pb.HnswConfig(m=8, ef_construct=64, ef=32),
        scalar_quantization=pb.ScalarQuantization(quantile=0.95),
        on_disk=True,
    )
    assert created.name == f"collections/{name}"
    assert created.hnsw.m == 8
    assert created.hnsw.ef == 32
    assert created.hnsw.full_scan_threshold_kb == 10000
    assert created.WhichOneof("quantization") == "scalar_quantization"
    assert created.create_time.seconds > 0
    got = (await stub.GetCollection(pb.GetCollectionRequest(name=created.name))).collection
    assert got == created

    stats = (
        await stub.GetCollectionStats(pb.GetCollectionStatsRequest(name=f"{created.name}/stats"))
    ).stats
    assert stats.points_count == 0
    assert stats.segments_count >= 1
    assert stats.disk_bytes > 0
    assert set(stats.indexed_payload_points) == {f.name for f in FIELDS}

    error = await _fails(
        grpc.StatusCode.ALREADY_EXISTS,
        stub.CreateCollection(
            pb.CreateCollectionRequest(
                collection_id=name,
                collection=pb.Collection(vector_size=4, distance=pb.DISTANCE_DOT),
            )
        ),
    )
    assert error.reason == "COLLECTION_ALREADY_EXISTS"
    assert error.metadata["collection"] == created.name

    await stub.DeleteCollection(pb.DeleteCollectionRequest(name=created.name))
    error = await _fails(
        grpc.StatusCode.NOT_FOUND, stub.GetCollection(pb.GetCollectionRequest(name=created.name))
    )
    assert error.reason == "COLLECTION_NOT_FOUND"
    assert error.metadata["collection"] == created.name
    await _fails(
        grpc.StatusCode.NOT_FOUND,
        stub.DeleteCollection(pb.DeleteCollectionRequest(name=created.name)),
    )


async def test_list_collections_paginates(stub: Any) -> None:
    prefix = f"l{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-{i}" for i in range(5)]
    for name in names:
        await _create(stub, name, payload_fields=[], binary_quantization=pb.BinaryQuantization())
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        response = await stub.ListCollections(
            pb.ListCollectionsRequest(page_size=2, page_token=token)
        )
        pages += 1
        assert len(response.collections) <= 2
        seen.extend(c.name for c in response.collections)
        token = response.next_page_token
        if not token:
            break
    mine = [s for s in seen if s.startswith(f"collections/{prefix}")]
    assert mine == [f"collections/{n}" for n in names]
    assert seen == sorted(seen)
    assert pages >= 3
    error = await _fails(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.ListCollections(pb.ListCollectionsRequest(page_token="garbage!")),
    )
    assert error.reason == "INVALID_PAGE_TOKEN"
    for name in names:
        await stub.DeleteCollection(pb.DeleteCollectionRequest(name=f"collections/{name}"))


async def test_collection_contract_is_enforced(stub: Any) -> None:
    error = await _fails(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.CreateCollection(
            pb.CreateCollectionRequest(
                collection_id="Bad Name",
                collection=pb.Collection(
                    vector_size=0,
                    distance=pb.DISTANCE_UNSPECIFIED,
                    hnsw=pb.HnswConfig(m=2),
                    payload_fields=[
                        pb.PayloadField(name="x", type=pb.PAYLOAD_FIELD_TYPE_KEYWORD),
                        pb.PayloadField(name="x", type=pb.PAYLOAD_FIELD_TYPE_INTEGER),
                    ],
                ),
            )
        ),
    )
    fields = {v.field for v in error.violations}  # type: ignore[attr-defined]
    assert {
        "collection_id",
        "collection.vector_size",
        "collection.distance",
        "collection.hnsw.m",
        "collection",
    } <= fields


# ---- points --------------------------------------------------------------------------


async def test_upsert_get_search_and_idempotence(stub: Any) -> None:
    name = _name()
    await _create(stub, name)
    coll = f"collections/{name}"
    await _seed(stub, name)
    uid = str(uuid.uuid4())
    await stub.UpsertPoints(
        pb.UpsertPointsRequest(collection=coll, points=[_point(uid, {"kind": "u"}, seed=99)])
    )
    # Writing the same ids again replaces them: the count does not change.
    again = await stub.UpsertPoints(
        pb.UpsertPointsRequest(collection=coll, points=[_point(i, _items(i)) for i in range(12)])
    )
    assert again.upserted_count == 12
    assert await _count(stub, name) == 13

    got = await stub.GetPoints(
        pb.GetPointsRequest(
            collection=coll,
            ids=[pb.PointId(num=3), pb.PointId(num=999), pb.PointId(uuid=uid.upper())],
            with_payload=True,
            with_vector=True,
        )
    )
    assert [p.id for p in got.points] == [pb.PointId(num=3), pb.PointId(uuid=uid)]
    three = got.points[0]
    assert three.payload["kind"] == "a"
    assert three.payload["rank"] == 3
    norm = math.sqrt(sum(x * x for x in _vec(3)))
    assert list(three.vector) == pytest.approx([x / norm for x in _vec(3)], rel=1e-5)

    found = await stub.SearchPoints(
        pb.SearchPointsRequest(
            collection=coll, query=pb.VectorQuery(vector=_vec(5), limit=3, with_payload=True)
        )
    )
    assert found.points[0].id.num == 5
    assert found.points[0].score == pytest.approx(1.0, abs=1e-5)
    assert found.points[0].payload["kind"] == "c"
    assert len(found.points) == 3
    assert not found.points[0].vector

    bare = await stub.SearchPoints(
        pb.SearchPointsRequest(
            collection=coll,
            query=pb.VectorQuery(vector=_vec(5), limit=20, score_threshold=0.99, with_vector=True),
        )
    )
    assert [p.id.num for p in bare.points] == [5]
    assert not bare.points[0].HasField("payload")
    assert len(bare.points[0].vector) == DIM

    exact = await stub.SearchPoints(
        pb.SearchPointsRequest(
            collection=coll, query=pb.VectorQuery(vector=_vec(5), limit=2, exact=True, offset=1)
        )
    )
    assert exact.points[0].id.num != 5

    batch = await stub.BatchSearchPoints(
        pb.BatchSearchPointsRequest(
            collection=coll,
            queries=[
                pb.VectorQuery(vector=_vec(1), limit=1),
                pb.VectorQuery(vector=_vec(2), limit=1, hnsw_ef=16),
            ],
        )
    )
    assert [r.points[0].id.num for r in batch.results] == [1, 2]


async def test_euclid_and_dot_collections(stub: Any) -> None:
    for distance in (pb.DISTANCE_EUCLID, pb.DISTANCE_DOT):
        name = _name()
        await _create(stub, name, distance=distance, payload_fields=[])
        await _seed(stub, name, 5)
        found = await stub.SearchPoints(
            pb.SearchPointsRequest(
                collection=f"collections/{name}", query=pb.VectorQuery(vector=_vec(2), limit=1)
            )
        )
        assert found.points[0].id.num == 2
        if distance == pb.DISTANCE_EUCLID:
            assert found.points[0].score == pytest.approx(0.0, abs=1e-4)


async def test_filters(stub: Any) -> None:
    name = _name()
    await _create(stub, name)
    await _seed(stub, name)

    def ts(day: int) -> timestamp_pb2.Timestamp:
        stamp = timestamp_pb2.Timestamp()
        stamp.FromJsonString(f"2024-01-{day:02d}T00:00:00Z")
        return stamp

    cases: list[tuple[pb.Filter, int]] = [
        (pb.Filter(must=[_field("kind", match=pb.Match(keyword="a"))]), 4),
        (pb.Filter(must=[_field("rank", match=pb.Match(integer=7))]), 1),
        (pb.Filter(must=[_field("live", match=pb.Match(boolean=True))]), 6),
        (pb.Filter(must=[_field("kind", any=pb.MatchAny(keywords=["a", "b"]))]), 8),
        (pb.Filter(must=[_field("rank", any=pb.MatchAny(integers=[1, 2, 50]))]), 2),
        (pb.Filter(must=[_field("price", range=pb.Range(gte=2, lt=5))]), 3),
        (pb.Filter(must=[_field("rank", range=pb.Range(gt=9))]), 2),
        (
            pb.Filter(must=[_field("at", datetime_range=pb.DatetimeRange(gte=ts(3), lte=ts(5)))]),
            3,
        ),
        (
            pb.Filter(
                must=[
                    _field(
                        "where",
                        geo_radius=pb.GeoRadius(
                            center=pb.GeoPoint(lon=13.4, lat=52.5), radius_meters=1500
                        ),
                    )
                ]
            ),
            3,  # 0.01 degrees of longitude at 52.5 N is about 680 m
        ),
        (
            pb.Filter(
                must=[
                    _field(
                        "where",
                        geo_bounding_box=pb.GeoBoundingBox(
                            top_left=pb.GeoPoint(lon=13.435, lat=53),
                            bottom_right=pb.GeoPoint(lon=13.5, lat=52),
                        ),
                    )
                ]
            ),
            6,
        ),
        (pb.Filter(must=[_field("body", text="red")]), 6),
        (
            pb.Filter(
                must=[
                    pb.Condition(
                        nested=pb.NestedCondition(
                            key="tags",
                            filter=pb.Filter(must=[_field("weight", range=pb.Range(lt=3))]),
                        )
                    )
                ]
            ),
            3,
        ),
        (pb.Filter(must_not=[_field("kind", match=pb.Match(keyword="a"))]), 8),
        (
            pb.Filter(
                should=[
                    _field("rank", match=pb.Match(integer=1)),
                    _field("rank", match=pb.Match(integer=2)),
                ]
            ),
            2,
        ),
        (
            pb.Filter(
                must=[
                    pb.Condition(
                        filter=pb.Filter(
                            should=[
                                _field("kind", match=pb.Match(keyword="a")),
                                _field("kind", match=pb.Match(keyword="b")),
                            ]
                        )
                    )
                ],
                must_not=[_field("live", match=pb.Match(boolean=True))],
            ),
            4,
        ),
        (
            pb.Filter(
                must=[
                    pb.Condition(
                        has_id=pb.PointIdList(ids=[pb.PointId(num=1), pb.PointId(num=500)])
                    )
                ]
            ),
            1,
        ),
        (pb.Filter(), 12),
    ]
    for flt, expected in cases:
        assert await _count(stub, name, flt) == expected, flt
        found = await stub.SearchPoints(
            pb.SearchPointsRequest(
                collection=f"collections/{name}",
                query=pb.VectorQuery(vector=_vec(1), limit=20, filter=flt),
            )
        )
        assert len(found.points) == expected, flt


async def test_scroll_paginates_in_id_order(stub: Any) -> None:
    name = _name()
    await _create(stub, name)
    await _seed(stub, name, 25)
    uid = str(uuid.uuid4())
    await stub.UpsertPoints(
        pb.UpsertPointsRequest(collection=f"collections/{name}", points=[_point(uid, {})])
    )
    ids: list[pb.PointId] = []
    token = ""
    while True:
        page = await stub.ScrollPoints(
            pb.ScrollPointsRequest(
                collection=f"collections/{name}", page_size=7, page_token=token, with_payload=True
            )
        )
        assert len(page.points) <= 7
        ids.extend(p.id for p in page.points)
        token = page.next_page_token
        if not token:
            break
    assert ids == [pb.PointId(num=i) for i in range(25)] + [pb.PointId(uuid=uid)]

    filtered = await stub.ScrollPoints(
        pb.ScrollPointsRequest(
            collection=f"collections/{name}",
            filter=pb.Filter(must=[_field("kind", match=pb.Match(keyword="b"))]),
            page_size=100,
            with_vector=True,
        )
    )
    assert [p.id.num for p in filtered.points] == list(range(1, 25, 3))
    assert all(len(p.vector) == DIM for p in filtered.points)


async def test_delete_and_set_payload(stub: Any) -> None:
    name = _name()
    coll = f"collections/{name}"
    await _create(stub, name)
    await _seed(stub, name)
    await stub.DeletePoints(
        pb.DeletePointsRequest(
            collection=coll,
            points=pb.PointSelector(
                ids=pb.PointIdList(ids=[pb.PointId(num=0), pb.PointId(num=77)])
            ),
        )
    )
    assert await _count(stub, name) == 11
    await stub.DeletePoints(
        pb.DeletePointsRequest(
            collection=coll,
            points=pb.PointSelector(
                filter=pb.Filter(must=[_field("kind", match=pb.Match(keyword="b"))])
            ),
        )
    )
    assert await _count(stub, name) == 7

    request = pb.SetPayloadRequest(
        collection=coll, points=pb.PointSelector(ids=pb.PointIdList(ids=[pb.PointId(num=3)]))
    )
    request.payload.update({"kind": "z", "extra": {"deep": True}})
    await stub.SetPayload(request)
    request = pb.SetPayloadRequest(
        collection=coll,
        points=pb.PointSelector(filter=pb.Filter(must=[_field("rank", range=pb.Range(gte=9))])),
    )
    request.payload.update({"kind": "late"})
    await stub.SetPayload(request)
    got = await stub.GetPoints(
        pb.GetPointsRequest(
            collection=coll, ids=[pb.PointId(num=3), pb.PointId(num=9)], with_payload=True
        )
    )
    three, nine = got.points
    assert three.payload["kind"] == "z"
    assert three.payload["extra"]["deep"] is True
    assert three.payload["rank"] == 3  # other keys stay
    assert nine.payload["kind"] == "late"
    assert (
        await _count(stub, name, pb.Filter(must=[_field("kind", match=pb.Match(keyword="late"))]))
        == 2
    )


async def test_import_points_acknowledges_every_batch(stub: Any) -> None:
    name = _name()
    coll = f"collections/{name}"
    await _create(stub, name, payload_fields=[])

    async def batches() -> AsyncIterator[pb.ImportPointsRequest]:
        for seq in range(5):
            yield pb.ImportPointsRequest(
                collection=coll,
                sequence=seq,
                points=[_point(seq * 10 + i, {"seq": seq}) for i in range(10)],
            )

    acks = [ack async for ack in stub.ImportPoints(batches())]
    assert [a.sequence for a in acks] == list(range(5))
    assert [a.total_upserted for a in acks] == [10, 20, 30, 40, 50]
    assert await _count(stub, name) == 50

    other = _name()
    await _create(stub, other, payload_fields=[])

    async def switching() -> AsyncIterator[pb.ImportPointsRequest]:
        yield pb.ImportPointsRequest(collection=coll, sequence=1, points=[_point(100)])
        yield pb.ImportPointsRequest(
            collection=f"collections/{other}", sequence=2, points=[_point(101)]
        )

    call = stub.ImportPoints(switching())
    first = await call.read()
    assert first.sequence == 1
    error = await _fails(grpc.StatusCode.INVALID_ARGUMENT, call.read())
    assert error.violations[0].reason == "COLLECTION_CHANGED"  # type: ignore[attr-defined]


# ---- bad input -----------------------------------------------------------------------


async def test_bad_vectors_refuse_the_whole_batch(stub: Any) -> None:
    name = _name()
    coll = f"collections/{name}"
    await _create(stub, name, payload_fields=[])
    good = _point(1)
    short = pb.Point(id=pb.PointId(num=2), vector=[1.0, 2.0])
    nan = pb.Point(id=pb.PointId(num=3), vector=[1.0] * (DIM - 1) + [float("nan")])
    inf = pb.Point(id=pb.PointId(num=4), vector=[float("-inf")] + [1.0] * (DIM - 1))
    error = await _fails(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.UpsertPoints(pb.UpsertPointsRequest(collection=coll, points=[good, short, nan, inf])),
    )
    by_field = {v.field: v.reason for v in error.violations}  # type: ignore[attr-defined]
    assert by_field == {
        "points[1].vector": "VECTOR_SIZE_MISMATCH",
        "points[2].vector": "VECTOR_NOT_FINITE",
        "points[3].vector": "VECTOR_NOT_FINITE",
    }
    assert error.reason == "VECTOR_SIZE_MISMATCH"
    assert await _count(stub, name) == 0  # nothing of the batch was written

    error = await _fails(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.UpsertPoints(pb.UpsertPointsRequest(collection=coll, points=[good, _point(1)])),
    )
    assert error.violations[0].reason == "DUPLICATE_POINT_ID"  # type: ignore[attr-defined]

    error = await _fails(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.SearchPoints(
            pb.SearchPointsRequest(collection=coll, query=pb.VectorQuery(vector=[1.0] * (DIM + 1)))
        ),
    )
    assert error.violations[0].field == "query.vector"  # type: ignore[attr-defined]
    assert error.violations[0].reason == "VECTOR_SIZE_MISMATCH"  # type: ignore[attr-defined]
    error = await _fails(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.BatchSearchPoints(
            pb.BatchSearchPointsRequest(
                collection=coll,
                queries=[
                    pb.VectorQuery(vector=[1.0] * DIM),
                    pb.VectorQuery(vector=[float("nan")] * DIM),
                ],
            )
        ),
    )
    assert error.violations[0].field == "queries[1].vector"  # type: ignore[attr-defined]

    error = await _fails(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.UpsertPoints(
            pb.UpsertPointsRequest(
                collection=coll,
                points=[pb.Point(id=pb.PointId(uuid="not-a-uuid"), vector=[1.0] * DIM)],
            )
        ),
    )
    assert error.violations[0].field == "points[0].id.uuid"  # type: ignore[attr-defined]


async def test_unknown_collection_is_not_found_everywhere(stub: Any) -> None:
    coll = "collections/nope-" + uuid.uuid4().hex[:8]
    calls = [
        stub.UpsertPoints(pb.UpsertPointsRequest(collection=coll, points=[_point(1)])),
        stub.SearchPoints(
            pb.SearchPointsRequest(collection=coll, query=pb.VectorQuery(vector=[1.0]))
        ),
        stub.GetPoints(pb.GetPointsRequest(collection=coll, ids=[pb.PointId(num=1)])),
        stub.CountPoints(pb.CountPointsRequest(collection=coll)),
        stub.ScrollPoints(pb.ScrollPointsRequest(collection=coll)),
        stub.GetCollectionStats(pb.GetCollectionStatsRequest(name=coll + "/stats")),
        stub.OptimizeCollection(pb.OptimizeCollectionRequest(name=coll)),
        stub.DeletePoints(
            pb.DeletePointsRequest(
                collection=coll,
                points=pb.PointSelector(ids=pb.PointIdList(ids=[pb.PointId(num=1)])),
            )
        ),
    ]
    for call in calls:
        error = await _fails(grpc.StatusCode.NOT_FOUND, call)
        assert error.reason == "COLLECTION_NOT_FOUND"
        assert error.metadata == {"collection": coll}


async def test_invalid_filters(stub: Any) -> None:
    name = _name()
    coll = f"collections/{name}"
    await _create(stub, name)

    async def count_error(flt: pb.Filter) -> DatapunkError:
        return await _fails(
            grpc.StatusCode.INVALID_ARGUMENT,
            stub.CountPoints(pb.CountPointsRequest(collection=coll, filter=flt)),
        )

    error = await count_error(pb.Filter(must=[_field("price", range=pb.Range())]))
    assert error.reason == "CONTRACT_VIOLATION"
    assert error.violations[0].field == "filter.must[0].field.range"  # type: ignore[attr-defined]

    error = await count_error(pb.Filter(must=[pb.Condition()]))
    assert error.violations[0].field == "filter.must[0].kind"  # type: ignore[attr-defined]

    error = await count_error(pb.Filter(must=[_field("bad key!", match=pb.Match(keyword="x"))]))
    assert error.violations[0].field == "filter.must[0].field.key"  # type: ignore[attr-defined]

    error = await count_error(pb.Filter(should=[_field("kind", range=pb.Range(gt=1))]))
    assert error.reason == "FILTER_TYPE_MISMATCH"
    assert error.violations[0].field == "filter.should[0].field"  # type: ignore[attr-defined]

    error = await count_error(pb.Filter(must=[_field("rank", match=pb.Match(keyword="x"))]))
    assert error.reason == "FILTER_TYPE_MISMATCH"

    deep = pb.Filter(must=[_field("kind", match=pb.Match(keyword="a"))])
    for _ in range(20):
        deep = pb.Filter(must=[pb.Condition(filter=deep)])
    error = await count_error(deep)
    assert error.reason == "FILTER_TOO_DEEP"

    error = await _fails(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.ScrollPoints(pb.ScrollPointsRequest(collection=coll, page_token="bm90LWEtdG9rZW4")),
    )
    assert error.reason == "INVALID_PAGE_TOKEN"


async def test_bad_payloads(stub: Any) -> None:
    name = _name()
    coll = f"collections/{name}"
    await _create(stub, name)
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"rank": "seven"}, "points[0].payload.rank", "PAYLOAD_TYPE_MISMATCH"),
        ({"rank": 1.5}, "points[0].payload.rank", "PAYLOAD_TYPE_MISMATCH"),
        ({"kind": 3}, "points[0].payload.kind", "PAYLOAD_TYPE_MISMATCH"),
        ({"live": "yes"}, "points[0].payload.live", "PAYLOAD_TYPE_MISMATCH"),
        ({"where": {"lon": 200, "lat": 0}}, "points[0].payload.where", "PAYLOAD_TYPE_MISMATCH"),
        ({"at": "yesterday"}, "points[0].payload.at", "PAYLOAD_TYPE_MISMATCH"),
        ({"blob": "x" * (MAX_PAYLOAD + 1)}, "points[0].payload", "PAYLOAD_TOO_LARGE"),
    ]
    for payload, field, reason in cases:
        error = await _fails(
            grpc.StatusCode.INVALID_ARGUMENT,
            stub.UpsertPoints(pb.UpsertPointsRequest(collection=coll, points=[_point(1, payload)])),
        )
        assert [(v.field, v.reason) for v in error.violations] == [(field, reason)], payload  # type: ignore[attr-defined]
    request = pb.SetPayloadRequest(
        collection=coll, points=pb.PointSelector(ids=pb.PointIdList(ids=[pb.PointId(num=1)]))
    )
    request.payload.update({"blob": "x" * (MAX_PAYLOAD + 1)})
    error = await _fails(grpc.StatusCode.INVALID_ARGUMENT, stub.SetPayload(request))
    assert error.reason == "PAYLOAD_TOO_LARGE"
    assert error.violations[0].field == "payload"  # type: ignore[attr-defined]
    assert await _count(stub, name) == 0


# ---- optimization, restart, crash ----------------------------------------------------


def _clustered(n: int, seed: int = 1) -> np.ndarray[Any, np.dtype[np.float32]]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(16, DIM))
    data = centers[rng.integers(0, 16, n)] + 0.2 * rng.normal(size=(n, DIM))
    return data.astype(np.float32)


async def _import(stub: Any, coll: str, data: Any, start: int, batch: int) -> AsyncIterator[int]:
    async def batches() -> AsyncIterator[pb.ImportPointsRequest]:
        for offset in range(0, len(data), batch):
            yield pb.ImportPointsRequest(
                collection=coll,
                sequence=offset,
                points=[
                    pb.Point(id=pb.PointId(num=start + offset + i), vector=row)
                    for i, row in enumerate(data[offset : offset + batch].tolist())
                ],
            )

    async for ack in stub.ImportPoints(batches()):
        yield ack.sequence + ack.upserted_count


async def test_optimize_while_writing_and_restart_keeps_everything(tmp_path: Path) -> None:
    env = _lake_env(tmp_path / "vectors", DATAPUNK_LAKE__VECTORS__AUTO_OPTIMIZE="false")
    data = _clustered(3000)
    name = _name()
    coll = f"collections/{name}"
    with run_service("lake", tmp_path, env) as lake:
        async with _channel(lake.address) as channel:
            stub = pb_grpc.VectorServiceStub(channel)
            await _create(
                stub, name, payload_fields=[], hnsw=pb.HnswConfig(full_scan_threshold_kb=1)
            )
            async for _ in _import(stub, coll, data[:2000], 0, 500):
                pass
            optimizing = asyncio.ensure_future(
                stub.OptimizeCollection(pb.OptimizeCollectionRequest(name=coll))
            )
            # Writes and reads go on while the child process builds the index.
            async for _ in _import(stub, coll, data[2000:], 2000, 100):
                pass
            found = await stub.SearchPoints(
                pb.SearchPointsRequest(collection=coll, query=pb.VectorQuery(vector=data[2500]))
            )
            assert found.points[0].id.num == 2500
            stats = (await optimizing).stats
            assert stats.points_count == 3000
            assert stats.indexed_vectors_count >= 2000
            assert await _count(stub, name) == 3000
            found = await stub.SearchPoints(
                pb.SearchPointsRequest(collection=coll, query=pb.VectorQuery(vector=data[2999]))
            )
            assert found.points[0].id.num == 2999
    with run_service("lake", tmp_path, env) as lake:
        async with _channel(lake.address) as channel:
            stub = pb_grpc.VectorServiceStub(channel)
            got = (await stub.GetCollection(pb.GetCollectionRequest(name=coll))).collection
            assert got.hnsw.full_scan_threshold_kb == 1
            assert await _count(stub, name) == 3000
            for i in (0, 1999, 2000, 2999):
                found = await stub.SearchPoints(
                    pb.SearchPointsRequest(collection=coll, query=pb.VectorQuery(vector=data[i]))
                )
                assert found.points[0].id.num == i


async def test_background_optimizer_indexes_after_writes_pause(tmp_path: Path) -> None:
    env = _lake_env(
        tmp_path / "vectors",
        DATAPUNK_LAKE__VECTORS__OPTIMIZE_MIN_UNINDEXED="1000",
        DATAPUNK_LAKE__VECTORS__OPTIMIZE_IDLE_SECONDS="0.5",
    )
    name = _name()
    coll = f"collections/{name}"
    with run_service("lake", tmp_path, env) as lake:
        async with _channel(lake.address) as channel:
            stub = pb_grpc.VectorServiceStub(channel)
            await _create(
                stub, name, payload_fields=[], hnsw=pb.HnswConfig(full_scan_threshold_kb=1)
            )
            async for _ in _import(stub, coll, _clustered(2000), 0, 500):
                pass

            async def indexed() -> int:
                stats = await stub.GetCollectionStats(
                    pb.GetCollectionStatsRequest(name=f"{coll}/stats")
                )
                count: int = stats.stats.indexed_vectors_count
                return count

            for _ in range(600):
                if await indexed() == 2000:
                    break
                await asyncio.sleep(0.1)
            assert await indexed() == 2000
            assert await _count(stub, name) == 2000


async def test_kill_9_during_bulk_load_loses_no_acknowledged_point(tmp_path: Path) -> None:
    """Acknowledged = its batch's ImportPointsResponse arrived. After kill -9 and a
    restart every acknowledged point is there, and no id is stored twice."""
    env = _lake_env(tmp_path / "vectors")
    data = _clustered(50_000, seed=3)
    name = _name()
    coll = f"collections/{name}"
    acknowledged = 0
    with run_service("lake", tmp_path, env) as lake:
        async with _channel(lake.address) as channel:
            stub = pb_grpc.VectorServiceStub(channel)
            await _create(stub, name, payload_fields=[])
            code = grpc.StatusCode.OK
            try:
                async for high in _import(stub, coll, data, 0, 250):
                    acknowledged = high
                    if acknowledged >= 10_000 and lake.process.poll() is None:
                        lake.process.send_signal(signal.SIGKILL)
            except grpc.aio.AioRpcError as error:
                code = error.code()
            assert code in CONNECTION_LOST_CODES
        lake.process.wait(10)
    assert 10_000 <= acknowledged < 50_000
    with run_service("lake", tmp_path, env) as lake:
        async with _channel(lake.address) as channel:
            stub = pb_grpc.VectorServiceStub(channel)
            stored = await _count(stub, name)
            ids: list[int] = []
            token = ""
            while True:
                page = await stub.ScrollPoints(
                    pb.ScrollPointsRequest(collection=coll, page_size=10_000, page_token=token)
                )
                ids.extend(p.id.num for p in page.points)
                token = page.next_page_token
                if not token:
                    break
            assert len(ids) == len(set(ids)) == stored
            assert set(range(acknowledged)) <= set(ids)
            assert stored < 50_000 + 1
            got = await stub.GetPoints(
                pb.GetPointsRequest(
                    collection=coll, ids=[pb.PointId(num=acknowledged - 1)], with_vector=True
                )
            )
            norm = float(np.linalg.norm(data[acknowledged - 1]))
            assert list(got.points[0].vector) == pytest.approx(
                (data[acknowledged - 1] / norm).tolist(), rel=1e-4, abs=1e-6
            )
        wait_until(lambda: lake.process.poll() is None)
