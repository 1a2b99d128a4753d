"""The Lake service: what it needs and what it serves."""

from __future__ import annotations

from datapunk.lake.v1 import status_pb2, status_pb2_grpc
from datapunk_shared.auth.tenancy import set_default_tenant
from datapunk_shared.invalidation import publish_writes
from datapunk_shared.rpc.server import ServiceContext, ServiceSpec, open_postgres

from datapunk_lake import spatial, timeseries, vectors

__all__ = ["SPEC"]


async def _setup(context: ServiceContext) -> None:
    # First: the servicers registered below publish their writes' cache invalidations.
    publish_writes(context, "lake")
    # Every store keeps each tenant's objects apart; calls without an identity
    # (authentication not configured) act for this tenant.
    set_default_tenant(context.settings.auth.default_tenant)
    pool = await open_postgres(context, "lake")
    spatial.register(context, pool)
    await timeseries.register(context)
    await vectors.register(context)


SPEC = ServiceSpec(
    name="lake",
    engines=("postgres", "questdb"),
    status_pb2=status_pb2,
    status_pb2_grpc=status_pb2_grpc,
    setup=_setup,
)
