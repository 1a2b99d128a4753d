"""Nexus's single gRPC entry: one address that forwards any method of any Datapunk
service, of any call kind, to the service that owns it, through the same request gate
and response cache as the REST edge.

Modules: ``routes`` (owner and call kind of a method, from the descriptor set),
``metadata`` (what crosses, request ids), ``deadlines``,
``failures`` (statuses the entry decides or passes through), ``forwarding`` (the
catch-all handler), ``reflection``, ``server`` (the entry's server)."""

from __future__ import annotations

from datapunk_shared.rpc.server import ServiceContext

from datapunk_nexus.backends import Backends
from datapunk_nexus.entry.server import GrpcEntry
from datapunk_nexus.identity.enforce import AccessGuard
from datapunk_nexus.policy import NoCache, OpenGate, RequestGate, ResponseCache

__all__ = ["GrpcEntry", "add_grpc_entry"]


async def add_grpc_entry(
    context: ServiceContext,
    *,
    gate: RequestGate | None = None,
    cache: ResponseCache | None = None,
    backends: Backends | None = None,
    guard: AccessGuard | None = None,
) -> GrpcEntry | None:
    """Start the entry with the service (unless ``[nexus.grpc_entry] enabled = false``);
    it stops, gracefully, with the service. ``gate`` and ``cache`` default to the open
    gate and no cache."""
    if not context.settings.nexus.grpc_entry.enabled:
        return None
    entry = GrpcEntry(
        context.settings,
        gate=gate or OpenGate(),
        cache=cache or NoCache(),
        backends=backends,
        guard=guard,
    )
    await entry.start()

    async def stop() -> None:
        await entry.stop(context.service_settings.shutdown_grace)

    context.cleanups.append(stop)
    return entry
