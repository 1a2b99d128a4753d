"""Wiring the REST edge into the Nexus process, and its route table for contract tests."""

from __future__ import annotations

from pathlib import Path

from datapunk_shared.config import ServiceSettings, Settings
from datapunk_shared.rpc.server import ServiceContext

from datapunk_nexus.edge.backends import Backends
from datapunk_nexus.edge.routes import default_descriptor_set, load_routes
from datapunk_nexus.edge.server import RestEdge
from datapunk_nexus.policy import RequestGate, ResponseCache

__all__ = ["backend_addresses", "rest_route_table", "start_rest_edge"]


def rest_route_table(descriptor_set: Path | None = None) -> list[tuple[str, str, str]]:
    """``(HTTP method, path template, gRPC method)`` of every route the edge serves."""
    return load_routes(descriptor_set or default_descriptor_set()).entries()


def _dialable(own: ServiceSettings) -> str:
    host = own.host
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    return f"{host}:{own.port}"


def backend_addresses(settings: Settings) -> dict[str, str]:
    """Where each owner's routes go: the configured address of Lake, Stream and Nexus."""
    return {
        "lake": _dialable(settings.lake),
        "stream": _dialable(settings.stream),
        "nexus": _dialable(settings.nexus),
    }


async def start_rest_edge(
    context: ServiceContext,
    *,
    gate: RequestGate | None = None,
    cache: ResponseCache | None = None,
) -> RestEdge | None:
    """Start the REST edge in this process's loop (unless disabled) and register its stop
    as a cleanup. ``gate`` and ``cache`` default to the open gate and no cache."""
    settings = context.settings.nexus.rest
    if not settings.enabled:
        return None
    table = load_routes(settings.descriptor_set or default_descriptor_set())
    backends = Backends(
        backend_addresses(context.settings),
        max_message_bytes=context.service_settings.max_message_bytes,
    )
    edge = RestEdge(settings, table, backends, gate=gate, cache=cache)
    await edge.start()
    context.cleanups.append(edge.stop)
    return edge
