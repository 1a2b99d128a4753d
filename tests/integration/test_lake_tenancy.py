"""Every Lake resource belongs to a tenant, against the real engines: vector collections on
embedded Qdrant (qdrant-edge, in a temporary directory), series and downsampling views on
QuestDB, layers on PostGIS (the shared stack's engines, addresses from ``load_settings()``).

The Lake's real servicers and stores run in this process behind the real service edge:
``CallerAuthenticator`` with the real token verifier, trusting the suite's test issuer
(``tests.auth_support``). A call runs as a tenant the way production does it: Nexus's
service token plus the caller it acts for (``AsTenant(stub, tenant)``). Direct store calls
set ``identity_var`` with ``acting_as``. A real ``datapunk-lake`` process, called for a
client of the tenant ``default``, shows that the default tenant's path is unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from datapunk.lake.v1 import (
    spatial_pb2,
    spatial_pb2_grpc,
    timeseries_pb2,
    timeseries_pb2_grpc,
    vectors_pb2,
    vectors_pb2_grpc,
)
from datapunk_lake.spatial.postgis import PostgisSpatialStore, tenant_schema
from datapunk_lake.spatial.servicer import SpatialServicer
from datapunk_lake.timeseries.domain import FieldSpec, FieldType, RangeQuery, SeriesSchema
from datapunk_lake.timeseries.questdb import QuestDBEngine
from datapunk_lake.timeseries.servicer import TimeSeriesServicer
from datapunk_lake.timeseries.store import TSStore
from datapunk_lake.vectors.domain import CollectionConfig, Distance, Point
from datapunk_lake.vectors.embedded import EmbeddedEngine
from datapunk_lake.vectors.servicer import VectorServicer
from datapunk_lake.vectors.store import VectorStore
from datapunk_shared.auth.identity import Identity, identity_var
from datapunk_shared.auth.interceptor import CallerAuthenticator
from datapunk_shared.auth.verifiers import build_verifier
from datapunk_shared.config import AuthSettings, Settings
from datapunk_shared.db import apply_migrations, load_migrations
from datapunk_shared.errors import DatapunkError, NotFound
from datapunk_shared.paging import decode_page_token
from datapunk_shared.rpc.client import error_from_rpc_error
from datapunk_shared.rpc.interceptor import DatapunkServerInterceptor
from datapunk_shared.rpc.server import create_server
from google.protobuf import duration_pb2, field_mask_pb2
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from tests.auth_support import authed_channel, issuer, tenant_caller
from tests.support import run_service, wait_until

Stub = Any  # the generated stubs are untyped
T0 = 1_700_000_000_000_000  # microseconds
SECOND = 1_000_000
MAX_PAYLOAD = 4096


def _tenant(prefix: str) -> str:
    """A tenant id of this run only (the shared engines keep other runs' objects)."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


A = _tenant("a")
B = _tenant("b-")  # a hyphen, to take that path too
C = _tenant("c")
FRESH = _tenant("fresh")  # never makes a layer: has no schema


# ---- running calls as a tenant -------------------------------------------------------


def as_tenant(tenant: str) -> tuple[tuple[str, str], ...]:
    """Call metadata of Nexus forwarding a call of one of ``tenant``'s clients."""
    return issuer().metadata("lake", on_behalf=tenant_caller(tenant))


def forwarded_user(tenant: str) -> tuple[tuple[str, str], ...]:
    """Call metadata of Nexus forwarding a call of a user (external OIDC) of ``tenant``."""
    user = Identity(subject="user:https://idp.test|alice", tenant=tenant, kind="user")
    return issuer().metadata("lake", on_behalf=user)


class AsTenant:
    """``stub`` whose every call is made as one of ``tenant``'s clients (or with
    ``metadata``)."""

    def __init__(
        self, stub: Stub, tenant: str, metadata: Sequence[tuple[str, str]] | None = None
    ) -> None:
        self._stub = stub
        self._metadata = tuple(metadata) if metadata is not None else as_tenant(tenant)

    def __getattr__(self, method: str) -> Callable[..., Any]:
        return functools.partial(getattr(self._stub, method), metadata=self._metadata)


@contextlib.contextmanager
def acting_as(tenant: str) -> Iterator[None]:
    """Direct store calls inside act for one of ``tenant``'s clients."""
    token = identity_var.set(Identity(subject="client:direct", tenant=tenant, kind="client"))
    try:
        yield
    finally:
        identity_var.reset(token)


async def outcome(call: Any) -> DatapunkError:
    """Finish ``call`` (unary or streaming), which must fail; the decoded error."""
    try:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as exc:
        error = error_from_rpc_error(exc)
        error.metadata["code"] = exc.code().name
        return error
    raise AssertionError("the call succeeded")


async def same_as_missing(
    make: Callable[[str], Any], taken: str, missing: str, *, reason: str
) -> None:
    """The call for another tenant's ``taken`` fails exactly like the one for ``missing``
    (which nobody has): NOT_FOUND, same reason, same message and metadata but for the
    name. So the caller learns nothing of the other tenant's object."""
    other = await outcome(make(taken))
    nobody = await outcome(make(missing))
    assert other.metadata["code"] == "NOT_FOUND", other
    assert other.reason == reason, other

    def shown(error: DatapunkError, name: str) -> tuple[str, str, dict[str, str]]:
        return (
            error.reason,
            error.message.replace(name, "<name>"),
            {k: v.replace(name, "<name>") for k, v in error.metadata.items()},
        )

    assert shown(other, taken) == shown(nobody, missing)
    for tenant in (A, B, C):
        assert tenant not in other.message
        assert all(tenant not in v for v in other.metadata.values())


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


# ---- the Lake in this process --------------------------------------------------------


@dataclass
class TenantLake:
    address: str
    vectors_path: Path
    vectors: VectorStore
    series: TSStore
    spatial: PostgisSpatialStore


@pytest.fixture(scope="module")
async def lake(
    tmp_path_factory: pytest.TempPathFactory, settings: Settings
) -> AsyncIterator[TenantLake]:
    pool = AsyncConnectionPool(
        settings.engines.postgres.url, min_size=1, max_size=4, open=False, name="tenancy-test"
    )
    await pool.open(wait=True, timeout=15)
    async with pool.connection() as conn:  # the Lake's schema, as the service applies it
        await apply_migrations(conn, "lake", load_migrations("datapunk_lake.migrations"))
    spatial = PostgisSpatialStore(
        pool, max_page_size=100, max_properties_bytes=MAX_PAYLOAD, pool_timeout=5.0
    )
    engine = QuestDBEngine(settings.engines.questdb, settings.lake.timeseries)
    await engine.open()
    series = TSStore(engine, settings.lake.timeseries)
    vectors_path = tmp_path_factory.mktemp("tenancy") / "vectors"
    vectors = VectorStore(
        EmbeddedEngine(vectors_path, auto_optimize=False), max_payload_bytes=MAX_PAYLOAD
    )
    await vectors.start()
    test_issuer = issuer()
    verifier = build_verifier(
        AuthSettings(issuer=test_issuer.url, jwks_url=f"{test_issuer.url}/jwks.json"),
        service="lake",
    )
    edges = DatapunkServerInterceptor(
        "lake-tenancy-test", access_log="off", authenticator=CallerAuthenticator(verifier)
    )
    server, port = create_server("127.0.0.1:0", edges=edges)
    vectors_pb2_grpc.add_VectorServiceServicer_to_server(VectorServicer(vectors), server)
    timeseries_pb2_grpc.add_TimeSeriesServiceServicer_to_server(TimeSeriesServicer(series), server)
    spatial_pb2_grpc.add_SpatialServiceServicer_to_server(SpatialServicer(spatial), server)
    await server.start()
    try:
        yield TenantLake(f"127.0.0.1:{port}", vectors_path, vectors, series, spatial)
    finally:
        await server.stop(None)
        await verifier.aclose()
        await vectors.close()
        await engine.close()
        async with pool.connection() as conn:  # the schemas this run's tenants got
            for tenant in (A, B, C, FRESH):
                await conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} RESTRICT").format(
                        sql.Identifier(tenant_schema(tenant))
                    )
                )
        await pool.close()


