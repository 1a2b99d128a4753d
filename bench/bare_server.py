"""The peer of the Datapunk service in ``service_overhead``: a bare ``grpc.aio`` server,
no interceptors, no logging, no metrics (server reflection on, for ghz), serving
``datapunk.stream.v1.StatusService`` with a fixed response (the bytes of a real Stream
``GetStatus`` answer, read from a file).

    python -m bench.bare_server --port PORT --response FILE

It is built by ``datapunk_shared.rpc.server.create_server`` (the services' server
options), without interceptors or edges, and stops on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

from datapunk.stream.v1 import status_pb2, status_pb2_grpc
from datapunk_shared.rpc.server import PortInUse, create_server
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
    try:
        server, _ = create_server(f"127.0.0.1:{port}")
    except PortInUse as exc:
        raise SystemExit(f"bare_server: {exc}") from None
    stream_grpc.add_StatusServiceServicer_to_server(BareStatusServicer(response), server)
    # Reflection lets ghz find the method without a descriptor file; it costs nothing per call.
    reflection.enable_server_reflection(
        [
            status_pb2.DESCRIPTOR.services_by_name["StatusService"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
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
