"""The Lake's SpatialService against the real PostgreSQL + PostGIS: a real ``datapunk-lake``
process (or, where a test needs to break the engine, an in-process grpc.aio server with the
real servicer and interceptor), real gRPC calls, exact statuses and details.

The engine address comes from ``load_settings()`` (``engines.postgres.url``)."""

from __future__ import annotations

import contextlib
import json
import signal
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from datapunk.lake.v1 import spatial_pb2, spatial_pb2_grpc
from datapunk_lake.spatial.postgis import (
    _NEAREST,
    _NEAREST_FIRST,
    _WITHIN,
    _WITHIN_FIRST,
    FEATURE_SCHEMA,
    PostgisSpatialStore,
    _sql,
)
from datapunk_lake.spatial.servicer import SpatialServicer
from datapunk_shared.config import load_settings
from datapunk_shared.errors import DatapunkError
from datapunk_shared.rpc.client import error_from_rpc_error
from datapunk_shared.rpc.interceptor import DatapunkServerInterceptor
from datapunk_shared.rpc.server import create_server
from psycopg_pool import AsyncConnectionPool

from tests.auth_support import authed_channel, authed_sync_channel, tenant_caller
from tests.support import CONNECTION_LOST_CODES, RunningService, free_port, run_service, wait_until

MAX_PAYLOAD = 4096
Stub = Any  # the generated stubs are untyped


@pytest.fixture(scope="module")
def pg_url() -> str:
    return load_settings().engines.postgres.url


def _lake_env(pg_url: str) -> dict[str, str]:
    questdb = load_settings().engines.questdb
    return {
        "DATAPUNK_ENGINES__POSTGRES__URL": pg_url,
        "DATAPUNK_ENGINES__QUESTDB__HTTP_URL": questdb.http_url,
        "DATAPUNK_ENGINES__QUESTDB__PG_URL": questdb.pg_url,
        "DATAPUNK_LAKE__MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD),
    }


def _channel(address: str) -> grpc.aio.Channel:
    """A channel to the Lake whose calls arrive as Nexus forwards those of a client of the
    tenant ``default`` (whose objects keep their plain engine names)."""
    return authed_channel(address, "lake", on_behalf=tenant_caller("default"))


def _sync_channel(address: str) -> grpc.Channel:
    """``_channel`` for synchronous code."""
    return authed_sync_channel(address, "lake", on_behalf=tenant_caller("default"))


def _wait_for_schema(address: str) -> None:
    """The Lake applies its migrations once PostgreSQL answers; wait for that."""

    def ready() -> bool:
        with _sync_channel(address) as channel:
            stub = spatial_pb2_grpc.SpatialServiceStub(channel)
            try:
                stub.ListLayers(spatial_pb2.ListLayersRequest(page_size=1), timeout=5)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    return False
                raise
            return True

    wait_until(ready, timeout=30, interval=0.2)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[RunningService]:
    with run_service("lake", tmp_path_factory.mktemp("lake"), _lake_env(pg_url)) as service:
        _wait_for_schema(service.address)
        yield service


@pytest.fixture
async def stub(lake: RunningService) -> AsyncIterator[Stub]:
    async with _channel(lake.address) as channel:
        yield spatial_pb2_grpc.SpatialServiceStub(channel)


@pytest.fixture
async def layer(stub: Stub) -> AsyncIterator[str]:
    """A fresh layer's resource name, deleted afterwards."""
    layer_id = f"t_{uuid.uuid4().hex[:12]}"
    await stub.CreateLayer(spatial_pb2.CreateLayerRequest(layer_id=layer_id))
    yield f"layers/{layer_id}"
    with contextlib.suppress(grpc.aio.AioRpcError):  # the test may have deleted it
        await stub.DeleteLayer(spatial_pb2.DeleteLayerRequest(name=f"layers/{layer_id}"))


def point(lon: float, lat: float) -> str:
    return json.dumps({"type": "Point", "coordinates": [lon, lat]})


def feature(fid: str, geometry: str, **properties: Any) -> spatial_pb2.Feature:
    return spatial_pb2.Feature(id=fid, geometry=geometry, properties=json.dumps(properties))


