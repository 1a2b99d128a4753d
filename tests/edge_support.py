# mypy: disable-error-code="import-untyped"
"""A test backend for the REST edge: the synthetic contract in tests/edge_protos (every
kind of HTTP binding and streaming, and a v2 package beside v1), compiled with protoc into
a descriptor set, served by a real in-process grpc.aio server with the Datapunk edges."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path
from typing import Any

import google.api
import grpc
import grpc_tools
from datapunk_nexus.backends import Backends
from datapunk_nexus.edge.routes import RouteTable, load_routes
from datapunk_nexus.edge.server import RestEdge
from datapunk_nexus.edge.transcode import message_class
from datapunk_nexus.policy import RequestGate, ResponseCache
from datapunk_shared.config import RestEdgeSettings
from datapunk_shared.errors import (
    DatapunkError,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from datapunk_shared.rpc.interceptor import DatapunkServerInterceptor
from datapunk_shared.rpc.server import create_server
from grpc_tools import protoc

PROTOS = Path(__file__).resolve().parent / "edge_protos"
V1 = "datapunk.test.v1.ItemService"
V2 = "datapunk.test.v2.ItemService"


@cache
def edge_descriptor_set(out_dir: str = "/tmp") -> Path:
    """The synthetic contract as a descriptor set with imports and source info (what
    ``buf build`` writes for the real contracts)."""
    api_root = Path(google.api.__file__).resolve().parents[2]
    wkt = Path(grpc_tools.__file__).resolve().parent / "_proto"
    out = Path(out_dir) / f"datapunk-edge-test-{abs(hash(str(PROTOS)))}.binpb"
    code = protoc.main(
        [
            "protoc",
            f"-I{api_root}",
            f"-I{wkt}",
            f"-I{PROTOS}",
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            "datapunk/test/v1/items.proto",
            "datapunk/test/v2/items.proto",
        ]
    )
    assert code == 0, "protoc failed on tests/edge_protos"
    return out


@cache
def edge_routes() -> RouteTable:
    return load_routes(edge_descriptor_set())


def _cls(name: str) -> Any:
    return message_class(edge_routes().pool.FindMessageTypeByName(name))


# The item name the streaming handlers refuse with INVALID_ARGUMENT as soon as it arrives.
REFUSED = "refuse"


def _error_for(code: int) -> DatapunkError:
    if code == 3:
        return InvalidArgument(
            "bad item",
            violations=[FieldViolation("item.name", "must not be empty", "required")],
            reason="BAD_ITEM",
        )
    if code == 5:
        return NotFound("no such item", reason="ITEM_NOT_FOUND", metadata={"item": "x"})
    if code == 8:
        return ResourceExhausted("slow down", retry_after=3)
    if code == 14:
        return Unavailable("engine down", retry_after=2, reason="ENGINE_DOWN")
    return DatapunkError(f"code {code}")


class ItemBackend:
    """Handlers of both ItemService versions on dynamic message classes."""

    def __init__(self) -> None:
        self.item = _cls("datapunk.test.v1.Item")
        self.upload_response = _cls("datapunk.test.v1.UploadItemsResponse")
        self.control_response = _cls("datapunk.test.v1.ControlResponse")
        self.in_flight_streams = 0
        self.sent = 0
        self.metadata_seen: list[dict[str, str]] = []

    async def get_item(self, request: Any, context: Any) -> Any:
        return request

    async def create_item(self, request: Any, context: Any) -> Any:
        item = self.item()
        item.CopyFrom(request.item)
        if not item.name:
            item.name = f"{request.parent}/items/new"
        return item

    async def update_item(self, request: Any, context: Any) -> Any:
        item = self.item()
        item.CopyFrom(request.item)
        item.mask.CopyFrom(request.update_mask)
        return item

    async def control(self, request: Any, context: Any) -> Any:
        seconds = request.sleep.ToTimedelta().total_seconds()
        if seconds:
            await asyncio.sleep(seconds)
        if request.fail_code:
            raise _error_for(request.fail_code)
        received = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        self.metadata_seen.append(received)
        metadata = sorted(f"{k}={v}" for k, v in received.items())
        return self.control_response(item=request.item, metadata=metadata)

    async def watch_items(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.in_flight_streams += 1
        try:
            for i in range(request.count):
                self.sent += 1
                yield self.item(
                    name=f"{request.parent}/items/{i}", count=i, blob=b"x" * request.blob_bytes
                )
            if request.fail_code:
                raise _error_for(request.fail_code)
        finally:
            self.in_flight_streams -= 1

    async def upload_items(self, requests: AsyncIterator[Any], context: Any) -> Any:
        names = []
        async for item in requests:
            if item.name == REFUSED:  # at once, while the rest of the upload is on its way
                raise _error_for(3)
            names.append(item.name)
        return self.upload_response(count=len(names), names=names)

    async def chat_items(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async for item in requests:
            if item.name == REFUSED:
                raise _error_for(3)
            yield item

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        def unary(fn: Any, request: str, response: str) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                fn,
                request_deserializer=_cls(request).FromString,
                response_serializer=_cls(response).SerializeToString,
            )

        item = "datapunk.test.v1.Item"
        v1 = {
            "GetItem": unary(self.get_item, item, item),
            "CreateItem": unary(self.create_item, "datapunk.test.v1.CreateItemRequest", item),
            "UpdateItem": unary(self.update_item, "datapunk.test.v1.UpdateItemRequest", item),
            "Control": unary(
                self.control, "datapunk.test.v1.ControlRequest", "datapunk.test.v1.ControlResponse"
            ),
            "WatchItems": grpc.unary_stream_rpc_method_handler(
                self.watch_items,
                request_deserializer=_cls("datapunk.test.v1.WatchItemsRequest").FromString,
                response_serializer=_cls(item).SerializeToString,
            ),
            "UploadItems": grpc.stream_unary_rpc_method_handler(
                self.upload_items,
                request_deserializer=_cls(item).FromString,
                response_serializer=_cls("datapunk.test.v1.UploadItemsResponse").SerializeToString,
            ),
            "ChatItems": grpc.stream_stream_rpc_method_handler(
                self.chat_items,
                request_deserializer=_cls(item).FromString,
                response_serializer=_cls(item).SerializeToString,
            ),
        }
        item2 = "datapunk.test.v2.Item"
        v2 = {"GetItem": unary(self.get_item, item2, item2)}
        return [
            grpc.method_handlers_generic_handler(V1, v1),
            grpc.method_handlers_generic_handler(V2, v2),
        ]


@asynccontextmanager
async def item_backend() -> AsyncIterator[tuple[str, ItemBackend]]:
    """A real grpc.aio server with the Datapunk edges serving ``ItemBackend``."""
    backend = ItemBackend()
    server, port = create_server(
        "127.0.0.1:0", edges=DatapunkServerInterceptor("test", access_log="off")
    )
    server.add_generic_rpc_handlers(tuple(backend.handlers()))
    await server.start()
    try:
        yield f"127.0.0.1:{port}", backend
    finally:
        await server.stop(None)


@asynccontextmanager
async def rest_edge(
    addresses: Mapping[str, str],
    *,
    table: RouteTable | None = None,
    gate: RequestGate | None = None,
    cache: ResponseCache | None = None,
    **settings: Any,
) -> AsyncIterator[RestEdge]:
    """A started REST edge on a free port (``edge.port``) in front of ``addresses``."""
    config = RestEdgeSettings(port=1, **settings).model_copy(update={"port": 0})
    edge = RestEdge(
        config,
        table or edge_routes(),
        Backends(addresses, max_message_bytes=16 * 1024 * 1024),
        gate=gate,
        cache=cache,
    )
    await edge.start()
    try:
        yield edge
    finally:
        await edge.stop()