@pytest.fixture
async def channel(lake: TenantLake) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(lake.address) as channel:
        yield channel


@pytest.fixture
def vstub(channel: grpc.aio.Channel) -> Stub:
    return vectors_pb2_grpc.VectorServiceStub(channel)


@pytest.fixture
def tstub(channel: grpc.aio.Channel) -> Stub:
    return timeseries_pb2_grpc.TimeSeriesServiceStub(channel)


@pytest.fixture
def sstub(channel: grpc.aio.Channel) -> Stub:
    return spatial_pb2_grpc.SpatialServiceStub(channel)


@pytest.fixture
def qdb(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(settings.engines.questdb.pg_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def pg(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(settings.engines.postgres.url, autocommit=True) as conn:
        yield conn


# ---- who is calling ------------------------------------------------------------------


async def test_a_malformed_or_missing_tenant_is_refused_before_any_store_work(
    vstub: Stub, tstub: Stub, sstub: Stub
) -> None:
    bad = as_tenant("Not_A_Tenant")
    # A service calling for itself, with no tenant in its token and nobody behind it.
    no_tenant = (("authorization", f"Bearer {issuer().token(subject='service:stream')}"),)
    for metadata in (bad, no_tenant):
        for call in (
            vstub.ListCollections(vectors_pb2.ListCollectionsRequest(), metadata=metadata),
            tstub.ListSeries(timeseries_pb2.ListSeriesRequest(), metadata=metadata),
            sstub.ListLayers(spatial_pb2.ListLayersRequest(), metadata=metadata),
            sstub.CreateLayer(spatial_pb2.CreateLayerRequest(layer_id="x"), metadata=metadata),
        ):
            error = await outcome(call)
            assert (error.metadata["code"], error.reason) == ("PERMISSION_DENIED", "INVALID_TENANT")
    nobody = await outcome(vstub.ListCollections(vectors_pb2.ListCollectionsRequest()))
    assert nobody.metadata["code"] == "UNAUTHENTICATED"


# ---- vectors -------------------------------------------------------------------------


def _vec(seed: int, size: int) -> list[float]:
    return [float((seed * 7 + i * 3) % 11 + 1) for i in range(size)]


def _collection(size: int) -> vectors_pb2.Collection:
    return vectors_pb2.Collection(
        vector_size=size,
        distance=vectors_pb2.DISTANCE_EUCLID,
        payload_fields=[
            vectors_pb2.PayloadField(name="owner", type=vectors_pb2.PAYLOAD_FIELD_TYPE_KEYWORD)
        ],
    )


def _points(owner: str, ids: Sequence[int], size: int) -> list[vectors_pb2.Point]:
    points = []
    for i in ids:
        point = vectors_pb2.Point(id=vectors_pb2.PointId(num=i), vector=_vec(i, size))
        point.payload.update({"owner": owner})
        points.append(point)
    return points


async def test_two_tenants_have_a_collection_of_the_same_name_each_with_its_own_points(
    lake: TenantLake, vstub: Stub
) -> None:
    a, b = AsTenant(vstub, A), AsTenant(vstub, B)
    name = _unique("docs")
    resource = f"collections/{name}"
    made_a = await a.CreateCollection(
        vectors_pb2.CreateCollectionRequest(collection_id=name, collection=_collection(4))
    )
    made_b = await b.CreateCollection(
        vectors_pb2.CreateCollectionRequest(collection_id=name, collection=_collection(3))
    )
    assert made_a.collection.name == made_b.collection.name == resource
    await a.UpsertPoints(
        vectors_pb2.UpsertPointsRequest(collection=resource, points=_points(A, range(1, 6), 4))
    )
    await b.UpsertPoints(
        vectors_pb2.UpsertPointsRequest(collection=resource, points=_points(B, [1, 2], 3))
    )
    for stub, tenant, size, ids in ((a, A, 4, {1, 2, 3, 4, 5}), (b, B, 3, {1, 2})):
        info = (
            await stub.GetCollection(vectors_pb2.GetCollectionRequest(name=resource))
        ).collection
        assert (info.name, info.vector_size) == (resource, size)
        count = await stub.CountPoints(vectors_pb2.CountPointsRequest(collection=resource))
        assert count.count == len(ids)
        got = await stub.GetPoints(
            vectors_pb2.GetPointsRequest(
                collection=resource,
                ids=[vectors_pb2.PointId(num=1)],
                with_payload=True,
            )
        )
        assert [dict(p.payload) for p in got.points] == [{"owner": tenant}]
        found = await stub.SearchPoints(
            vectors_pb2.SearchPointsRequest(
                collection=resource,
                query=vectors_pb2.VectorQuery(vector=_vec(1, size), limit=10, with_payload=True),
            )
        )
        assert {p.id.num for p in found.points} == ids
        assert {p.payload["owner"] for p in found.points} == {tenant}
        scrolled = await stub.ScrollPoints(
            vectors_pb2.ScrollPointsRequest(collection=resource, with_payload=True)
        )
        assert {p.payload["owner"] for p in scrolled.points} == {tenant}
        # Each collection has its own payload index, holding its own points.
        stats = await stub.GetCollectionStats(
            vectors_pb2.GetCollectionStatsRequest(name=f"{resource}/stats")
        )
        assert dict(stats.stats.indexed_payload_points) == {"owner": len(ids)}
    # The engine's collections are the tenants' own directories; the plain name is free.
    assert (lake.vectors_path / f"_{A}__{name}" / "collection.json").is_file()
    assert (lake.vectors_path / f"_{B}__{name}" / "collection.json").is_file()
    assert not (lake.vectors_path / name).exists()
    await a.DeleteCollection(vectors_pb2.DeleteCollectionRequest(name=resource))
    count = await b.CountPoints(vectors_pb2.CountPointsRequest(collection=resource))
    assert count.count == 2
    await b.DeleteCollection(vectors_pb2.DeleteCollectionRequest(name=resource))
    assert not (lake.vectors_path / f"_{B}__{name}").exists()


async def test_each_tenant_lists_only_its_own_collections_by_their_logical_names(
    vstub: Stub,
) -> None:
    a, c = AsTenant(vstub, A), AsTenant(vstub, C)
    prefix = _unique("l")
    mine = [f"{prefix}-{n}" for n in range(3)]
    theirs = f"{prefix}-9"
    for name in mine:
        await a.CreateCollection(
            vectors_pb2.CreateCollectionRequest(collection_id=name, collection=_collection(2))
        )
    await c.CreateCollection(
        vectors_pb2.CreateCollectionRequest(collection_id=theirs, collection=_collection(2))
    )
    default = AsTenant(vstub, "default")
    try:
        names: list[str] = []
        token = ""
        while True:
            page = await a.ListCollections(
                vectors_pb2.ListCollectionsRequest(page_size=1, page_token=token)
            )
            names += [c.name for c in page.collections]
            token = page.next_page_token
            if not token:
                break
            # The token holds the logical name of the page's last collection.
            assert decode_page_token(token) == f"c:{names[-1].removeprefix('collections/')}"
        assert names == [f"collections/{n}" for n in mine]
        listed = await c.ListCollections(vectors_pb2.ListCollectionsRequest())
        assert [x.name for x in listed.collections] == [f"collections/{theirs}"]
        listed = await default.ListCollections(vectors_pb2.ListCollectionsRequest())
        assert not [x for x in listed.collections if x.name.startswith(f"collections/{prefix}")]
        assert not [x for x in listed.collections if "__" in x.name]
    finally:
        for name in mine:
            await a.DeleteCollection(
                vectors_pb2.DeleteCollectionRequest(name=f"collections/{name}")
            )
        await c.DeleteCollection(vectors_pb2.DeleteCollectionRequest(name=f"collections/{theirs}"))


async def test_another_tenants_collection_is_not_found_by_every_rpc(vstub: Stub) -> None:
    a, b = AsTenant(vstub, A), AsTenant(vstub, B)
    taken = _unique("secret")
    missing = _unique("nosuch")
    await a.CreateCollection(
        vectors_pb2.CreateCollectionRequest(collection_id=taken, collection=_collection(2))
    )
    await a.UpsertPoints(
        vectors_pb2.UpsertPointsRequest(
            collection=f"collections/{taken}", points=_points(A, [1], 2)
        )
    )
    ids = vectors_pb2.PointSelector(ids=vectors_pb2.PointIdList(ids=[vectors_pb2.PointId(num=1)]))
    query = vectors_pb2.VectorQuery(vector=[1.0, 2.0], limit=5)

    async def import_points(name: str) -> AsyncIterator[vectors_pb2.ImportPointsRequest]:
        yield vectors_pb2.ImportPointsRequest(
            collection=f"collections/{name}", sequence=0, points=_points(B, [7], 2)
        )

    def payload() -> Any:
        request = vectors_pb2.SetPayloadRequest(points=ids)
        request.payload.update({"owner": B})
        return request

    def set_payload(name: str) -> Any:
        request = payload()
        request.collection = f"collections/{name}"
        return b.SetPayload(request)

    calls: list[Callable[[str], Any]] = [
        lambda n: b.GetCollection(vectors_pb2.GetCollectionRequest(name=f"collections/{n}")),
        lambda n: b.GetCollectionStats(
            vectors_pb2.GetCollectionStatsRequest(name=f"collections/{n}/stats")
        ),
        lambda n: b.OptimizeCollection(
            vectors_pb2.OptimizeCollectionRequest(name=f"collections/{n}")
        ),
        lambda n: b.UpsertPoints(
            vectors_pb2.UpsertPointsRequest(
                collection=f"collections/{n}", points=_points(B, [1], 2)
            )
        ),
        lambda n: b.ImportPoints(import_points(n)),
        lambda n: b.GetPoints(
            vectors_pb2.GetPointsRequest(
                collection=f"collections/{n}", ids=[vectors_pb2.PointId(num=1)]
            )
        ),
        set_payload,
        lambda n: b.SearchPoints(
            vectors_pb2.SearchPointsRequest(collection=f"collections/{n}", query=query)
        ),
        lambda n: b.BatchSearchPoints(
            vectors_pb2.BatchSearchPointsRequest(collection=f"collections/{n}", queries=[query])
        ),
        lambda n: b.ScrollPoints(vectors_pb2.ScrollPointsRequest(collection=f"collections/{n}")),
        lambda n: b.CountPoints(vectors_pb2.CountPointsRequest(collection=f"collections/{n}")),
        lambda n: b.DeletePoints(
            vectors_pb2.DeletePointsRequest(collection=f"collections/{n}", points=ids)
        ),
        lambda n: b.DeleteCollection(vectors_pb2.DeleteCollectionRequest(name=f"collections/{n}")),
    ]
    for make in calls:
        await same_as_missing(make, taken, missing, reason="COLLECTION_NOT_FOUND")
    # Nothing of A's changed, and A's own miss names only the logical name.
    got = await a.GetPoints(
        vectors_pb2.GetPointsRequest(
            collection=f"collections/{taken}", ids=[vectors_pb2.PointId(num=1)], with_payload=True
        )
    )
    assert [dict(p.payload) for p in got.points] == [{"owner": A}]
    miss = await outcome(
        a.GetCollection(vectors_pb2.GetCollectionRequest(name=f"collections/{missing}"))
    )
    assert miss.message == f"collection {missing!r} does not exist"
    assert miss.metadata == {"collection": f"collections/{missing}", "code": "NOT_FOUND"}
    await a.DeleteCollection(vectors_pb2.DeleteCollectionRequest(name=f"collections/{taken}"))


async def test_a_user_nexus_forwards_acts_for_the_users_tenant(vstub: Stub) -> None:
    a = AsTenant(vstub, A)
    name = _unique("fwd")
    await a.CreateCollection(
        vectors_pb2.CreateCollectionRequest(collection_id=name, collection=_collection(2))
    )
    try:
        request = vectors_pb2.GetCollectionRequest(name=f"collections/{name}")
        as_user_of_a = AsTenant(vstub, "", metadata=forwarded_user(A))
        assert (await as_user_of_a.GetCollection(request)).collection.name == request.name
        as_user_of_b = AsTenant(vstub, "", metadata=forwarded_user(B))
        error = await outcome(as_user_of_b.GetCollection(request))
        assert (error.metadata["code"], error.reason) == ("NOT_FOUND", "COLLECTION_NOT_FOUND")
    finally:
        await a.DeleteCollection(vectors_pb2.DeleteCollectionRequest(name=f"collections/{name}"))


async def test_vector_store_calls_follow_identity_var(lake: TenantLake) -> None:
    store = lake.vectors
    name = _unique("direct")
    with acting_as(A):
        await store.create_collection(CollectionConfig(name, 2, Distance.DOT))
        await store.upsert(name, [Point(1, [1.0, 0.0], {"owner": A})])
    with acting_as(C):
        with pytest.raises(NotFound):
            await store.get_collection(name)
        await store.create_collection(CollectionConfig(name, 2, Distance.DOT))
        assert await store.count(name, None) == 0
    with acting_as(A):
        assert (await store.get_collection(name)).name == name
        assert await store.count(name, None) == 1
        page, _ = await store.list_collections(after="", limit=1000)
        assert name in [c.name for c in page]
        await store.delete_collection(name)
    with acting_as(C):
        assert await store.count(name, None) == 0
        await store.delete_collection(name)
    # Without an identity the call acts for the default tenant, which has no such collection.
    with pytest.raises(NotFound):
        await store.get_collection(name)


async def test_tenants_collections_come_back_as_theirs_after_a_restart(tmp_path: Path) -> None:
    def open_store() -> VectorStore:
        engine = EmbeddedEngine(tmp_path / "vectors", auto_optimize=False)
        return VectorStore(engine, max_payload_bytes=MAX_PAYLOAD)

    first = open_store()
    await first.start()
    try:
        with acting_as(A):
            await first.create_collection(CollectionConfig("docs", 2, Distance.DOT))
            await first.upsert("docs", [Point(1, [1.0, 0.0], {"owner": A})])
        with acting_as(C):
            await first.create_collection(CollectionConfig("docs", 3, Distance.DOT))
    finally:
        await first.close()
    second = open_store()
    await second.start()
    try:
        with acting_as(A):
            assert (await second.get_collection("docs")).vector_size == 2
            assert await second.count("docs", None) == 1
            page, _ = await second.list_collections(after="", limit=10)
            assert [c.name for c in page] == ["docs"]
        with acting_as(C):
            assert (await second.get_collection("docs")).vector_size == 3
            assert await second.count("docs", None) == 0
        with pytest.raises(NotFound):
            await second.get_collection("docs")
        assert await second.list_collections(after="", limit=10) == ([], "")
    finally:
        await second.close()


# ---- time series ---------------------------------------------------------------------


def _series(field: str) -> timeseries_pb2.Series:
    return timeseries_pb2.Series(
        tags=["host"],
        fields=[timeseries_pb2.FieldSchema(name=field, type=timeseries_pb2.FIELD_TYPE_DOUBLE)],
    )


def _rows(field: str, host: str, values: Sequence[float]) -> timeseries_pb2.RowBatch:
    stamps = [T0 + i * SECOND for i in range(len(values))]
    return timeseries_pb2.RowBatch(
        columns=[
            timeseries_pb2.ColumnData(
                name="ts", timestamps=timeseries_pb2.TimestampValues(values=stamps)
            ),
            timeseries_pb2.ColumnData(
                name="host", strings=timeseries_pb2.StringValues(values=[host] * len(values))
            ),
            timeseries_pb2.ColumnData(
                name=field, doubles=timeseries_pb2.DoubleValues(values=values)
            ),
        ]
    )


def _column(rows: timeseries_pb2.RowBatch, name: str) -> list[Any]:
    for column in rows.columns:
        if column.name == name:
            kind = column.WhichOneof("values")
            if kind == "dictionary":
                return [column.dictionary.dictionary[i] for i in column.dictionary.indexes]
            return list(getattr(column, kind).values)
    raise AssertionError(f"no column {name}")


def _table_count(qdb: psycopg.Connection[Any], table: str) -> int:
    row = qdb.execute(f'SELECT count() FROM "{table}"').fetchone()
    assert row is not None
    return int(row[0])


def _tables(qdb: psycopg.Connection[Any], *names: str) -> set[str]:
    rows = qdb.execute("SELECT table_name FROM tables()").fetchall()
    return {r[0] for r in rows} & set(names)


async def _wait_readable(stub: AsTenant, resource: str, rows: int) -> None:
    async def count() -> int:
        response = await stub.ReadRows(timeseries_pb2.ReadRowsRequest(series=resource))
        return len(_column(response.rows, "ts"))

    for _ in range(300):
        if await count() >= rows:
            break
        await asyncio.sleep(0.05)
    assert await count() == rows


async def test_two_tenants_have_a_series_of_the_same_name_each_with_its_own_rows(
    tstub: Stub, qdb: psycopg.Connection[Any]
) -> None:
    a, b = AsTenant(tstub, A), AsTenant(tstub, B)
    series_id = _unique("s_")
    resource = f"series/{series_id}"
    await a.CreateSeries(
        timeseries_pb2.CreateSeriesRequest(series_id=series_id, series=_series("usage"))
    )
    await b.CreateSeries(
        timeseries_pb2.CreateSeriesRequest(series_id=series_id, series=_series("temp"))
    )
    try:
        await a.WriteRows(
            timeseries_pb2.WriteRowsRequest(series=resource, rows=_rows("usage", "ha", [1, 2, 3]))
        )
        await b.WriteRows(
            timeseries_pb2.WriteRowsRequest(series=resource, rows=_rows("temp", "hb", [40]))
        )
        await _wait_readable(a, resource, 3)
        await _wait_readable(b, resource, 1)
        got = await a.ReadRows(timeseries_pb2.ReadRowsRequest(series=resource))
        assert _column(got.rows, "usage") == [1, 2, 3]
        assert set(_column(got.rows, "host")) == {"ha"}
        got = await b.ReadRows(timeseries_pb2.ReadRowsRequest(series=resource))
        assert _column(got.rows, "temp") == [40]
        for stub, field, expected in ((a, "usage", 6.0), (b, "temp", 40.0)):
            total = await stub.AggregateRows(
                timeseries_pb2.AggregateRowsRequest(
                    series=resource,
                    interval=duration_pb2.Duration(seconds=86400),
                    aggregations=[
                        timeseries_pb2.Aggregation(
                            function=timeseries_pb2.AGGREGATE_FUNCTION_SUM, field=field
                        )
                    ],
                )
            )
            assert _column(total.rows, f"sum_{field}") == [expected]
        latest = await a.ReadLatest(
            timeseries_pb2.ReadLatestRequest(series=resource, partition_by=["host"])
        )
        assert _column(latest.rows, "host") == ["ha"]
        info_a = (await a.GetSeries(timeseries_pb2.GetSeriesRequest(name=resource))).series
        info_b = (await b.GetSeries(timeseries_pb2.GetSeriesRequest(name=resource))).series
        assert (info_a.name, info_a.row_count, [f.name for f in info_a.fields]) == (
            resource,
            3,
            ["usage"],
        )
        assert (info_b.name, info_b.row_count, [f.name for f in info_b.fields]) == (
            resource,
            1,
            ["temp"],
        )
        # In QuestDB: one table per tenant, none under the plain name.
        assert _table_count(qdb, f"_{A}__{series_id}") == 3
        assert _table_count(qdb, f"_{B}__{series_id}") == 1
        assert _tables(qdb, series_id) == set()
        # An update reaches the caller's table only.
        updated = await a.UpdateSeries(
            timeseries_pb2.UpdateSeriesRequest(
                series=timeseries_pb2.Series(
                    name=resource,
                    ttl=timeseries_pb2.Ttl(value=2, unit=timeseries_pb2.TTL_UNIT_DAYS),
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["ttl"]),
            )
        )
        assert updated.series.ttl.value == 2
        assert not (
            await b.GetSeries(timeseries_pb2.GetSeriesRequest(name=resource))
        ).series.HasField("ttl")
    finally:
        await a.DeleteSeries(timeseries_pb2.DeleteSeriesRequest(name=resource))
    assert _tables(qdb, f"_{A}__{series_id}") == set()
    assert _table_count(qdb, f"_{B}__{series_id}") == 1
    await b.DeleteSeries(timeseries_pb2.DeleteSeriesRequest(name=resource))


def _rule(rule_id: str, parent: str) -> timeseries_pb2.CreateDownsamplingRuleRequest:
    return timeseries_pb2.CreateDownsamplingRuleRequest(
        parent=parent,
        rule_id=rule_id,
        rule=timeseries_pb2.DownsamplingRule(
            interval=duration_pb2.Duration(seconds=3600),
            aggregations=[
                timeseries_pb2.Aggregation(function=timeseries_pb2.AGGREGATE_FUNCTION_COUNT)
            ],
        ),
    )


def _views(qdb: psycopg.Connection[Any], base: str) -> list[str]:
    rows = qdb.execute(
        "SELECT view_name FROM materialized_views() WHERE base_table_name = %s ORDER BY 1",
        (base,),
    ).fetchall()
    return [r[0] for r in rows]


async def test_downsampling_views_stay_with_their_series_tenant(
    tstub: Stub, qdb: psycopg.Connection[Any]
) -> None:
    a, b = AsTenant(tstub, A), AsTenant(tstub, B)
    series_id = _unique("r_")
    resource = f"series/{series_id}"
    view = f"series/{series_id}__hourly"
    rule_name = f"{resource}/downsamplingRules/hourly"
    for stub in (a, b):
        await stub.CreateSeries(
            timeseries_pb2.CreateSeriesRequest(series_id=series_id, series=_series("usage"))
        )
    try:
        await a.WriteRows(
            timeseries_pb2.WriteRowsRequest(series=resource, rows=_rows("usage", "h", [1, 2]))
        )
        created = (await a.CreateDownsamplingRule(_rule("hourly", resource))).rule
        assert (created.name, created.view_series) == (rule_name, view)
        assert _views(qdb, f"_{A}__{series_id}") == [f"_{A}__{series_id}__hourly"]
        # B has a series of that name but no rule, and cannot see A's view.
        listed = await b.ListDownsamplingRules(
            timeseries_pb2.ListDownsamplingRulesRequest(parent=resource)
        )
        assert list(listed.rules) == []
        error = await outcome(
            b.GetDownsamplingRule(timeseries_pb2.GetDownsamplingRuleRequest(name=rule_name))
        )
        assert (error.metadata["code"], error.reason) == (
            "NOT_FOUND",
            "DOWNSAMPLING_RULE_NOT_FOUND",
        )
        error = await outcome(b.ReadRows(timeseries_pb2.ReadRowsRequest(series=view)))
        assert (error.metadata["code"], error.reason) == ("NOT_FOUND", "SERIES_NOT_FOUND")
        assert f"_{A}__" not in error.message
        # A reads its view by the logical name once QuestDB refreshed it.
        await _wait_readable(a, view, 1)
        counted = await a.ReadRows(timeseries_pb2.ReadRowsRequest(series=view))
        assert _column(counted.rows, "count") == [2]
        # B makes a rule of the same name: its own view.
        made = (await b.CreateDownsamplingRule(_rule("hourly", resource))).rule
        assert made.view_series == view
        assert _views(qdb, f"_{B}__{series_id}") == [f"_{B}__{series_id}__hourly"]
        await a.DeleteDownsamplingRule(timeseries_pb2.DeleteDownsamplingRuleRequest(name=rule_name))
        assert _views(qdb, f"_{A}__{series_id}") == []
        assert _views(qdb, f"_{B}__{series_id}") == [f"_{B}__{series_id}__hourly"]
        await a.CreateDownsamplingRule(_rule("hourly", resource))
    finally:
        await a.DeleteSeries(timeseries_pb2.DeleteSeriesRequest(name=resource))
        assert _tables(qdb, f"_{A}__{series_id}", f"_{A}__{series_id}__hourly") == set()
        assert _views(qdb, f"_{B}__{series_id}") == [f"_{B}__{series_id}__hourly"]
        await b.DeleteSeries(timeseries_pb2.DeleteSeriesRequest(name=resource))
    assert _tables(qdb, f"_{B}__{series_id}", f"_{B}__{series_id}__hourly") == set()


async def test_each_tenant_lists_only_its_own_series(tstub: Stub) -> None:
    a, c, default = AsTenant(tstub, A), AsTenant(tstub, C), AsTenant(tstub, "default")
    prefix = _unique("ls_")
    mine = [f"{prefix}_{n}" for n in range(3)]
    theirs = f"{prefix}_9"
    for series_id in mine:
        await a.CreateSeries(
            timeseries_pb2.CreateSeriesRequest(series_id=series_id, series=_series("v"))
        )
    await c.CreateSeries(timeseries_pb2.CreateSeriesRequest(series_id=theirs, series=_series("v")))
    defaults = [f"{prefix}_d{n}" for n in range(2)]
    for series_id in defaults:
        await default.CreateSeries(
            timeseries_pb2.CreateSeriesRequest(series_id=series_id, series=_series("v"))
        )
    try:
        names: list[str] = []
        token = ""
        while True:
            page = await a.ListSeries(
                timeseries_pb2.ListSeriesRequest(page_size=1, page_token=token)
            )
            names += [s.name for s in page.series]
            token = page.next_page_token
            if not token:
                break
            assert json.loads(decode_page_token(token))["after"] == names[-1].removeprefix(
                "series/"
            )
        assert names == [f"series/{n}" for n in mine]
        listed = await c.ListSeries(timeseries_pb2.ListSeriesRequest())
        assert [s.name for s in listed.series] == [f"series/{theirs}"]
        # The default tenant's first page is one of its own series, however many other
        # tenants' tables sort before its names ("_" comes before letters).
        first = await default.ListSeries(timeseries_pb2.ListSeriesRequest(page_size=1))
        assert len(first.series) == 1
        assert first.next_page_token
        seen: list[str] = []
        token = ""
        while True:
            page = await default.ListSeries(
                timeseries_pb2.ListSeriesRequest(page_size=1000, page_token=token)
            )
            seen += [s.name for s in page.series]
            token = page.next_page_token
            if not token:
                break
        assert [n for n in seen if n.startswith(f"series/{prefix}")] == [
            f"series/{n}" for n in defaults
        ]
        assert not [n for n in seen if n.startswith("series/_")]
    finally:
        for series_id in mine:
            await a.DeleteSeries(timeseries_pb2.DeleteSeriesRequest(name=f"series/{series_id}"))
        await c.DeleteSeries(timeseries_pb2.DeleteSeriesRequest(name=f"series/{theirs}"))
        for series_id in defaults:
            await default.DeleteSeries(
                timeseries_pb2.DeleteSeriesRequest(name=f"series/{series_id}")
            )


async def test_another_tenants_series_is_not_found_by_every_rpc(tstub: Stub) -> None:
    a, b = AsTenant(tstub, A), AsTenant(tstub, B)
    taken = _unique("sec_")
    missing = _unique("none_")
    await a.CreateSeries(timeseries_pb2.CreateSeriesRequest(series_id=taken, series=_series("v")))
    await a.WriteRows(
        timeseries_pb2.WriteRowsRequest(series=f"series/{taken}", rows=_rows("v", "h", [5]))
    )
    await a.CreateDownsamplingRule(_rule("daily", f"series/{taken}"))

    async def stream(name: str) -> AsyncIterator[timeseries_pb2.StreamWriteRowsRequest]:
        yield timeseries_pb2.StreamWriteRowsRequest(
            series=f"series/{name}", rows=_rows("v", "h", [1])
        )

    count = timeseries_pb2.Aggregation(function=timeseries_pb2.AGGREGATE_FUNCTION_COUNT)
    series_calls: list[Callable[[str], Any]] = [
        lambda n: b.GetSeries(timeseries_pb2.GetSeriesRequest(name=f"series/{n}")),
        lambda n: b.UpdateSeries(
            timeseries_pb2.UpdateSeriesRequest(
                series=timeseries_pb2.Series(
                    name=f"series/{n}",
                    ttl=timeseries_pb2.Ttl(value=1, unit=timeseries_pb2.TTL_UNIT_DAYS),
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["ttl"]),
            )
        ),
        lambda n: b.WriteRows(
            timeseries_pb2.WriteRowsRequest(series=f"series/{n}", rows=_rows("v", "h", [1]))
        ),
        lambda n: b.StreamWriteRows(stream(n)),
        lambda n: b.ReadRows(timeseries_pb2.ReadRowsRequest(series=f"series/{n}")),
        lambda n: b.ReadRows(timeseries_pb2.ReadRowsRequest(series=f"series/{n}__daily")),
        lambda n: b.AggregateRows(
            timeseries_pb2.AggregateRowsRequest(
                series=f"series/{n}",
                interval=duration_pb2.Duration(seconds=60),
                aggregations=[count],
            )
        ),
        lambda n: b.ReadLatest(
            timeseries_pb2.ReadLatestRequest(series=f"series/{n}", partition_by=["host"])
        ),
        lambda n: b.CreateDownsamplingRule(_rule("weekly", f"series/{n}")),
        lambda n: b.GetDownsamplingRule(
            timeseries_pb2.GetDownsamplingRuleRequest(name=f"series/{n}/downsamplingRules/daily")
        ),
        lambda n: b.ListDownsamplingRules(
            timeseries_pb2.ListDownsamplingRulesRequest(parent=f"series/{n}")
        ),
        lambda n: b.DeleteDownsamplingRule(
            timeseries_pb2.DeleteDownsamplingRuleRequest(name=f"series/{n}/downsamplingRules/daily")
        ),
        lambda n: b.DeleteSeries(timeseries_pb2.DeleteSeriesRequest(name=f"series/{n}")),
    ]
    try:
        for make in series_calls:
            await same_as_missing(make, taken, missing, reason="SERIES_NOT_FOUND")
        rules = await a.ListDownsamplingRules(
            timeseries_pb2.ListDownsamplingRulesRequest(parent=f"series/{taken}")
        )
        assert [r.name for r in rules.rules] == [f"series/{taken}/downsamplingRules/daily"]
        await _wait_readable(a, f"series/{taken}", 1)
    finally:
        await a.DeleteSeries(timeseries_pb2.DeleteSeriesRequest(name=f"series/{taken}"))


async def test_series_store_calls_follow_identity_var(lake: TenantLake) -> None:
    store = lake.series
    series_id = _unique("d_")
    schema = SeriesSchema(series_id, "ts", ("host",), (FieldSpec("v", FieldType.DOUBLE),))
    with acting_as(A):
        created = await store.create_series(schema)
        assert created.schema.series_id == series_id
    try:
        with acting_as(C), pytest.raises(NotFound):
            await store.get_series(series_id)
        with pytest.raises(NotFound):  # no identity: the default tenant
            await store.get_series(series_id)
        with acting_as(A):
            assert (await store.get_series(series_id)).schema == created.schema
    finally:
        with acting_as(A):
            await store.delete_series(series_id)


async def test_questdb_errors_name_the_series_as_its_tenant_knows_it(
    lake: TenantLake, settings: Settings
) -> None:
    """A second Lake drops a series this one still has in its schema cache: QuestDB's own
    error for the missing table reaches the caller with the logical name only."""
    series_id = _unique("gone_")
    schema = SeriesSchema(series_id, "ts", ("host",), (FieldSpec("v", FieldType.DOUBLE),))
    other_engine = QuestDBEngine(settings.engines.questdb, settings.lake.timeseries)
    await other_engine.open()
    try:
        other = TSStore(other_engine, settings.lake.timeseries)
        query = RangeQuery(series_id, None, None, (), (), (), 10)
        with acting_as(A):
            await lake.series.create_series(schema)
            await lake.series.read_range(query, "")  # caches the schema
            await other.delete_series(series_id)
            with pytest.raises(NotFound) as caught:
                await lake.series.read_range(query, "")
    finally:
        await other_engine.close()
    error = caught.value
    assert error.reason == "SERIES_NOT_FOUND"
    assert "does not exist" in error.message
    assert series_id in error.message
    assert f"_{A}__" not in error.message


# ---- spatial -------------------------------------------------------------------------


def _point(lon: float, lat: float) -> str:
    return json.dumps({"type": "Point", "coordinates": [lon, lat]})


def _feature(fid: str, lon: float, lat: float, owner: str) -> spatial_pb2.Feature:
    return spatial_pb2.Feature(
        id=fid, geometry=_point(lon, lat), properties=json.dumps({"owner": owner})
    )


def _owners(features: Sequence[Any]) -> set[str]:
    return {json.loads(f.properties)["owner"] for f in features}


async def test_two_tenants_have_a_layer_of_the_same_name_each_with_its_own_features(
    sstub: Stub, pg: psycopg.Connection[Any]
) -> None:
    a, b = AsTenant(sstub, A), AsTenant(sstub, B)
    layer_id = _unique("roads-")
    parent = f"layers/{layer_id}"
    await a.CreateLayer(
        spatial_pb2.CreateLayerRequest(layer_id=layer_id, layer=spatial_pb2.Layer(description="A"))
    )
    await b.CreateLayer(
        spatial_pb2.CreateLayerRequest(layer_id=layer_id, layer=spatial_pb2.Layer(description="B"))
    )
    try:
        await a.UpsertFeatures(
            spatial_pb2.UpsertFeaturesRequest(
                parent=parent, features=[_feature("f1", 0, 0, A), _feature("f2", 0.01, 0, A)]
            )
        )

        async def load() -> AsyncIterator[spatial_pb2.LoadFeaturesRequest]:
            yield spatial_pb2.LoadFeaturesRequest(
                parent=parent, features=[_feature("f1", 0.001, 0, B)]
            )

        acks = [ack async for ack in b.LoadFeatures(load())]
        assert [ack.written_count for ack in acks] == [1]
        for stub, tenant, ids in ((a, A, ["f1", "f2"]), (b, B, ["f1"])):
            layer = (await stub.GetLayer(spatial_pb2.GetLayerRequest(name=parent))).layer
            assert (layer.name, layer.description, layer.feature_count) == (
                parent,
                "A" if tenant == A else "B",
                len(ids),
            )
            listed = await stub.ListFeatures(spatial_pb2.ListFeaturesRequest(parent=parent))
            assert [f.id for f in listed.features] == ids
            assert _owners(listed.features) == {tenant}
            near = await stub.SearchNearest(
                spatial_pb2.SearchNearestRequest(parent=parent, geometry=_point(0, 0), limit=10)
            )
            assert _owners([r.feature for r in near.results]) == {tenant}
            within = await stub.SearchWithinDistance(
                spatial_pb2.SearchWithinDistanceRequest(
                    parent=parent, geometry=_point(0, 0), distance_meters=100_000
                )
            )
            assert sorted(r.feature.id for r in within.results) == ids
            box = await stub.SearchIntersecting(
                spatial_pb2.SearchIntersectingRequest(
                    parent=parent,
                    bbox=spatial_pb2.BoundingBox(west=-1, south=-1, east=1, north=1),
                )
            )
            assert _owners(box.features) == {tenant}
            got = await stub.GetFeature(spatial_pb2.GetFeatureRequest(name=f"{parent}/features/f1"))
            assert _owners([got.feature]) == {tenant}
        distance = await a.ComputeDistance(
            spatial_pb2.ComputeDistanceRequest(
                from_feature=f"{parent}/features/f1", to_feature=f"{parent}/features/f2"
            )
        )
        assert 1100 < distance.distance_meters < 1120
        error = await outcome(
            b.ComputeDistance(
                spatial_pb2.ComputeDistanceRequest(
                    from_feature=f"{parent}/features/f1", to_feature=f"{parent}/features/f2"
                )
            )
        )
        assert (error.metadata["code"], error.reason) == ("NOT_FOUND", "FEATURE_NOT_FOUND")
        # In PostGIS: each tenant's table and GiST indexes in its own schema, and the catalog.
        for tenant, rows in ((A, 2), (B, 1)):
            schema = f"lake_spatial__{tenant}"
            count = pg.execute(f'SELECT count(*) FROM "{schema}"."{layer_id}"').fetchone()
            assert count == (rows,)
            indexes = pg.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = %s",
                (schema, layer_id),
            ).fetchall()
            assert {i[0] for i in indexes} == {
                f"{layer_id}_pkey",
                f"{layer_id}_geom",
                f"{layer_id}_geog",
            }
        plain = pg.execute("SELECT to_regclass(%s)", (f'lake_spatial."{layer_id}"',)).fetchone()
        assert plain == (None,)
        catalog = pg.execute(
            "SELECT tenant FROM lake.spatial_layers WHERE layer_id = %s ORDER BY tenant",
            (layer_id,),
        ).fetchall()
        assert [r[0] for r in catalog] == sorted([A, B])
        await b.DeleteFeature(spatial_pb2.DeleteFeatureRequest(name=f"{parent}/features/f1"))
        assert [
            f.id
            for f in (await a.ListFeatures(spatial_pb2.ListFeaturesRequest(parent=parent))).features
        ] == ["f1", "f2"]
    finally:
        await a.DeleteLayer(spatial_pb2.DeleteLayerRequest(name=parent))
        layer = (await b.GetLayer(spatial_pb2.GetLayerRequest(name=parent))).layer
        assert layer.description == "B"
        await b.DeleteLayer(spatial_pb2.DeleteLayerRequest(name=parent))


async def test_each_tenant_lists_only_its_own_layers(sstub: Stub) -> None:
    a, c, default = AsTenant(sstub, A), AsTenant(sstub, C), AsTenant(sstub, "default")
    prefix = _unique("ll")
    mine = [f"{prefix}-{n}" for n in range(3)]
    theirs = f"{prefix}-9"
    for layer_id in mine:
        await a.CreateLayer(spatial_pb2.CreateLayerRequest(layer_id=layer_id))
    await c.CreateLayer(spatial_pb2.CreateLayerRequest(layer_id=theirs))
    try:
        names: list[str] = []
        token = ""
        while True:
            page = await a.ListLayers(spatial_pb2.ListLayersRequest(page_size=1, page_token=token))
            names += [layer.name for layer in page.layers]
            token = page.next_page_token
            if not token:
                break
            assert json.loads(decode_page_token(token))["p"] == [names[-1].removeprefix("layers/")]
        assert names == [f"layers/{n}" for n in mine]
        listed = await c.ListLayers(spatial_pb2.ListLayersRequest())
        assert [layer.name for layer in listed.layers] == [f"layers/{theirs}"]
        seen = await default.ListLayers(spatial_pb2.ListLayersRequest(page_size=1000))
        assert not [x for x in seen.layers if x.name.startswith(f"layers/{prefix}")]
    finally:
        for layer_id in mine:
            await a.DeleteLayer(spatial_pb2.DeleteLayerRequest(name=f"layers/{layer_id}"))
        await c.DeleteLayer(spatial_pb2.DeleteLayerRequest(name=f"layers/{theirs}"))


async def test_another_tenants_layer_is_not_found_by_every_rpc(sstub: Stub) -> None:
    a = AsTenant(sstub, A)
    taken = _unique("hidden-")
    missing = _unique("none-")
    await a.CreateLayer(spatial_pb2.CreateLayerRequest(layer_id=taken))
    await a.UpsertFeatures(
        spatial_pb2.UpsertFeaturesRequest(
            parent=f"layers/{taken}", features=[_feature("f1", 0, 0, A), _feature("f2", 1, 1, A)]
        )
    )
    # C has a schema of its own (another layer); a brand new tenant has none yet.
    c = AsTenant(sstub, C)
    own = _unique("own-")
    await c.CreateLayer(spatial_pb2.CreateLayerRequest(layer_id=own))
    fresh = AsTenant(sstub, FRESH)

    async def load(name: str) -> AsyncIterator[spatial_pb2.LoadFeaturesRequest]:
        yield spatial_pb2.LoadFeaturesRequest(
            parent=f"layers/{name}", features=[_feature("x", 0, 0, C)]
        )

    def calls(other: AsTenant) -> list[Callable[[str], Any]]:
        return [
            lambda n: other.GetLayer(spatial_pb2.GetLayerRequest(name=f"layers/{n}")),
            lambda n: other.UpsertFeatures(
                spatial_pb2.UpsertFeaturesRequest(
                    parent=f"layers/{n}", features=[_feature("x", 0, 0, C)]
                )
            ),
            lambda n: other.LoadFeatures(load(n)),
            lambda n: other.GetFeature(
                spatial_pb2.GetFeatureRequest(name=f"layers/{n}/features/f1")
            ),
            lambda n: other.ListFeatures(spatial_pb2.ListFeaturesRequest(parent=f"layers/{n}")),
            lambda n: other.DeleteFeature(
                spatial_pb2.DeleteFeatureRequest(name=f"layers/{n}/features/f1")
            ),
            lambda n: other.SearchWithinDistance(
                spatial_pb2.SearchWithinDistanceRequest(
                    parent=f"layers/{n}", geometry=_point(0, 0), distance_meters=1000
                )
            ),
            lambda n: other.SearchNearest(
                spatial_pb2.SearchNearestRequest(
                    parent=f"layers/{n}", geometry=_point(0, 0), limit=3
                )
            ),
            lambda n: other.SearchIntersecting(
                spatial_pb2.SearchIntersectingRequest(
                    parent=f"layers/{n}",
                    bbox=spatial_pb2.BoundingBox(west=-1, south=-1, east=1, north=1),
                )
            ),
            lambda n: other.ComputeDistance(
                spatial_pb2.ComputeDistanceRequest(
                    from_feature=f"layers/{n}/features/f1", to_feature=f"layers/{n}/features/f2"
                )
            ),
            lambda n: other.DeleteLayer(spatial_pb2.DeleteLayerRequest(name=f"layers/{n}")),
        ]

    try:
        for other in (c, fresh):
            for make in calls(other):
                await same_as_missing(make, taken, missing, reason="LAYER_NOT_FOUND")
        listed = await a.ListFeatures(spatial_pb2.ListFeaturesRequest(parent=f"layers/{taken}"))
        assert [f.id for f in listed.features] == ["f1", "f2"]
    finally:
        await a.DeleteLayer(spatial_pb2.DeleteLayerRequest(name=f"layers/{taken}"))
        await c.DeleteLayer(spatial_pb2.DeleteLayerRequest(name=f"layers/{own}"))


async def test_spatial_store_calls_follow_identity_var(lake: TenantLake) -> None:
    store = lake.spatial
    layer_id = _unique("direct-")
    with acting_as(A):
        await store.create_layer(layer_id, "mine")
    try:
        with acting_as(C), pytest.raises(NotFound):
            await store.get_layer(layer_id)
        with pytest.raises(NotFound):  # no identity: the default tenant
            await store.get_layer(layer_id)
        with acting_as(A):
            assert (await store.get_layer(layer_id)).description == "mine"
    finally:
        with acting_as(A):
            await store.delete_layer(layer_id)


# ---- the default tenant, in a real Lake process ------------------------------------


def _lake_env(settings: Settings, vectors: Path) -> dict[str, str]:
    return {
        "DATAPUNK_ENGINES__POSTGRES__URL": settings.engines.postgres.url,
        "DATAPUNK_ENGINES__QUESTDB__HTTP_URL": settings.engines.questdb.http_url,
        "DATAPUNK_ENGINES__QUESTDB__PG_URL": settings.engines.questdb.pg_url,
        "DATAPUNK_LAKE__VECTORS__PATH": str(vectors),
    }


async def _ready(call: Callable[[], Awaitable[Any]]) -> None:
    """Wait until the Lake's migrations ran (calls stop answering UNAVAILABLE)."""
    for _ in range(300):
        try:
            await call()
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
        await asyncio.sleep(0.1)
    raise TimeoutError("the Lake did not get ready")


async def test_the_default_tenant_keeps_plain_names_in_a_lake_process(
    tmp_path: Path,
    settings: Settings,
    tstub: Stub,
    sstub: Stub,
    qdb: psycopg.Connection[Any],
    pg: psycopg.Connection[Any],
) -> None:
    series_id = _unique("dflt_")
    layer_id = _unique("dflt-")
    collection = _unique("dflt-")
    vectors = tmp_path / "vectors"
    with run_service("lake", tmp_path, _lake_env(settings, vectors)) as service:
        # Nexus forwarding the calls of a client of the tenant "default".
        default_client = tenant_caller("default")
        async with authed_channel(service.address, "lake", on_behalf=default_client) as channel:
            plain_t = timeseries_pb2_grpc.TimeSeriesServiceStub(channel)
            plain_s = spatial_pb2_grpc.SpatialServiceStub(channel)
            plain_v = vectors_pb2_grpc.VectorServiceStub(channel)
            await _ready(lambda: plain_s.ListLayers(spatial_pb2.ListLayersRequest(page_size=1)))
            await plain_t.CreateSeries(
                timeseries_pb2.CreateSeriesRequest(series_id=series_id, series=_series("v"))
            )
            await plain_t.WriteRows(
                timeseries_pb2.WriteRowsRequest(
                    series=f"series/{series_id}", rows=_rows("v", "h", [1, 2])
                )
            )
            await plain_s.CreateLayer(spatial_pb2.CreateLayerRequest(layer_id=layer_id))
            await plain_s.UpsertFeatures(
                spatial_pb2.UpsertFeaturesRequest(
                    parent=f"layers/{layer_id}", features=[_feature("f1", 0, 0, "default")]
                )
            )
            await plain_v.CreateCollection(
                vectors_pb2.CreateCollectionRequest(
                    collection_id=collection, collection=_collection(2)
                )
            )
            try:
                # The engines hold them under their plain names, as before tenancy.
                wait_until(lambda: _table_count(qdb, series_id) == 2, timeout=30, interval=0.05)
                row = pg.execute(f'SELECT count(*) FROM lake_spatial."{layer_id}"').fetchone()
                assert row == (1,)
                assert (vectors / collection / "collection.json").is_file()
                # The same objects for a client of the tenant "default"; none for A.
                default_t, a_t = AsTenant(tstub, "default"), AsTenant(tstub, A)
                request = timeseries_pb2.GetSeriesRequest(name=f"series/{series_id}")
                assert (await default_t.GetSeries(request)).series.row_count == 2
                error = await outcome(a_t.GetSeries(request))
                assert error.metadata["code"] == "NOT_FOUND"
                default_s, a_s = AsTenant(sstub, "default"), AsTenant(sstub, A)
                layer = spatial_pb2.GetLayerRequest(name=f"layers/{layer_id}")
                assert (await default_s.GetLayer(layer)).layer.feature_count == 1
                error = await outcome(a_s.GetLayer(layer))
                assert error.metadata["code"] == "NOT_FOUND"
                # And the other way round: the default tenant does not see A's objects.
                await a_s.CreateLayer(spatial_pb2.CreateLayerRequest(layer_id=layer_id))
                listed = await plain_s.ListLayers(spatial_pb2.ListLayersRequest(page_size=1000))
                assert [x.name for x in listed.layers].count(f"layers/{layer_id}") == 1
                got = await plain_s.GetLayer(layer)
                assert got.layer.feature_count == 1
                await a_s.DeleteLayer(spatial_pb2.DeleteLayerRequest(name=f"layers/{layer_id}"))
            finally:
                await plain_t.DeleteSeries(
                    timeseries_pb2.DeleteSeriesRequest(name=f"series/{series_id}")
                )
                await plain_s.DeleteLayer(spatial_pb2.DeleteLayerRequest(name=f"layers/{layer_id}"))
                await plain_v.DeleteCollection(
                    vectors_pb2.DeleteCollectionRequest(name=f"collections/{collection}")
                )
