"""The reference for ``grpc_entry``: the least a ``grpc.aio`` pass-through can do.

    python -m bench.bare_proxy --port PORT --target HOST:PORT

Every unary-unary call, whatever its method, is forwarded as raw bytes to ``target`` on
one channel, with the caller's metadata, and the answer's bytes are returned: no
interceptors, no identity, no gate, no request id, no logging, no metrics, no error
mapping (a failed call surfaces as whatever grpc.aio makes of the exception). It is not
a product and must never become one; it exists so that the entry benchmark can show, in
the same run, how much of a Python proxy's cost is ``grpc.aio`` itself (one server side
and one client side per call) rather than what Nexus adds. Stops on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc
from datapunk_shared.rpc.server import PortInUse, create_server

from bench.bare_server import serve_until_signalled


class PassThrough(grpc.GenericRpcHandler):
    """One cached bytes-in, bytes-out handler per method."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes]:
        method: str = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            call: Any = self._channel.unary_unary(method)  # no (de)serializers: bytes

            async def forward(request: bytes, context: Any) -> bytes:
                answer: bytes = await call(request, metadata=context.invocation_metadata())
                return answer

            handler = grpc.unary_unary_rpc_method_handler(forward)
            self._handlers[method] = handler
        return handler


async def serve(port: int, target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            server, _ = create_server(f"127.0.0.1:{port}")  # the services' server options
        except PortInUse as exc:
            raise SystemExit(f"bare_proxy: {exc}") from None
        server.add_generic_rpc_handlers((PassThrough(channel),))
        await serve_until_signalled(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.target))


if __name__ == "__main__":
    main()
