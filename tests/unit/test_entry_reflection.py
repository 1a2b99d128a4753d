"""The gRPC entry's reflection also describes the error details every service sends, so
grpcurl through the entry shows ``ErrorInfo``/``BadRequest``/``RetryInfo`` decoded."""

from __future__ import annotations

import grpc
from datapunk_nexus.entry.reflection import enable_reflection
from datapunk_nexus.entry.routes import DEFAULT_DESCRIPTOR_SET, load_descriptor_set
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


async def test_reflection_describes_the_error_details() -> None:
    server = grpc.aio.server()
    files = load_descriptor_set(DEFAULT_DESCRIPTOR_SET)
    enable_reflection(server, files, ["datapunk.lake.v1.VectorService"])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            symbols = [
                "google.rpc.ErrorInfo",
                "google.rpc.BadRequest",
                "google.rpc.RetryInfo",
                "datapunk.lake.v1.VectorService",
            ]
            requests = [
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=s) for s in symbols
            ]
            answers = [a async for a in stub.ServerReflectionInfo(iter(requests), timeout=10)]
    finally:
        await server.stop(None)
    for symbol, answer in zip(symbols, answers, strict=True):
        assert answer.WhichOneof("message_response") == "file_descriptor_response", symbol
        names = set()
        for raw in answer.file_descriptor_response.file_descriptor_proto:
            file = descriptor_pb2.FileDescriptorProto.FromString(raw)
            names |= {m.name for m in file.message_type} | {s.name for s in file.service}
        assert symbol.rsplit(".", 1)[1] in names, symbol