async def failure(call: Any) -> tuple[grpc.StatusCode, DatapunkError]:
    """Await ``call``, which must fail; its code and the decoded error with details."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), error_from_rpc_error(caught.value)


async def upsert(stub: Stub, parent: str, features: Sequence[spatial_pb2.Feature]) -> int:
    response = await stub.UpsertFeatures(
        spatial_pb2.UpsertFeaturesRequest(parent=parent, features=features)
    )
    count: int = response.written_count
    return count


async def all_features(stub: Stub, parent: str, page_size: int = 1000) -> list[Any]:
    features: list[Any] = []
    token = ""
    while True:
        page = await stub.ListFeatures(
            spatial_pb2.ListFeaturesRequest(parent=parent, page_size=page_size, page_token=token)
        )
        features.extend(page.features)
        token = page.next_page_token
        if not token:
            return features


# -- layers ------------------------------------------------------------------------------


async def test_layer_create_get_list_delete(stub: Stub) -> None:
    prefix = f"l{uuid.uuid4().hex[:8]}"
    ids = [f"{prefix}-{n}" for n in range(3)]
    for layer_id in ids:
        created = await stub.CreateLayer(
            spatial_pb2.CreateLayerRequest(
                layer_id=layer_id, layer=spatial_pb2.Layer(description=f"layer {layer_id}")
            )
        )
        assert created.layer.name == f"layers/{layer_id}"
        assert created.layer.create_time.seconds > 0
    got = (await stub.GetLayer(spatial_pb2.GetLayerRequest(name=f"layers/{ids[1]}"))).layer
    assert got.description == f"layer {ids[1]}"
    assert got.feature_count == 0

    code, error = await failure(stub.CreateLayer(spatial_pb2.CreateLayerRequest(layer_id=ids[0])))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert error.reason == "LAYER_ALREADY_EXISTS"
    assert error.metadata == {"layer": f"layers/{ids[0]}"}

    # Pages of one: every layer exactly once, in name order.
    names: list[str] = []
    token = ""
    while True:
        page = await stub.ListLayers(spatial_pb2.ListLayersRequest(page_size=1, page_token=token))
        assert len(page.layers) <= 1
        names.extend(layer.name for layer in page.layers)
        token = page.next_page_token
        if not token:
            break
    assert names == sorted(set(names))
    assert [n for n in names if n.startswith(f"layers/{prefix}")] == [f"layers/{i}" for i in ids]

    for layer_id in ids:
        await stub.DeleteLayer(spatial_pb2.DeleteLayerRequest(name=f"layers/{layer_id}"))
    code, error = await failure(stub.GetLayer(spatial_pb2.GetLayerRequest(name=f"layers/{ids[0]}")))
    assert code == grpc.StatusCode.NOT_FOUND
    assert error.reason == "LAYER_NOT_FOUND"
    assert error.metadata == {"layer": f"layers/{ids[0]}"}
    code, error = await failure(
        stub.DeleteLayer(spatial_pb2.DeleteLayerRequest(name=f"layers/{ids[0]}"))
    )
    assert (code, error.reason) == (grpc.StatusCode.NOT_FOUND, "LAYER_NOT_FOUND")


@pytest.mark.parametrize(
    "layer_id", ["", "Upper", "1abc", "a;drop table x", "a" * 51, "ends-", 'q"uote']
)
async def test_bad_layer_ids_break_the_contract(stub: Stub, layer_id: str) -> None:
    code, error = await failure(stub.CreateLayer(spatial_pb2.CreateLayerRequest(layer_id=layer_id)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "CONTRACT_VIOLATION"
    assert isinstance(error, DatapunkError)
    assert [v.field for v in getattr(error, "violations", [])] == ["layer_id"]


async def test_unknown_layer_is_not_found_everywhere(stub: Stub) -> None:
    parent = f"layers/missing_{uuid.uuid4().hex[:8]}"
    calls = [
        stub.UpsertFeatures(
            spatial_pb2.UpsertFeaturesRequest(parent=parent, features=[feature("a", point(0, 0))])
        ),
        stub.GetFeature(spatial_pb2.GetFeatureRequest(name=f"{parent}/features/a")),
        stub.ListFeatures(spatial_pb2.ListFeaturesRequest(parent=parent)),
        stub.DeleteFeature(spatial_pb2.DeleteFeatureRequest(name=f"{parent}/features/a")),
        stub.SearchNearest(
            spatial_pb2.SearchNearestRequest(parent=parent, geometry=point(0, 0), limit=1)
        ),
        stub.SearchWithinDistance(
            spatial_pb2.SearchWithinDistanceRequest(
                parent=parent, geometry=point(0, 0), distance_meters=10
            )
        ),
        stub.SearchIntersecting(
            spatial_pb2.SearchIntersectingRequest(
                parent=parent, bbox=spatial_pb2.BoundingBox(west=0, south=0, east=1, north=1)
            )
        ),
        stub.ComputeDistance(
            spatial_pb2.ComputeDistanceRequest(
                from_feature=f"{parent}/features/a", to_feature=f"{parent}/features/b"
            )
        ),
    ]
    for call in calls:
        code, error = await failure(call)
        assert code == grpc.StatusCode.NOT_FOUND
        assert error.reason == "LAYER_NOT_FOUND"
        assert error.metadata["layer"] == parent


# -- features ----------------------------------------------------------------------------

GEOMETRIES = {
    "p": {"type": "Point", "coordinates": [13.4050, 52.52]},
    "l": {"type": "LineString", "coordinates": [[0, 0], [1, 1], [2, 0.5]]},
    "poly": {
        "type": "Polygon",
        "coordinates": [
            [[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]],
            [[1, 1], [1, 2], [2, 2], [2, 1], [1, 1]],
        ],
    },
    "mp": {"type": "MultiPoint", "coordinates": [[1, 2], [3, 4]]},
    "ml": {"type": "MultiLineString", "coordinates": [[[0, 0], [1, 1]], [[2, 2], [3, 3]]]},
    "mpoly": {
        "type": "MultiPolygon",
        "coordinates": [
            [[[0, 0], [1, 0], [1, 1], [0, 0]]],
            [[[5, 5], [6, 5], [6, 6], [5, 5]]],
        ],
    },
    "exact": {"type": "Point", "coordinates": [0.1, 0.30000000000000004]},
}


async def test_features_round_trip_as_geojson(stub: Stub, layer: str) -> None:
    features = [
        feature(fid, json.dumps(geometry), name=fid, n=i, nested={"a": [1, None, True]})
        for i, (fid, geometry) in enumerate(GEOMETRIES.items())
    ]
    assert await upsert(stub, layer, features) == len(GEOMETRIES)
    for i, (fid, geometry) in enumerate(GEOMETRIES.items()):
        got = (
            await stub.GetFeature(spatial_pb2.GetFeatureRequest(name=f"{layer}/features/{fid}"))
        ).feature
        assert got.id == fid
        assert json.loads(got.geometry) == geometry
        assert json.loads(got.properties) == {"name": fid, "n": i, "nested": {"a": [1, None, True]}}

    # Upsert replaces; an id repeated in one batch: the last wins; empty properties are {}.
    replaced = [feature("p", point(1, 1), v=1), spatial_pb2.Feature(id="p", geometry=point(2, 2))]
    assert await upsert(stub, layer, replaced) == 1
    got = (await stub.GetFeature(spatial_pb2.GetFeatureRequest(name=f"{layer}/features/p"))).feature
    assert json.loads(got.geometry) == {"type": "Point", "coordinates": [2, 2]}
    assert json.loads(got.properties) == {}
    count = (await stub.GetLayer(spatial_pb2.GetLayerRequest(name=layer))).layer.feature_count
    assert count == len(GEOMETRIES)

    await stub.DeleteFeature(spatial_pb2.DeleteFeatureRequest(name=f"{layer}/features/p"))
    code, error = await failure(
        stub.GetFeature(spatial_pb2.GetFeatureRequest(name=f"{layer}/features/p"))
    )
    assert (code, error.reason) == (grpc.StatusCode.NOT_FOUND, "FEATURE_NOT_FOUND")
    assert error.metadata == {"layer": layer, "feature": f"{layer}/features/p"}
    code, error = await failure(
        stub.DeleteFeature(spatial_pb2.DeleteFeatureRequest(name=f"{layer}/features/p"))
    )
    assert (code, error.reason) == (grpc.StatusCode.NOT_FOUND, "FEATURE_NOT_FOUND")


async def test_list_features_pages_are_stable_under_writes(stub: Stub, layer: str) -> None:
    await upsert(stub, layer, [feature(f"f{n:03d}", point(n / 10, 0)) for n in range(0, 50, 2)])
    first = await stub.ListFeatures(spatial_pb2.ListFeaturesRequest(parent=layer, page_size=10))
    assert [f.id for f in first.features] == [f"f{n:03d}" for n in range(0, 20, 2)]
    # Writes before and after the cursor do not shift the next page.
    await upsert(stub, layer, [feature("f001", point(0, 0)), feature("f021", point(0, 0))])
    await stub.DeleteFeature(spatial_pb2.DeleteFeatureRequest(name=f"{layer}/features/f000"))
    second = await stub.ListFeatures(
        spatial_pb2.ListFeaturesRequest(
            parent=layer, page_size=10, page_token=first.next_page_token
        )
    )
    assert [f.id for f in second.features][:3] == ["f020", "f021", "f022"]
    ids = [f.id for f in await all_features(stub, layer, page_size=7)]
    assert ids == sorted(set(ids))
    assert len(ids) == 25 + 2 - 1

    # A token is bound to its query.
    other = f"{layer}x"
    await stub.CreateLayer(spatial_pb2.CreateLayerRequest(layer_id=other.removeprefix("layers/")))
    try:
        code, error = await failure(
            stub.ListFeatures(
                spatial_pb2.ListFeaturesRequest(parent=other, page_token=first.next_page_token)
            )
        )
        assert (code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")
        code, error = await failure(
            stub.ListFeatures(spatial_pb2.ListFeaturesRequest(parent=layer, page_token="bogus!"))
        )
        assert (code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")
        assert [v.field for v in getattr(error, "violations", [])] == ["page_token"]
    finally:
        await stub.DeleteLayer(spatial_pb2.DeleteLayerRequest(name=other))


BOWTIE = {"type": "Polygon", "coordinates": [[[0, 0], [2, 2], [2, 0], [0, 2], [0, 0]]]}

BAD_GEOMETRIES = [
    ("unparseable", '{"type": "Point", "coordinates": [1, 2]', "INVALID_GEOJSON", "not valid JSON"),
    ("not an object", "[1, 2]", "INVALID_GEOJSON", "JSON object"),
    (
        "unknown type",
        '{"type": "Circle", "coordinates": [1, 2]}',
        "UNSUPPORTED_GEOMETRY_TYPE",
        "Circle",
    ),
    ("no coordinates", '{"type": "Point"}', "INVALID_GEOJSON", "needs coordinates"),
    (
        "point nested too deep",
        '{"type": "Point", "coordinates": [[1, 2]]}',
        "INVALID_GEOJSON",
        "position",
    ),
    (
        "polygon missing a level",
        '{"type": "Polygon", "coordinates": [[0, 0], [1, 0], [1, 1], [0, 0]]}',
        "INVALID_GEOJSON",
        "array of positions",
    ),
    (
        "string coordinate",
        '{"type": "Point", "coordinates": ["1", 2]}',
        "INVALID_GEOJSON",
        "numbers",
    ),
    (
        "unclosed ring",
        '{"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}',
        "INVALID_GEOJSON",
        "not closed",
    ),
    (
        "one-point line",
        '{"type": "LineString", "coordinates": [[0, 0]]}',
        "INVALID_GEOJSON",
        "at least 2",
    ),
    (
        "latitude out of range",
        '{"type": "Point", "coordinates": [10, 91]}',
        "COORDINATE_OUT_OF_RANGE",
        "latitude",
    ),
    (
        "longitude out of range",
        '{"type": "LineString", "coordinates": [[0, 0], [180.5, 0]]}',
        "COORDINATE_OUT_OF_RANGE",
        "longitude",
    ),
    ("NaN", '{"type": "Point", "coordinates": [NaN, 0]}', "INVALID_GEOJSON", "NaN"),
    ("overflow", '{"type": "Point", "coordinates": [1e400, 0]}', "INVALID_GEOJSON", "finite"),
    (
        "altitude",
        '{"type": "Point", "coordinates": [1, 2, 3]}',
        "UNSUPPORTED_DIMENSION",
        "altitude",
    ),
    ("self-intersecting polygon", json.dumps(BOWTIE), "INVALID_GEOMETRY", "Self-intersection"),
    (
        "line with one distinct point",
        '{"type": "LineString", "coordinates": [[1, 1], [1, 1]]}',
        "INVALID_GEOMETRY",
        "Too few points",
    ),
]


@pytest.mark.parametrize(
    ("geometry", "reason", "words"),
    [case[1:] for case in BAD_GEOMETRIES],
    ids=[case[0] for case in BAD_GEOMETRIES],
)
async def test_bad_geometry_is_refused_and_nothing_is_written(
    stub: Stub, layer: str, geometry: str, reason: str, words: str
) -> None:
    batch = [feature("good", point(1, 1)), spatial_pb2.Feature(id="bad", geometry=geometry)]
    code, error = await failure(
        stub.UpsertFeatures(spatial_pb2.UpsertFeaturesRequest(parent=layer, features=batch))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == reason
    violations = getattr(error, "violations", [])
    assert [(v.field, v.reason) for v in violations] == [("features[1].geometry", reason)]
    assert words in violations[0].description
    assert await all_features(stub, layer) == []  # the valid feature was not written either


BAD_PROPERTIES = [
    ("not JSON", "{nope", "INVALID_PROPERTIES"),
    ("an array", "[1, 2]", "INVALID_PROPERTIES"),
    ("a string", '"text"', "INVALID_PROPERTIES"),
    ("NUL", '{"a": "\\u0000"}', "INVALID_PROPERTIES"),
    ("too large", json.dumps({"blob": "x" * MAX_PAYLOAD}), "PAYLOAD_TOO_LARGE"),
]


@pytest.mark.parametrize(
    ("properties", "reason"),
    [case[1:] for case in BAD_PROPERTIES],
    ids=[case[0] for case in BAD_PROPERTIES],
)
async def test_bad_properties_are_refused(
    stub: Stub, layer: str, properties: str, reason: str
) -> None:
    batch = [spatial_pb2.Feature(id="x", geometry=point(0, 0), properties=properties)]
    code, error = await failure(
        stub.UpsertFeatures(spatial_pb2.UpsertFeaturesRequest(parent=layer, features=batch))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == reason
    violations = getattr(error, "violations", [])
    assert [(v.field, v.reason) for v in violations] == [("features[0].properties", reason)]
    assert await all_features(stub, layer) == []


async def test_properties_at_the_limit_are_accepted(stub: Stub, layer: str) -> None:
    body = json.dumps({"blob": ""})
    properties = json.dumps({"blob": "x" * (MAX_PAYLOAD - len(body))})
    assert len(properties.encode()) == MAX_PAYLOAD
    batch = [spatial_pb2.Feature(id="x", geometry=point(0, 0), properties=properties)]
    assert await upsert(stub, layer, batch) == 1


async def test_bad_feature_ids_break_the_contract(stub: Stub, layer: str) -> None:
    batch = [feature("ok", point(0, 0)), feature("no/slash", point(0, 0))]
    code, error = await failure(
        stub.UpsertFeatures(spatial_pb2.UpsertFeaturesRequest(parent=layer, features=batch))
    )
    assert (code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "CONTRACT_VIOLATION")
    assert [v.field for v in getattr(error, "violations", [])] == ["features[1].id"]


# -- queries -----------------------------------------------------------------------------

# Points on the equator every 0.001 degree of longitude (about 111.3 m) east of 0,0.
EQUATOR = [(f"e{n:02d}", n * 0.001, 0.0) for n in range(20)]


async def test_search_within_distance_nearest_first_with_pages(stub: Stub, layer: str) -> None:
    await upsert(
        stub, layer, [feature(fid, point(x, y), n=i) for i, (fid, x, y) in enumerate(EQUATOR)]
    )
    request = spatial_pb2.SearchWithinDistanceRequest(
        parent=layer, geometry=point(0.0051, 0), distance_meters=300
    )
    everything = await stub.SearchWithinDistance(request)
    ids = [r.feature.id for r in everything.results]
    # 0.001 degree is 111.3 m here: e08 (0.0029 degree away, 323 m) is out.
    assert ids == ["e05", "e06", "e04", "e07", "e03"]
    distances = [r.distance_meters for r in everything.results]
    assert distances == sorted(distances)
    assert distances[0] == pytest.approx(11.13, abs=0.05)  # 0.0001 deg on the equator
    assert all(d <= 300 for d in distances)
    assert json.loads(everything.results[0].feature.properties) == {"n": 5}
    assert not everything.next_page_token

    paged: list[str] = []
    token = ""
    while True:
        request.page_size, request.page_token = 2, token
        page = await stub.SearchWithinDistance(request)
        paged.extend(r.feature.id for r in page.results)
        token = page.next_page_token
        if not token:
            break
    assert paged == ids

    # A token is bound to its query: another distance is another query.
    first = await stub.SearchWithinDistance(
        spatial_pb2.SearchWithinDistanceRequest(
            parent=layer, geometry=point(0.0051, 0), distance_meters=300, page_size=2
        )
    )
    assert first.next_page_token
    other = spatial_pb2.SearchWithinDistanceRequest(
        parent=layer,
        geometry=point(0.0051, 0),
        distance_meters=301,
        page_size=2,
        page_token=first.next_page_token,
    )
    code, error = await failure(stub.SearchWithinDistance(other))
    assert (code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")


async def test_search_nearest_k_with_distances_and_pages(stub: Stub, layer: str) -> None:
    # Two features at the very same place: ties are broken by id.
    features = [feature(fid, point(x, y)) for fid, x, y in EQUATOR]
    features.append(feature("e05b", point(0.005, 0)))
    await upsert(stub, layer, features)
    request = spatial_pb2.SearchNearestRequest(parent=layer, geometry=point(0.0051, 0), limit=5)
    everything = await stub.SearchNearest(request)
    assert [r.feature.id for r in everything.results] == ["e05", "e05b", "e06", "e04", "e07"]
    assert everything.results[0].distance_meters == pytest.approx(11.12, abs=0.05)
    assert everything.results[0].distance_meters == everything.results[1].distance_meters
    assert not everything.next_page_token

    paged: list[Any] = []
    token = ""
    pages = 0
    while True:
        request.page_size, request.page_token = 2, token
        page = await stub.SearchNearest(request)
        paged.extend(page.results)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert [(r.feature.id, r.distance_meters) for r in paged] == [
        (r.feature.id, r.distance_meters) for r in everything.results
    ]


async def test_search_intersecting_geometry_and_bbox(stub: Stub, layer: str) -> None:
    square = {"type": "Polygon", "coordinates": [[[0, 0], [2, 0], [2, 2], [0, 2], [0, 0]]]}
    await upsert(
        stub,
        layer,
        [
            feature("inside", point(1, 1)),
            feature("edge", point(2, 1)),
            feature("outside", point(3, 3)),
            feature(
                "crossing", json.dumps({"type": "LineString", "coordinates": [[1, 1], [3, 1]]})
            ),
            feature("east", point(179.5, 10)),
            feature("west", point(-179.5, 10)),
        ],
    )

    async def ids(**kwargs: Any) -> list[str]:
        request = spatial_pb2.SearchIntersectingRequest(parent=layer, **kwargs)
        return [f.id for f in (await stub.SearchIntersecting(request)).features]

    assert await ids(geometry=json.dumps(square)) == ["crossing", "edge", "inside"]
    assert await ids(geometry=json.dumps(square), relation=spatial_pb2.SPATIAL_RELATION_WITHIN) == [
        "inside"
    ]
    box = spatial_pb2.BoundingBox(west=0, south=0, east=2, north=2)
    assert await ids(bbox=box) == ["crossing", "edge", "inside"]
    assert await ids(bbox=box, relation=spatial_pb2.SPATIAL_RELATION_WITHIN) == ["inside"]
    across = spatial_pb2.BoundingBox(west=179, south=0, east=-179, north=20)
    assert await ids(bbox=across) == ["east", "west"]
    first = await stub.SearchIntersecting(
        spatial_pb2.SearchIntersectingRequest(parent=layer, bbox=box, page_size=2)
    )
    assert [f.id for f in first.features] == ["crossing", "edge"]
    second = await stub.SearchIntersecting(
        spatial_pb2.SearchIntersectingRequest(
            parent=layer, bbox=box, page_size=2, page_token=first.next_page_token
        )
    )
    assert [f.id for f in second.features] == ["inside"]
    assert not second.next_page_token


async def test_bad_query_input(stub: Stub, layer: str) -> None:
    code, error = await failure(
        stub.SearchIntersecting(
            spatial_pb2.SearchIntersectingRequest(
                parent=layer, bbox=spatial_pb2.BoundingBox(west=0, south=5, east=1, north=1)
            )
        )
    )
    assert (code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "CONTRACT_VIOLATION")
    assert [v.field for v in getattr(error, "violations", [])] == ["bbox"]
    code, error = await failure(
        stub.SearchIntersecting(
            spatial_pb2.SearchIntersectingRequest(
                parent=layer, bbox=spatial_pb2.BoundingBox(west=-181, south=0, east=1, north=1)
            )
        )
    )
    assert [v.field for v in getattr(error, "violations", [])] == ["bbox.west"]
    code, error = await failure(
        stub.SearchIntersecting(spatial_pb2.SearchIntersectingRequest(parent=layer))
    )
    assert (code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "CONTRACT_VIOLATION")
    code, error = await failure(
        stub.SearchNearest(
            spatial_pb2.SearchNearestRequest(parent=layer, geometry=point(0, 95), limit=1)
        )
    )
    assert (code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "COORDINATE_OUT_OF_RANGE")
    assert [v.field for v in getattr(error, "violations", [])] == ["geometry"]
    code, error = await failure(
        stub.SearchWithinDistance(
            spatial_pb2.SearchWithinDistanceRequest(
                parent=layer, geometry=point(0, 0), distance_meters=-1
            )
        )
    )
    assert [v.field for v in getattr(error, "violations", [])] == ["distance_meters"]
    code, error = await failure(
        stub.SearchWithinDistance(
            spatial_pb2.SearchWithinDistanceRequest(
                parent=layer, geometry='{"type":"Circle"}', distance_meters=1
            )
        )
    )
    assert (code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "UNSUPPORTED_GEOMETRY_TYPE")


async def test_compute_distance_between_features(stub: Stub, layer: str) -> None:
    square = {"type": "Polygon", "coordinates": [[[1, -1], [2, -1], [2, 1], [1, 1], [1, -1]]]}
    await upsert(
        stub,
        layer,
        [feature("origin", point(0, 0)), feature("square", json.dumps(square))],
    )
    other = f"{layer}_b"
    await stub.CreateLayer(spatial_pb2.CreateLayerRequest(layer_id=other.removeprefix("layers/")))
    try:
        await upsert(stub, other, [feature("far", point(1, 0))])

        async def distance(a: str, b: str) -> float:
            response = await stub.ComputeDistance(
                spatial_pb2.ComputeDistanceRequest(from_feature=a, to_feature=b)
            )
            value: float = response.distance_meters
            return value

        # One degree of longitude on the equator, WGS 84 spheroid.
        one_degree = 111319.49
        assert await distance(f"{layer}/features/origin", f"{layer}/features/square") == (
            pytest.approx(one_degree, abs=0.1)
        )
        assert await distance(f"{layer}/features/origin", f"{other}/features/far") == (
            pytest.approx(one_degree, abs=0.1)
        )
        assert await distance(f"{other}/features/far", f"{layer}/features/square") == 0
        code, error = await failure(
            stub.ComputeDistance(
                spatial_pb2.ComputeDistanceRequest(
                    from_feature=f"{layer}/features/origin", to_feature=f"{other}/features/nope"
                )
            )
        )
        assert (code, error.reason) == (grpc.StatusCode.NOT_FOUND, "FEATURE_NOT_FOUND")
        assert error.metadata["feature"] == f"{other}/features/nope"
        missing = f"layers/nope_{uuid.uuid4().hex[:6]}"
        code, error = await failure(
            stub.ComputeDistance(
                spatial_pb2.ComputeDistanceRequest(
                    from_feature=f"{layer}/features/origin", to_feature=f"{missing}/features/x"
                )
            )
        )
        assert (code, error.reason) == (grpc.StatusCode.NOT_FOUND, "LAYER_NOT_FOUND")
        assert error.metadata["layer"] == missing
    finally:
        await stub.DeleteLayer(spatial_pb2.DeleteLayerRequest(name=other))


async def test_queries_use_the_gist_indexes(stub: Stub, layer: str, pg_url: str) -> None:
    """The SQL the store runs, explained on a layer big enough for the planner to care."""
    features = [feature(f"g{n}", point((n % 100) * 0.01, (n // 100) * 0.01)) for n in range(5000)]
    await upsert(stub, layer, features)
    layer_id = layer.removeprefix("layers/")
    center = bytes.fromhex("0101000020E6100000000000000000E03F000000000000E03F")  # 0.5 0.5
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await conn.execute(f'ANALYZE {FEATURE_SCHEMA}."{layer_id}"')
        after = {"d": 12.5, "id": "g7"}  # a later page's key
        for template, params in [
            (_WITHIN_FIRST, {"c": center, "r": 500.0, "n": 11}),
            (_WITHIN, {"c": center, "r": 500.0, "n": 11, **after}),
        ]:
            plan = await _explain(conn, _sql(template, layer_id), params)
            assert f"{layer_id}_geog" in plan, plan
        for template, params in [
            (_NEAREST_FIRST, {"c": center, "k": 10, "n": 11}),
            (_NEAREST, {"c": center, "k": 10, "n": 11, **after}),
        ]:
            plan = await _explain(conn, _sql(template, layer_id), params)
            assert f"Index Scan using {layer_id}_geog" in plan, plan
            assert "Order By" in plan, plan


async def _explain(conn: psycopg.AsyncConnection[Any], statement: Any, params: Any) -> str:
    query = psycopg.sql.SQL("EXPLAIN ") + statement
    cursor = await conn.execute(query, params)
    return "\n".join(row[0] for row in await cursor.fetchall())


# -- bulk load ---------------------------------------------------------------------------


def batches_of(layer: str, count: int, size: int, tag: str = "b") -> list[Any]:
    return [
        spatial_pb2.LoadFeaturesRequest(
            parent=layer,
            features=[
                feature(f"{tag}{b:04d}-{n:04d}", point((b % 360) - 179.5, n % 180 - 89.5), b=b)
                for n in range(size)
            ],
        )
        for b in range(count)
    ]


async def _send(requests: Sequence[Any]) -> AsyncIterator[Any]:
    for request in requests:
        yield request


async def acks_until_failure(
    call: Any, on_ack: Any = None
) -> tuple[list[int], grpc.aio.AioRpcError | None]:
    """The batch indexes acknowledged by a LoadFeatures call and the error that ended it."""
    acks: list[int] = []
    try:
        async for ack in call:
            acks.append(ack.batch_index)
            if on_ack is not None:
                on_ack(acks)
    except grpc.aio.AioRpcError as exc:
        return acks, exc
    return acks, None


async def test_load_features_acks_every_committed_batch(stub: Stub, layer: str) -> None:
    batches = batches_of(layer, 6, 500)
    acks = [ack async for ack in stub.LoadFeatures(_send(batches))]
    assert [(a.batch_index, a.written_count, a.total_written_count) for a in acks] == [
        (i, 500, 500 * (i + 1)) for i in range(6)
    ]
    # Loading the same batches again (a client retrying) duplicates nothing.
    again = [ack async for ack in stub.LoadFeatures(_send(batches))]
    assert again[-1].total_written_count == 3000
    ids = [f.id for f in await all_features(stub, layer)]
    assert len(ids) == len(set(ids)) == 3000
    count = (await stub.GetLayer(spatial_pb2.GetLayerRequest(name=layer))).layer.feature_count
    assert count == 3000


async def test_load_features_stops_at_the_first_bad_batch(stub: Stub, layer: str) -> None:
    batches = batches_of(layer, 4, 100)
    bad = batches[2].features[37]
    bad.geometry = json.dumps(BOWTIE)
    acks, failed = await acks_until_failure(stub.LoadFeatures(_send(batches)))
    assert acks == [0, 1]
    assert failed is not None
    error = error_from_rpc_error(failed)
    assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_GEOMETRY"
    assert error.metadata["batch_index"] == "2"
    assert [v.field for v in getattr(error, "violations", [])] == ["features[37].geometry"]
    ids = {f.id for f in await all_features(stub, layer)}
    assert len(ids) == 200
    assert all(i.startswith(("b0000-", "b0001-")) for i in ids)


async def test_load_features_refuses_a_change_of_parent(stub: Stub, layer: str) -> None:
    batches = batches_of(layer, 2, 10)
    batches[1].parent = f"{layer}zz"
    acks, failed = await acks_until_failure(stub.LoadFeatures(_send(batches)))
    assert acks == [0]
    assert failed is not None
    error = error_from_rpc_error(failed)
    assert (failed.code(), error.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "PARENT_CHANGED",
    )


async def test_kill_9_during_a_bulk_load_loses_no_acknowledged_feature(
    tmp_path: Path, pg_url: str, stub: Stub, layer: str
) -> None:
    batch_size = 400
    batches = batches_of(layer, 60, batch_size, tag="k")
    with run_service("lake", tmp_path, _lake_env(pg_url)) as victim:
        _wait_for_schema(victim.address)
        async with _channel(victim.address) as channel:
            load = spatial_pb2_grpc.SpatialServiceStub(channel).LoadFeatures(_send(batches))

            def kill_after_eight(acks: list[int]) -> None:
                if len(acks) == 8:
                    victim.process.send_signal(signal.SIGKILL)

            acked, failed = await acks_until_failure(load, kill_after_eight)
            assert failed is not None
            assert failed.code() in CONNECTION_LOST_CODES
        victim.process.wait(10)
    assert acked == list(range(len(acked)))
    assert 8 <= len(acked) < len(batches)

    # A fresh Lake (the module's) sees every acknowledged feature once; a batch that was
    # not acknowledged is there whole or not at all.
    stored = [f.id for f in await all_features(stub, layer)]
    assert len(stored) == len(set(stored))
    by_batch: dict[int, int] = {}
    for fid in stored:
        by_batch[int(fid[1:5])] = by_batch.get(int(fid[1:5]), 0) + 1
    for index in acked:
        assert by_batch.get(index) == batch_size, f"acknowledged batch {index} incomplete"
    assert all(count == batch_size for count in by_batch.values())

    # The client resumes from the first unacknowledged batch: everything exactly once.
    acks = [ack async for ack in stub.LoadFeatures(_send(batches[len(acked) :]))]
    assert len(acks) == len(batches) - len(acked)
    stored = [f.id for f in await all_features(stub, layer)]
    assert len(stored) == len(set(stored)) == len(batches) * batch_size


# -- engine down -------------------------------------------------------------------------


async def test_postgres_down_is_unavailable_with_retry_info() -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/datapunk?connect_timeout=1"
    pool = AsyncConnectionPool(dead, min_size=0, max_size=2, open=False)
    await pool.open(wait=False)
    store = PostgisSpatialStore(
        pool, max_page_size=100, max_properties_bytes=MAX_PAYLOAD, pool_timeout=0.5
    )
    edges = DatapunkServerInterceptor("test", access_log="off")
    server, port = create_server("127.0.0.1:0", edges=edges)
    spatial_pb2_grpc.add_SpatialServiceServicer_to_server(SpatialServicer(store), server)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            dead_stub = spatial_pb2_grpc.SpatialServiceStub(channel)
            calls = [
                dead_stub.CreateLayer(spatial_pb2.CreateLayerRequest(layer_id="x")),
                dead_stub.UpsertFeatures(
                    spatial_pb2.UpsertFeaturesRequest(
                        parent="layers/x", features=[feature("a", point(0, 0))]
                    )
                ),
                dead_stub.SearchNearest(
                    spatial_pb2.SearchNearestRequest(
                        parent="layers/x", geometry=point(0, 0), limit=1
                    )
                ),
            ]
            for call in calls:
                code, error = await failure(call)
                assert code == grpc.StatusCode.UNAVAILABLE
                assert error.reason == "ENGINE_UNAVAILABLE"
                assert error.metadata == {"engine": "postgres"}
                assert getattr(error, "retry_after", None) == 1.0
            load = dead_stub.LoadFeatures(_send(batches_of("layers/x", 2, 5)))
            acks, failed = await acks_until_failure(load)
            assert acks == []
            assert failed is not None
            assert failed.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)
        await pool.close()


async def test_a_connection_broken_mid_call_is_unavailable(pg_url: str) -> None:
    """PostgreSQL drops the pooled connection between two calls: the next read (on a
    connection lent in autocommit mode) and the next write (a COPY in autocommit mode)
    fail as UNAVAILABLE, and the pool's fresh connection serves the call after them."""
    pool = AsyncConnectionPool(pg_url, min_size=1, max_size=1, open=False)
    await pool.open(wait=True)
    store = PostgisSpatialStore(
        pool, max_page_size=100, max_properties_bytes=MAX_PAYLOAD, pool_timeout=5
    )
    layer_id = f"t_{uuid.uuid4().hex[:12]}"
    await store.create_layer(layer_id, "")
    try:

        async def drop_pooled_connection() -> None:
            async with pool.connection() as conn:
                pid = conn.pgconn.backend_pid
            async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as other:
                await other.execute("SELECT pg_terminate_backend(%s)", (pid,))

        search = store.search_nearest(layer_id, point(1, 2), 3, 0, "")
        write = store.upsert_features(layer_id, [feature("a", point(1, 2))])
        for call in (search, write):
            await drop_pooled_connection()
            with pytest.raises(DatapunkError) as caught:
                await call
            assert caught.value.code == "UNAVAILABLE", caught.value
            assert caught.value.reason == "ENGINE_UNAVAILABLE"
        assert (await store.search_nearest(layer_id, point(1, 2), 3, 0, "")).items == []
    finally:
        await store.delete_layer(layer_id)
        await pool.close()
