"""The entry's own gRPC server: health and reflection of its own, and the forwarding
catch-all for everything else."""

from __future__ import annotations

from datapunk_shared.config import Settings
from datapunk_shared.logging import get_logger
from datapunk_shared.rpc.server import create_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from datapunk_nexus.backends import Backends, backend_addresses
from datapunk_nexus.entry.deadlines import DeadlinePolicy
from datapunk_nexus.entry.forwarding import ForwardingHandler
from datapunk_nexus.entry.reflection import enable_reflection
from datapunk_nexus.entry.routes import DEFAULT_DESCRIPTOR_SET, RouteTable, load_descriptor_set
from datapunk_nexus.identity.enforce import AccessGuard
from datapunk_nexus.policy import NoCache, OpenGate, RequestGate, ResponseCache

__all__ = ["GrpcEntry"]

log = get_logger("datapunk.nexus.entry")


class GrpcEntry:
    """One address for every Datapunk gRPC method (``[nexus.grpc_entry]``)."""

    def __init__(
        self,
        settings: Settings,
        *,
        gate: RequestGate | None = None,
        cache: ResponseCache | None = None,
        backends: Backends | None = None,
        guard: AccessGuard | None = None,
    ) -> None:
        own = settings.nexus.grpc_entry
        files = load_descriptor_set(settings.nexus.descriptor_set or DEFAULT_DESCRIPTOR_SET)
        # Nexus passes the channels the REST edge uses too; alone, the entry opens its own.
        self._owns_backends = backends is None
        self.backends = backends or Backends(
            backend_addresses(settings), max_message_bytes=own.max_message_bytes
        )
        self.routes = RouteTable(files, self.backends.owners)
        self.server, self.port = create_server(
            f"{own.host}:{own.port}", max_message_bytes=own.max_message_bytes
        )
        self.address = f"{own.host}:{self.port}"
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        enable_reflection(self.server, files, self.routes.services)
        self.server.add_generic_rpc_handlers(
            (
                ForwardingHandler(
                    self.routes,
                    self.backends,
                    gate or OpenGate(),
                    cache or NoCache(),
                    DeadlinePolicy(own.default_deadline, own.deadlines),
                    guard,
                ),
            )
        )

    async def start(self) -> None:
        await self.server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info("grpc entry listening", address=self.address, backends=self.backends.addresses)

    async def stop(self, grace: float | None) -> None:
        """NOT_SERVING first, then calls in flight get ``grace`` seconds to finish."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self._owns_backends:
            await self.backends.close()
