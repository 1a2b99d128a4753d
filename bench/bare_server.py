"""The peer of a Datapunk service in the benchmarks: a bare ``grpc.aio`` server, no
interceptors, no logging, no metrics (server reflection on, for ghz), answering every call
with a fixed response read from a file.

    python -m bench.bare_server --port PORT --response FILE
    python -m bench.bare_server --port PORT --response FILE --method /pkg.Service/Method \
        [--module pkg_pb2]

Without ``--method`` it serves ``datapunk.stream.v1.StatusService`` (``service_overhead``:
the bytes of a real Stream ``GetStatus`` answer). With ``--method`` it serves that one
unary method through a generic handler answering the response file (``spatial``,
``vectors``: a real Lake answer to the same kind of call), so a benchmark can show what
gRPC alone costs a call of that shape and size. With ``--module`` (the generated module
of the method's service) each request is parsed into its message and the response
message serialized, as any server of that method must; nothing else is done.

It is built by ``datapunk_shared.rpc.server.create_server`` (the services' server
options), without interceptors or edges, and stops on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from datapunk.stream.v1 import status_pb2, status_pb2_grpc
from datapunk_shared.rpc.server import PortInUse, create_server
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection

from bench.common import REPO_ROOT, clean_env, free_port, start_logged, stop_process, wait_grpc

# The generated stubs are untyped; use them through Any.
stream_grpc: Any = status_pb2_grpc


class BareStatusServicer(stream_grpc.StatusServiceServicer):  # type: ignore[misc]
    """Answers every call with the same message."""

    def __init__(self, response: status_pb2.GetStatusResponse) -> None:
        self.response = response

    async def GetStatus(self, request: Any, context: Any) -> status_pb2.GetStatusResponse:
        return self.response


def _fixed_answer(method: str, response: bytes, module: str | None) -> grpc.GenericRpcHandler:
    """A handler of the unary ``method`` (``/pkg.Service/Method``) answering ``response``.
    With ``module`` (the generated ``_pb2`` module that defines the service) the request is
    parsed into its message and the response, parsed once, is serialized on every call,
    as a real server of that method must; without it bytes go in and out as they are."""
    service, _, name = method.lstrip("/").rpartition("/")
    if module is None:

        async def raw(request: bytes, context: Any) -> bytes:
            return response

        handler: Any = grpc.unary_unary_rpc_method_handler(raw)
    else:
        importlib.import_module(module)
        descriptor = descriptor_pool.Default().FindServiceByName(service).methods_by_name[name]
        request_type = message_factory.GetMessageClass(descriptor.input_type)
        answer = message_factory.GetMessageClass(descriptor.output_type).FromString(response)

        async def parsed(request: Any, context: Any) -> Any:
            return answer

        handler = grpc.unary_unary_rpc_method_handler(
            parsed,
            request_deserializer=request_type.FromString,
            response_serializer=type(answer).SerializeToString,
        )
    return grpc.method_handlers_generic_handler(service, {name: handler})


async def serve(
    port: int,
    response: bytes,
    method: str | None = None,
    max_concurrent_rpcs: int | None = None,
    module: str | None = None,
) -> None:
    try:
        server, _ = create_server(f"127.0.0.1:{port}", maximum_concurrent_rpcs=max_concurrent_rpcs)
    except PortInUse as exc:
        raise SystemExit(f"bare_server: {exc}") from None
    if method is None:
        message = status_pb2.GetStatusResponse.FromString(response)
        stream_grpc.add_StatusServiceServicer_to_server(BareStatusServicer(message), server)
        # Reflection lets ghz find the method without a descriptor file; it costs nothing
        # per call.
        reflection.enable_server_reflection(
            [
                status_pb2.DESCRIPTOR.services_by_name["StatusService"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
    else:
        server.add_generic_rpc_handlers((_fixed_answer(method, response, module),))
    await serve_until_signalled(server)


async def serve_until_signalled(server: grpc.aio.Server) -> None:
    """Start ``server`` and serve until SIGTERM or SIGINT, then stop it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop(1.0)


@contextmanager
def running_bare_server(
    method: str, response: bytes, workdir: Path, module: str | None = None
) -> Iterator[int]:
    """A bare server on a free loopback port answering ``method`` (``/pkg.Service/Method``)
    with ``response`` (serialized; parsed requests and a serialized response with
    ``module``, see ``_fixed_answer``); yields its port once it answers, stops it on the
    way out. Its log is ``workdir/bare.log``."""
    with bare_server_process(method, response, workdir, module=module) as (port, _):
        yield port


@contextmanager
def bare_server_process(
    method: str,
    response: bytes,
    workdir: Path,
    *,
    module: str | None = None,
    max_concurrent_rpcs: int | None = None,
) -> Iterator[tuple[int, int]]:
    """``running_bare_server``, bounded by grpc.aio's own ``max_concurrent_rpcs`` when
    given; yields its port and process id."""
    answer = workdir / "bare-response.bin"
    answer.write_bytes(response)
    port = free_port()
    log = workdir / "bare.log"
    command = [sys.executable, "-m", "bench.bare_server", "--port", str(port)]
    command += ["--response", str(answer), "--method", method]
    if module is not None:
        command += ["--module", module]
    if max_concurrent_rpcs is not None:
        command += ["--max-concurrent-rpcs", str(max_concurrent_rpcs)]
    process = start_logged(command, env=clean_env(), log=log, cwd=REPO_ROOT)

    def probe(channel: grpc.Channel) -> None:
        call: Any = channel.unary_unary(method)  # bytes in and out
        got = call(b"", timeout=1.0)
        if got != response:
            raise RuntimeError("the bare server does not answer what it was given")

    try:
        wait_grpc(process, f"127.0.0.1:{port}", what="the bare server", probe=probe, log=log)
        yield port, process.pid
    finally:
        stop_process(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--response", type=Path, required=True)
    parser.add_argument(
        "--method",
        help="serve only this unary method (/pkg.Service/Method) with the response's bytes",
    )
    parser.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        help="grpc.aio's own limit of calls in flight (RESOURCE_EXHAUSTED beyond it)",
    )
    parser.add_argument(
        "--module",
        help="with --method: the generated _pb2 module defining its service; requests are "
        "then parsed and the response serialized on every call",
    )
    args = parser.parse_args()
    asyncio.run(
        serve(
            args.port,
            args.response.read_bytes(),
            args.method,
            args.max_concurrent_rpcs,
            args.module,
        )
    )


if __name__ == "__main__":
    main()
