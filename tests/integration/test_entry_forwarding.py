"""Nexus's gRPC entry in front of a real Lake, Stream and Nexus (each its own process):
every call kind of the real contracts, statuses and details passing through unchanged,
deadlines, request ids, cancellation, a backend that is down, unknown methods, and
reflection and health of the entry itself."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest
from datapunk.lake.v1 import spatial_pb2, spatial_pb2_grpc, timeseries_pb2, timeseries_pb2_grpc
from datapunk.lake.v1 import vectors_pb2 as vec
from datapunk.lake.v1 import vectors_pb2_grpc as vec_grpc
from datapunk.stream.v1 import status_pb2 as stream_status
from datapunk.stream.v1 import status_pb2_grpc as stream_status_grpc
from datapunk_shared.config import Settings, load_settings
from datapunk_shared.errors import InvalidArgument, Unavailable, Unimplemented
from datapunk_shared.health import ServingState
from datapunk_shared.rpc.client import LakeClient, NexusClient, StreamClient, error_from_rpc_error
from datapunk_shared.rpc.interceptor import REQUEST_ID_KEY
from datapunk_shared.rpc.status_codes import STATUS_DETAILS_KEY
from google.protobuf import duration_pb2
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.auth_support import entry_channel
from tests.support import (
    RunningService,
    engines_env,
    free_port,
    run_service,
    wait_for_grpc_health,
    wait_until,
)


class Stack:
    """The three services and the address of the entry (inside the Nexus process)."""

    def __init__(
        self, lake: RunningService, stream: RunningService, nexus: RunningService, entry: str
    ) -> None:
        self.lake, self.stream, self.nexus, self.entry = lake, stream, nexus, entry


def _entry_env(settings: Settings, backends: dict[str, str], port: int) -> dict[str, str]:
    return {
        **engines_env(settings),
        "DATAPUNK_NEXUS__GRPC_ENTRY__PORT": str(port),
        "DATAPUNK_NEXUS__BACKENDS": json.dumps(backends),
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = load_settings()
    tmp = tmp_path_factory.mktemp("entry")
    with ExitStack() as running:
        lake = running.enter_context(run_service("lake", tmp, engines_env(settings)))
        stream = running.enter_context(run_service("stream", tmp, engines_env(settings)))
        port = free_port()
        backends = {"lake": lake.address, "stream": stream.address}
        nexus = running.enter_context(
            run_service("nexus", tmp, _entry_env(settings, backends, port))
        )
        entry = f"127.0.0.1:{port}"
        _wait_until_ready(nexus, entry)
        yield Stack(lake, stream, nexus, entry)


def _wait_until_ready(nexus: RunningService, entry: str) -> None:
    """The entry answers, and Nexus is SERVING: its signing keys are loaded (it cannot
    call a backend without its service token) and its bootstrap administrator exists."""
    wait_for_grpc_health(entry)
    wait_until(lambda: nexus.health() == health_pb2.HealthCheckResponse.SERVING, timeout=30)


@pytest.fixture
async def channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    # The test Nexus's bootstrap administrator: data calls need a credential.
    async with entry_channel(stack.entry) as channel:
        yield channel


# --- unary ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "client_class"),
    [("lake", LakeClient), ("stream", StreamClient), ("nexus", NexusClient)],
)
async def test_get_status_of_each_service_through_one_address(
    stack: Stack, name: str, client_class: type[LakeClient]
) -> None:
    async with client_class(stack.entry) as client:
        report = await client.get_status(refresh=True)
    assert report.service == name
    assert report.state in (ServingState.SERVING, ServingState.NOT_SERVING)
    assert report.engines


async def test_error_status_and_details_pass_through_unchanged(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    request = stream_status.GetStatusRequest(engines=["BAD NAME"])
    failures = []
    for address in (stack.entry, stack.stream.address):
        async with grpc.aio.insecure_channel(address) as ch:
            stub = stream_status_grpc.StatusServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetStatus(request, metadata=((REQUEST_ID_KEY, "same-id"),))
        failures.append(caught.value)
    through, direct = failures
    assert through.code() == direct.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert through.details() == direct.details()
    assert _details(through) == _details(direct)
    assert _details(through) is not None
    error = error_from_rpc_error(through)
    assert isinstance(error, InvalidArgument)
    assert [v.field for v in error.violations] == ["engines[0]"]
    assert dict(through.trailing_metadata() or ())[REQUEST_ID_KEY] == "same-id"


def _details(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY:
            return status_pb2.Status.FromString(value)
    return None


async def test_bad_request_from_the_lake_keeps_its_field_violations(
    channel: grpc.aio.Channel,
) -> None:
    stub = vec_grpc.VectorServiceStub(channel)
    name = f"e{uuid.uuid4().hex[:12]}"
    await stub.CreateCollection(
        vec.CreateCollectionRequest(
            collection_id=name,
            collection=vec.Collection(vector_size=3, distance=vec.DISTANCE_COSINE),
        )
    )
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.UpsertPoints(
                vec.UpsertPointsRequest(
                    collection=f"collections/{name}",
                    points=[vec.Point(id=vec.PointId(num=1), vector=[1.0])],
                )
            )
        error = error_from_rpc_error(caught.value)
        assert isinstance(error, InvalidArgument)
        assert error.violations[0].field == "points[0].vector"
        assert error.violations[0].reason == "VECTOR_SIZE_MISMATCH"
    finally:
        await stub.DeleteCollection(vec.DeleteCollectionRequest(name=f"collections/{name}"))


# --- streams --------------------------------------------------------------------------


async def test_import_points_bidirectional_stream(channel: grpc.aio.Channel) -> None:
    stub = vec_grpc.VectorServiceStub(channel)
    name = f"e{uuid.uuid4().hex[:12]}"
    collection = f"collections/{name}"
    await stub.CreateCollection(
        vec.CreateCollectionRequest(
            collection_id=name,
            collection=vec.Collection(vector_size=4, distance=vec.DISTANCE_COSINE),
        )
    )

    async def batches() -> AsyncIterator[vec.ImportPointsRequest]:
        for seq in range(5):
            yield vec.ImportPointsRequest(
                collection=collection,
                sequence=seq,
                points=[
                    vec.Point(id=vec.PointId(num=seq * 10 + i), vector=[1.0, i, seq, 0.5])
                    for i in range(10)
                ],
            )

    try:
        acks = [ack async for ack in stub.ImportPoints(batches())]
        assert [a.sequence for a in acks] == list(range(5))
        assert acks[-1].total_upserted == 50
        count = await stub.CountPoints(vec.CountPointsRequest(collection=collection))
        assert count.count == 50
    finally:
        await stub.DeleteCollection(vec.DeleteCollectionRequest(name=collection))


async def test_stream_write_rows_bidirectional_stream(channel: grpc.aio.Channel) -> None:
    pb: Any = timeseries_pb2
    stub = timeseries_pb2_grpc.TimeSeriesServiceStub(channel)
    series_id = f"e_{uuid.uuid4().hex[:12]}"
    await stub.CreateSeries(
        pb.CreateSeriesRequest(
            series_id=series_id,
            series=pb.Series(
                tags=["host"],
                fields=[pb.FieldSchema(name="usage", type=pb.FIELD_TYPE_DOUBLE)],
                partitioning=pb.PARTITIONING_DAY,
            ),
        )
    )
    t0, second = 1_700_000_000_000_000, 1_000_000

    async def requests() -> AsyncIterator[Any]:
        for b in range(4):
            stamps = [t0 + (b * 50 + i) * second for i in range(50)]
            yield pb.StreamWriteRowsRequest(
                series=f"series/{series_id}",
                rows=pb.RowBatch(
                    columns=[
                        pb.ColumnData(name="ts", timestamps=pb.TimestampValues(values=stamps)),
                        pb.ColumnData(name="host", strings=pb.StringValues(values=["h"] * 50)),
                        pb.ColumnData(name="usage", doubles=pb.DoubleValues(values=[1.0] * 50)),
                    ]
                ),
            )

    try:
        acks = [ack async for ack in stub.StreamWriteRows(requests())]
        assert [a.batch_index for a in acks] == [0, 1, 2, 3]
        assert acks[-1].total_row_count == 200
    finally:
        await stub.DeleteSeries(pb.DeleteSeriesRequest(name=f"series/{series_id}"))


async def test_load_features_bidirectional_stream(channel: grpc.aio.Channel) -> None:
    pb: Any = spatial_pb2
    stub = spatial_pb2_grpc.SpatialServiceStub(channel)
    layer_id = f"e_{uuid.uuid4().hex[:12]}"
    layer = f"layers/{layer_id}"
    await stub.CreateLayer(pb.CreateLayerRequest(layer_id=layer_id))

    def feature(fid: str, lon: float, lat: float) -> Any:
        geometry = json.dumps({"type": "Point", "coordinates": [lon, lat]})
        return pb.Feature(id=fid, geometry=geometry, properties="{}")

    async def batches() -> AsyncIterator[Any]:
        for b in range(3):
            yield pb.LoadFeaturesRequest(
                parent=layer, features=[feature(f"f{b}-{n}", b, n) for n in range(20)]
            )

    try:
        acks = [ack async for ack in stub.LoadFeatures(batches())]
        assert [a.batch_index for a in acks] == [0, 1, 2]
        assert acks[-1].total_written_count == 60
    finally:
        await stub.DeleteLayer(pb.DeleteLayerRequest(name=layer))


# --- deadlines, request ids, cancellation ---------------------------------------------


class Slow:
    """A Stream whose Redis never answers (a refreshed GetStatus waits for its probe), and
    an entry in front of it."""

    def __init__(self, stream: RunningService, entry: str) -> None:
        self.stream, self.entry = stream, entry

    def in_flight(self) -> float:
        url = f"http://127.0.0.1:{self.stream.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("datapunk_rpc_in_flight{")
        )

    def outcome(self, request_id: str) -> str | None:
        """The code the Stream logged for the call with ``request_id`` (it logs failures)."""
        for text in self.stream.log().splitlines():
            if request_id in text and '"rpc"' in text:
                code: str = json.loads(text)["code"]
                return code
        return None


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory, stack: Stack) -> Iterator[Slow]:
    tmp = tmp_path_factory.mktemp("slow")
    hole = _blackhole()
    env = {
        **engines_env(load_settings()),
        "DATAPUNK_ENGINES__REDIS__URL": f"redis://127.0.0.1:{hole.getsockname()[1]}/0",
    }
    try:
        with ExitStack() as running:
            stream = running.enter_context(run_service("stream", tmp, env))
            port = free_port()
            backends = {"lake": stack.lake.address, "stream": stream.address}
            nexus = running.enter_context(
                run_service("nexus", tmp, _entry_env(load_settings(), backends, port))
            )
            entry = f"127.0.0.1:{port}"
            _wait_until_ready(nexus, entry)
            yield Slow(stream, entry)
    finally:
        hole.close()


def _blackhole() -> socket.socket:
    """A port that accepts connections (the kernel does) but never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    return listener


