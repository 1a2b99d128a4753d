"""The Nexus service: what it needs and what it serves."""

from __future__ import annotations

from datapunk.nexus.v1 import status_pb2, status_pb2_grpc
from datapunk_shared.db import apply_migrations, create_pool, load_migrations
from datapunk_shared.health import Prerequisite
from datapunk_shared.rpc.server import ServiceContext, ServiceSpec

from datapunk_nexus.cache.servicer import add_cache_service
from datapunk_nexus.edge import start_rest_edge
from datapunk_nexus.entry import add_grpc_entry
from datapunk_nexus.policy_factory import build_policies

__all__ = ["SPEC"]


async def _setup(context: ServiceContext) -> None:
    pool = create_pool(context.settings.engines.postgres, name="nexus")
    await pool.open(wait=False)
    context.cleanups.append(pool.close)
    migrations = load_migrations("datapunk_nexus.migrations")

    async def migrate() -> None:
        async with pool.connection(timeout=context.service_settings.probe_timeout) as conn:
            await apply_migrations(conn, "nexus", migrations)

    context.monitor_prerequisites.append(Prerequisite("schema migrations", "postgres", migrate))
    # One gate and one cache for both entries, so limits and cached answers are the same
    # whichever entry a call comes through.
    settings = context.settings
    gate, cache = await build_policies(
        settings, settings.engines.redis.url, cleanups=context.cleanups
    )
    add_cache_service(context, cache)
    await add_grpc_entry(context, gate=gate, cache=cache)
    await start_rest_edge(context, gate=gate, cache=cache)


SPEC = ServiceSpec(
    name="nexus",
    engines=("postgres", "redis"),
    status_pb2=status_pb2,
    status_pb2_grpc=status_pb2_grpc,
    setup=_setup,
)
