"""The peer of the Datapunk service in ``service_overhead``: a bare ``grpc.aio`` server,
no interceptors, no logging, no metrics (server reflection on, for ghz), serving
``datapunk.stream.v1.StatusService`` with a fixed response (the bytes of a real Stream
``GetStatus`` answer, read from a file).

    python -m bench.bare_server --port PORT --response FILE

It has the same server options as ``datapunk_shared.rpc.server.create_server`` and stops
on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

import grpc
from datapunk.stream.v1 import status_pb2, status_pb2_grpc
from grpc_reflection.v1alpha import reflection

# The generated stubs are untyped; use them through Any.
stream_grpc: Any = status_pb2_grpc


class BareStatusServicer(stream_grpc.StatusServiceServicer):  # type: ignore[misc]
    """Answers every call with the same message."""

    def __init__(self, response: status_pb2.GetStatusResponse) -> None:
        self.response = response

    async def GetStatus(self, request: Any, context: Any) -> status_pb2.GetStatusResponse:
        return self.response


async def serve(port: int, response: status_pb2.GetStatusResponse) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.max_send_message_length", 16 * 1024 * 1024),
        ]
    )
    stream_grpc.add_StatusServiceServicer_to_server(BareStatusServicer(response), server)
    # Reflection lets ghz find the method without a descriptor file; it costs nothing per call.
    reflection.enable_server_reflection(
        [
            status_pb2.DESCRIPTOR.services_by_name["StatusService"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise SystemExit(f"bare_server: port {port} is in use")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--response", type=Path, required=True)
    args = parser.parse_args()
    response = status_pb2.GetStatusResponse.FromString(args.response.read_bytes())
    asyncio.run(serve(args.port, response))


if __name__ == "__main__":
    main()