async def _eventually(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """``wait_until`` that lets the event loop (and so the calls in flight) run."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await asyncio.to_thread(predicate):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.1)


_SLOW_REQUEST = stream_status.GetStatusRequest(
    refresh=True, engines=["redis"], probe_timeout=duration_pb2.Duration(seconds=20)
)


async def test_a_short_deadline_reaches_the_backend(slow: Slow) -> None:
    rid = f"deadline-{uuid.uuid4().hex[:8]}"
    async with grpc.aio.insecure_channel(slow.entry) as ch:
        stub = stream_status_grpc.StatusServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetStatus(_SLOW_REQUEST, timeout=0.5, metadata=((REQUEST_ID_KEY, rid),))
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    # The Stream's own call ended, long before its 20 s probe could have.
    wait_until(lambda: slow.outcome(rid) is not None, timeout=15)
    assert slow.outcome(rid) in ("CANCELLED", "DEADLINE_EXCEEDED")


async def test_client_cancellation_cancels_the_backend_call(slow: Slow) -> None:
    rid = f"cancel-{uuid.uuid4().hex[:8]}"
    async with grpc.aio.insecure_channel(slow.entry) as ch:
        stub = stream_status_grpc.StatusServiceStub(ch)
        call = stub.GetStatus(_SLOW_REQUEST, timeout=60, metadata=((REQUEST_ID_KEY, rid),))
        await _eventually(lambda: slow.in_flight() >= 1)  # the Stream is working on it
        assert call.cancel()
        assert await call.code() is grpc.StatusCode.CANCELLED
    wait_until(lambda: slow.outcome(rid) is not None, timeout=15)
    assert slow.outcome(rid) == "CANCELLED"


async def test_request_id_is_added_and_reaches_the_backend(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    stub = stream_status_grpc.StatusServiceStub(channel)
    call = stub.GetStatus(stream_status.GetStatusRequest())
    await call
    trailing = [v for k, v in await call.trailing_metadata() or () if k == REQUEST_ID_KEY]
    assert len(trailing) == 1
    assert trailing[0]
    # A failing call is logged by the backend with the id the entry made up.
    call = stub.GetStatus(stream_status.GetStatusRequest(engines=["BAD NAME"]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    made_up = dict(caught.value.trailing_metadata() or ())[REQUEST_ID_KEY]
    wait_until(lambda: made_up in stack.stream.log())


# --- failures the entry decides -------------------------------------------------------


async def test_backend_down_is_unavailable_with_retry_info(tmp_path: Path, stack: Stack) -> None:
    port = free_port()
    backends = {"lake": f"127.0.0.1:{free_port()}", "stream": stack.stream.address}
    with run_service("nexus", tmp_path, _entry_env(load_settings(), backends, port)) as nexus:
        entry = f"127.0.0.1:{port}"
        _wait_until_ready(nexus, entry)
        async with entry_channel(entry) as ch:
            stub = vec_grpc.VectorServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ListCollections(vec.ListCollectionsRequest(), timeout=10)
            async with StreamClient(entry) as client:  # the other backends still answer
                assert (await client.get_status()).service == "stream"
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    error = error_from_rpc_error(caught.value)
    assert isinstance(error, Unavailable)
    assert error.reason == "BACKEND_UNAVAILABLE"
    assert error.metadata == {"backend": "lake"}
    assert error.retry_after is not None
    assert error.retry_after > 0


async def test_unknown_service_is_unimplemented_with_error_info(
    channel: grpc.aio.Channel,
) -> None:
    call: Any = channel.unary_unary("/acme.widgets.v1.WidgetService/GetWidget")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"")
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
    error = error_from_rpc_error(caught.value)
    assert isinstance(error, Unimplemented)
    assert error.reason == "UNKNOWN_METHOD"
    assert error.metadata["method"] == "/acme.widgets.v1.WidgetService/GetWidget"


async def test_unknown_method_of_a_known_service_is_refused_as_unmapped(
    stack: Stack, channel: grpc.aio.Channel
) -> None:
    # A method missing from the descriptor set would go to its owner, but nobody has
    # decided what it needs, so even the administrator is refused and it never leaves.
    rid = f"unmapped-{uuid.uuid4().hex[:8]}"
    call: Any = channel.unary_unary("/datapunk.lake.v1.VectorService/NoSuchMethod")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"", metadata=((REQUEST_ID_KEY, rid),))
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    error = error_from_rpc_error(caught.value)
    assert error.reason == "UNMAPPED_METHOD"
    assert error.metadata["method"] == "/datapunk.lake.v1.VectorService/NoSuchMethod"
    assert rid not in stack.lake.log()


# --- the entry's own services ---------------------------------------------------------


def test_reflection_lists_every_service_behind_the_entry(stack: Stack) -> None:
    with grpc.insecure_channel(stack.entry) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="datapunk.lake.v1.VectorService"
            ),
        ]
        listed, described = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    names = {s.name for s in listed.list_services_response.service}
    assert {
        "datapunk.lake.v1.StatusService",
        "datapunk.lake.v1.VectorService",
        "datapunk.lake.v1.TimeSeriesService",
        "datapunk.lake.v1.SpatialService",
        "datapunk.stream.v1.StatusService",
        "datapunk.nexus.v1.StatusService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    assert described.file_descriptor_response.file_descriptor_proto


def test_health_of_the_entry_itself(stack: Stack) -> None:
    with grpc.insecure_channel(stack.entry) as ch:
        response = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
