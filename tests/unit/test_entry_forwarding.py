"""The gRPC entry (the real ``GrpcEntry``) in process, in front of an in-process backend
that records what reaches it, over real loopback connections.

The platform's contracts have bidirectional streams and unary calls only, so the two
other call kinds are exercised through a small contract made here (package
``datapunk.lake.v9``, so the Lake's backend address owns it): unary, server-streaming,
client-streaming and bidirectional echo methods. The same backend observes what a real
service cannot show: the deadline and metadata it received, its call being cancelled,
and how far a stream ran ahead of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from datapunk_nexus.entry import GrpcEntry
from datapunk_nexus.policy import CallInfo, RequestGate, ResponseCache
from datapunk_shared.config import GrpcEntrySettings, NexusSettings, Settings
from datapunk_shared.errors import (
    ResourceExhausted,
    Unavailable,
    Unimplemented,
)
from datapunk_shared.rpc.client import error_from_rpc_error
from datapunk_shared.rpc.interceptor import REQUEST_ID_KEY
from datapunk_shared.rpc.status_codes import STATUS_DETAILS_KEY
from google.protobuf import descriptor_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from tests.support import free_port

SERVICE = "datapunk.lake.v9.EchoService"
UNARY, EXPAND, COLLECT, CHAT = (f"/{SERVICE}/{m}" for m in ("Unary", "Expand", "Collect", "Chat"))
MB = 1024 * 1024


def _descriptor_set(path: Path) -> Path:
    file = descriptor_pb2.FileDescriptorProto(
        name="datapunk/lake/v9/echo.proto", package="datapunk.lake.v9", syntax="proto3"
    )
    blob = file.message_type.add(name="Blob")
    blob.field.add(
        name="data",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    service = file.service.add(name="EchoService")
    for name, client_streaming, server_streaming in (
        ("Unary", False, False),
        ("Expand", False, True),
        ("Collect", True, False),
        ("Chat", True, True),
    ):
        service.method.add(
            name=name,
            input_type=".datapunk.lake.v9.Blob",
            output_type=".datapunk.lake.v9.Blob",
            client_streaming=client_streaming,
            server_streaming=server_streaming,
        )
    path.write_bytes(descriptor_pb2.FileDescriptorSet(file=[file]).SerializeToString())
    return path


@dataclass
class Seen:
    """What reached the backend."""

    metadata: list[dict[str, Any]] = field(default_factory=list)
    deadlines: list[float | None] = field(default_factory=list)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    clean_end: bool = False
    received: int = 0
    calls: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)


def _bad_request_status() -> status_pb2.Status:
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="bad blob")
    status.details.add().Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field="data", description="too short", reason="TOO_SHORT"
                )
            ]
        )
    )
    return status


def _backend_handler(seen: Seen) -> grpc.GenericRpcHandler:
    def record(context: Any) -> None:
        seen.calls += 1
        seen.metadata.append(dict(context.invocation_metadata()))
        seen.deadlines.append(context.time_remaining())

    async def unary(request: bytes, context: Any) -> bytes:
        record(context)
        if request == b"fail":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "bad blob",
                trailing_metadata=(
                    (STATUS_DETAILS_KEY, _bad_request_status().SerializeToString()),
                    ("x-backend", "trailer"),
                ),
            )
        if request == b"slow":
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                seen.cancelled.set()
                raise
        context.set_trailing_metadata((("x-backend", "trailer"),))
        return request

    async def expand(request: bytes, context: Any) -> AsyncIterator[bytes]:
        record(context)
        await context.send_initial_metadata((("x-backend-initial", "yes"),))
        for _ in range(3):
            yield request

    async def refuse(context: Any) -> None:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            "bad blob",
            trailing_metadata=((STATUS_DETAILS_KEY, _bad_request_status().SerializeToString()),),
        )

    async def collect(requests: AsyncIterator[bytes], context: Any) -> bytes:
        record(context)
        received = []
        async for request in requests:
            if request == b"fail":
                await refuse(context)  # at once, while the rest of the upload is on its way
            received.append(request)
        return b"".join(received)

    async def chat(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        record(context)
        try:
            first = True
            async for request in requests:
                seen.received += 1
                if request == b"fail":
                    await refuse(context)
                if first and request == b"hold":
                    await seen.release.wait()  # stop reading: the client must be held back
                first = False
                if len(request) < 100:
                    yield request
            # grpc.aio ends a request iterator alike for a half-close and a cancellation,
            # which arrives a moment later: only an end that outlives it is clean.
            await asyncio.sleep(0.2)
            seen.clean_end = True
        except asyncio.CancelledError:
            seen.cancelled.set()
            raise

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Expand": grpc.unary_stream_rpc_method_handler(expand),
            "Collect": grpc.stream_unary_rpc_method_handler(collect),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
        },
    )


@dataclass
class Env:
    entry: str
    seen: Seen


@asynccontextmanager
async def _running(
    tmp_path: Path, gate: RequestGate | None = None, cache: ResponseCache | None = None
) -> AsyncIterator[Env]:
    seen = Seen()
    backend = grpc.aio.server()
    backend_port = backend.add_insecure_port("127.0.0.1:0")
    backend.add_generic_rpc_handlers((_backend_handler(seen),))
    await backend.start()
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there: the Stream is "down"
    settings = Settings(
        nexus=NexusSettings(
            grpc_entry=GrpcEntrySettings(port=free_port()),
            descriptor_set=_descriptor_set(tmp_path / "echo.binpb"),
            backends={"lake": f"127.0.0.1:{backend_port}", "stream": closed, "nexus": closed},
        )
    )
    entry = GrpcEntry(settings, gate=gate, cache=cache)
    await entry.start()
    try:
        yield Env(entry.address, seen)
    finally:
        await entry.stop(None)
        await backend.stop(None)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with _running(tmp_path) as running:
        yield running


@pytest.fixture
async def channel(env: Env) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(env.entry) as channel:
        yield channel


async def _items(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def _refused_upload(
    target: str, method: str, *items: bytes, kind: str = "stream_unary"
) -> Any:
    """The error of a client-streaming call (``kind`` names the multi-callable) that is
    refused while it is being sent.

    Made with grpc's blocking client, in a thread. grpc.aio's client has a race here
    (grpc/grpc#36066): when one of its writes fails because the server has already ended
    the call, it may replace the server's status with INTERNAL "Internal error from
    Core". The blocking client keeps the server's status."""

    def upload() -> grpc.RpcError:
        with grpc.insecure_channel(target) as channel:
            call: Any = getattr(channel, kind)(method)
            try:
                answer = call(iter(items), timeout=10)
                if kind == "stream_stream":
                    list(answer)
            except grpc.RpcError as error:
                return error
        raise AssertionError(f"{method} was not refused")

    return await asyncio.to_thread(upload)


# --- the four call kinds ----------------------------------------------------------------


async def test_unary(channel: Any) -> None:
    call: Any = channel.unary_unary(UNARY)(b"hello")
    assert await call == b"hello"
    trailing = dict(await call.trailing_metadata())
    assert trailing["x-backend"] == "trailer"
    assert trailing[REQUEST_ID_KEY]


async def test_server_streaming(channel: Any) -> None:
    call: Any = channel.unary_stream(EXPAND)(b"x")
    assert [r async for r in call] == [b"x", b"x", b"x"]
    assert dict(await call.initial_metadata())["x-backend-initial"] == "yes"
    assert await call.code() is grpc.StatusCode.OK


async def test_client_streaming(channel: Any) -> None:
    call: Any = channel.stream_unary(COLLECT)(_items(b"a", b"b", b"c"))
    assert await call == b"abc"


async def test_bidirectional_streaming(env: Env, channel: Any) -> None:
    call: Any = channel.stream_stream(CHAT)()
    for word in (b"one", b"two", b"three"):
        await call.write(word)
        assert await call.read() == word  # each answer before the next request
    await call.done_writing()
    assert await call.code() is grpc.StatusCode.OK
    assert env.seen.clean_end


# --- what crosses -----------------------------------------------------------------------


async def test_metadata_and_request_id_reach_the_backend_and_come_back(
    env: Env, channel: Any
) -> None:
    call: Any = channel.unary_unary(UNARY)(
        b"m", metadata=(("x-tenant", "acme"), ("trace-bin", b"\x00\xff"))
    )
    await call
    got = env.seen.metadata[-1]
    assert got["x-tenant"] == "acme"
    assert got["trace-bin"] == b"\x00\xff"
    assert got["user-agent"].startswith("datapunk-nexus")  # the client's stays behind
    made_up = got[REQUEST_ID_KEY]
    assert dict(await call.trailing_metadata())[REQUEST_ID_KEY] == made_up

    call = channel.stream_stream(CHAT)(_items(b"a"), metadata=((REQUEST_ID_KEY, "mine-1"),))
    assert [r async for r in call] == [b"a"]
    assert env.seen.metadata[-1][REQUEST_ID_KEY] == "mine-1"
    assert dict(await call.trailing_metadata())[REQUEST_ID_KEY] == "mine-1"


async def test_the_callers_credentials_stay_at_the_entry(env: Env, channel: Any) -> None:
    # Nexus sends its own service token and the caller's identity instead (AccessGuard);
    # without a guard nothing of the kind is sent, and the caller's never is.
    credentials = (
        ("authorization", "Bearer t"),
        ("x-api-key", "dpk_a_b"),
        ("x-datapunk-on-behalf-of", "{}"),
    )
    await channel.unary_unary(UNARY)(b"m", metadata=(*credentials, ("x-tenant", "acme")))
    got = env.seen.metadata[-1]
    assert got["x-tenant"] == "acme"
    for key, _ in credentials:
        assert key not in got
    call = channel.stream_stream(CHAT)(_items(b"a"), metadata=credentials)
    assert [r async for r in call] == [b"a"]
    for key, _ in credentials:
        assert key not in env.seen.metadata[-1]


async def test_deadline_of_the_caller_reaches_the_backend(env: Env, channel: Any) -> None:
    await channel.unary_unary(UNARY)(b"d", timeout=5)
    remaining = env.seen.deadlines[-1]
    assert remaining is not None
    assert 0 < remaining <= 5.5  # the wire format rounds the timeout up a little
    # No deadline from the caller: a unary call gets the entry's default (30 s) ...
    await channel.unary_unary(UNARY)(b"d")
    remaining = env.seen.deadlines[-1]
    assert remaining is not None
    assert 5 < remaining <= 31  # the wire format rounds the timeout up
    # ... a stream none.
    assert [r async for r in channel.stream_stream(CHAT)(_items(b"d"))] == [b"d"]
    assert env.seen.deadlines[-1] is None


async def test_backend_status_details_and_trailers_pass_through_unchanged(
    channel: Any,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary(UNARY)(b"fail", metadata=((REQUEST_ID_KEY, "r-1"),))
    error = caught.value
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "bad blob"
    trailing = dict(error.trailing_metadata() or ())
    assert trailing[STATUS_DETAILS_KEY] == _bad_request_status().SerializeToString()
    assert trailing["x-backend"] == "trailer"
    assert trailing[REQUEST_ID_KEY] == "r-1"


@pytest.mark.parametrize(("method", "kind"), [(COLLECT, "stream_unary"), (CHAT, "stream_stream")])
async def test_an_upload_the_backend_refuses_midway_ends_with_the_backends_status(
    env: Env, method: str, kind: str
) -> None:
    # The backend ends the call at the first message while the rest of the upload is still
    # being written to it. grpc.aio's write race (see datapunk_nexus/backend_status.py)
    # turned about one in ten of these into INTERNAL at the entry, so a hundred tries show
    # it.
    upload = (b"fail", *[b"x" * 65536] * 15)
    for _ in range(100):
        failure = await _refused_upload(env.entry, method, *upload, kind=kind)
        assert failure.code() is grpc.StatusCode.INVALID_ARGUMENT, failure.details()
        assert failure.details() == "bad blob"
        trailing = dict(failure.trailing_metadata() or ())
        assert trailing[STATUS_DETAILS_KEY] == _bad_request_status().SerializeToString()
        assert trailing[REQUEST_ID_KEY]


# --- cancellation and back-pressure ---------------------------------------------------


async def test_cancelling_a_unary_call_cancels_the_backend_call(env: Env, channel: Any) -> None:
    call: Any = channel.unary_unary(UNARY)(b"slow")
    while env.seen.calls == 0:  # the backend has the call
        await asyncio.sleep(0.01)
    assert call.cancel()
    await asyncio.wait_for(env.seen.cancelled.wait(), 10)


async def test_cancelling_a_stream_cancels_the_backend_stream_and_never_ends_it_cleanly(
    env: Env, channel: Any
) -> None:
    call: Any = channel.stream_stream(CHAT)()
    await call.write(b"first")
    assert await call.read() == b"first"
    assert call.cancel()
    await asyncio.wait_for(env.seen.cancelled.wait(), 10)
    assert not env.seen.clean_end  # a cancelled upload never looks finished to the backend


async def test_a_backend_that_stops_reading_holds_the_client_back(env: Env, channel: Any) -> None:
    """64 MiB sent to a backend that reads nothing: flow control stops the client after
    a few window's worth; nothing buffers the rest in between. Then every message
    arrives, in order."""
    total = 64
    written = 0
    call: Any = channel.stream_stream(CHAT)()

    async def writer() -> None:
        nonlocal written
        await call.write(b"hold")
        for _ in range(total):
            await call.write(b"\x00" * MB)
            written += 1
        await call.done_writing()

    task = asyncio.create_task(writer())
    stalled_at = -1
    while stalled_at != written:  # until no write completes for half a second
        stalled_at = written
        await asyncio.sleep(0.5)
    assert not task.done()
    assert written < total // 2, f"{written} MiB accepted while the backend read nothing"
    env.seen.release.set()
    assert [r async for r in call] == [b"hold"]
    await task
    assert env.seen.received == total + 1
    assert await call.code() is grpc.StatusCode.OK


# --- the policy seam --------------------------------------------------------------------


class RecordingGate:
    """Admits calls, counting those in flight, or refuses them with ``refusal``."""

    def __init__(self, refusal: Exception | None = None) -> None:
        self.refusal = refusal
        self.in_flight = 0
        self.seen: list[CallInfo] = []

    @asynccontextmanager
    async def admit(self, call: CallInfo) -> AsyncIterator[Mapping[str, str]]:
        self.seen.append(call)
        if self.refusal is not None:
            raise self.refusal
        self.in_flight += 1
        try:
            yield {"RateLimit-Limit": "10", "RateLimit-Remaining": "9"}
        finally:
            self.in_flight -= 1

    async def check_rate(self, call: CallInfo) -> Mapping[str, str]:
        self.seen.append(call)
        if self.refusal is not None:
            raise self.refusal
        return {"RateLimit-Limit": "10", "RateLimit-Remaining": "9"}


async def test_gate_headers_go_out_and_the_gate_is_held_for_the_whole_call(
    tmp_path: Path,
) -> None:
    gate = RecordingGate()
    async with (
        _running(tmp_path, gate=gate) as running,
        grpc.aio.insecure_channel(running.entry) as typed_channel,
    ):
        channel: Any = typed_channel
        call: Any = channel.unary_unary(UNARY)(b"g")
        await call
        assert dict(await call.initial_metadata())["ratelimit-remaining"] == "9"
        assert gate.seen[-1].method == UNARY
        assert gate.seen[-1].request == b"g"
        assert gate.seen[-1].client_ip == "127.0.0.1"

        chat: Any = channel.stream_stream(CHAT)()
        await chat.write(b"a")
        assert await chat.read() == b"a"
        assert gate.in_flight == 1  # held while the stream is open
        assert dict(await chat.initial_metadata())["ratelimit-limit"] == "10"
        await chat.done_writing()
        assert await chat.code() is grpc.StatusCode.OK
        assert gate.in_flight == 0


@pytest.mark.parametrize(
    ("refusal", "code"),
    [
        (
            ResourceExhausted(
                "over the limit",
                retry_after=2.5,
                reason="RATE_LIMITED",
                metadata={"limit": "10", "remaining": "0"},
            ),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
        (Unavailable("too many calls", retry_after=0.1), grpc.StatusCode.UNAVAILABLE),
    ],
)
async def test_a_refusal_of_the_gate_is_its_status_with_retry_info(
    tmp_path: Path, refusal: Exception, code: grpc.StatusCode
) -> None:
    gate = RecordingGate(refusal)
    async with (
        _running(tmp_path, gate=gate) as running,
        grpc.aio.insecure_channel(running.entry) as typed_channel,
    ):
        channel: Any = typed_channel
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary(UNARY)(b"x")
        for failure in (caught.value, await _refused_upload(running.entry, COLLECT, b"x")):
            assert failure.code() is code
            error = error_from_rpc_error(failure)
            assert error.reason == getattr(refusal, "reason", None)
            assert getattr(error, "retry_after", None) == pytest.approx(
                getattr(refusal, "retry_after", None)
            )
            trailing = dict(failure.trailing_metadata() or ())
            assert trailing["retry-after"] in ("3", "1")
            assert trailing[REQUEST_ID_KEY]
        assert running.seen.calls == 0  # nothing reached the backend


class DictCache:
    """Caches the unary echo in a dict."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, bytes], bytes] = {}
        self.after: list[str] = []

    def cacheable(self, method: str) -> bool:
        return method == UNARY

    async def get(self, call: CallInfo) -> bytes | None:
        return self.entries.get((call.method, call.request))

    async def put(self, call: CallInfo, response: bytes) -> None:
        self.entries[(call.method, call.request)] = response

    async def after_call(self, call: CallInfo) -> None:
        self.after.append(call.method)


async def test_cacheable_unary_calls_are_answered_from_the_cache(tmp_path: Path) -> None:
    cache = DictCache()
    async with (
        _running(tmp_path, cache=cache) as running,
        grpc.aio.insecure_channel(running.entry) as typed_channel,
    ):
        channel: Any = typed_channel
        first: Any = channel.unary_unary(UNARY)(b"c")
        assert await first == b"c"
        again: Any = channel.unary_unary(UNARY)(b"c", metadata=((REQUEST_ID_KEY, "r-2"),))
        assert await again == b"c"
        assert running.seen.calls == 1  # the second one never reached the backend
        assert dict(await again.trailing_metadata())[REQUEST_ID_KEY] == "r-2"
        assert [r async for r in channel.unary_stream(EXPAND)(b"e")] == [b"e"] * 3
        assert running.seen.calls == 2  # streams are never cached
        assert cache.after == [UNARY, EXPAND]  # after every call not answered from the cache


# --- failures the entry decides ---------------------------------------------------------


async def test_a_backend_that_is_down_is_unavailable_with_retry_info(
    channel: Any,
) -> None:
    # Not in the descriptor set, but its package says the Stream owns it.
    method = "/datapunk.stream.v1.NewerService/DoIt"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary(method)(b"", timeout=10)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    error = error_from_rpc_error(caught.value)
    assert isinstance(error, Unavailable)
    assert error.reason == "BACKEND_UNAVAILABLE"
    assert error.metadata == {"backend": "stream"}
    assert error.retry_after == 1.0


async def test_an_unknown_service_is_unimplemented_with_error_info(env: Env, channel: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary("/acme.v1.Widgets/Get")(b"")
    upload = await _refused_upload(env.entry, "/acme.v1.Widgets/Upload", b"a", b"b")
    for failure in (caught.value, upload):
        assert failure.code() is grpc.StatusCode.UNIMPLEMENTED
        error = error_from_rpc_error(failure)
        assert isinstance(error, Unimplemented)
        assert error.reason == "UNKNOWN_METHOD"
