"""Wiring the REST edge into the Nexus process, and its route table for contract tests."""

from __future__ import annotations

from pathlib import Path

from datapunk_shared.rpc.server import ServiceContext

from datapunk_nexus.backends import Backends, backend_addresses
from datapunk_nexus.edge.routes import default_descriptor_set, load_routes
from datapunk_nexus.edge.server import RestEdge
from datapunk_nexus.identity.enforce import AccessGuard
from datapunk_nexus.policy import RequestGate, ResponseCache

__all__ = ["rest_route_table", "start_rest_edge"]


def rest_route_table(descriptor_set: Path | None = None) -> list[tuple[str, str, str]]:
    """``(HTTP method, path template, gRPC method)`` of every route the edge serves."""
    return load_routes(descriptor_set or default_descriptor_set()).entries()


async def start_rest_edge(
    context: ServiceContext,
    *,
    gate: RequestGate | None = None,
    cache: ResponseCache | None = None,
    backends: Backends | None = None,
    guard: AccessGuard | None = None,
) -> RestEdge | None:
    """Start the REST edge in this process's loop (unless disabled) and register its stop
    as a cleanup. ``gate`` and ``cache`` default to the open gate and no cache."""
    settings = context.settings.nexus.rest
    if not settings.enabled:
        return None
    table = load_routes(context.settings.nexus.descriptor_set or default_descriptor_set())
    owns_backends = backends is None
    if backends is None:
        backends = Backends(
            backend_addresses(context.settings),
            max_message_bytes=context.service_settings.max_message_bytes,
        )
    edge = RestEdge(
        settings,
        table,
        backends,
        gate=gate,
        cache=cache,
        owns_backends=owns_backends,
        guard=guard,
    )
    await edge.start()
    context.cleanups.append(edge.stop)
    return edge
