"""The Stream service: what it needs and what it serves."""

from __future__ import annotations

from datapunk.stream.v1 import status_pb2, status_pb2_grpc
from datapunk_shared.invalidation import publish_writes
from datapunk_shared.rpc.server import ServiceContext, ServiceSpec

__all__ = ["SPEC"]


async def _setup(context: ServiceContext) -> None:
    # First in setup: the servicers registered after it publish the cache invalidations
    # of their writes (Stream serves no data RPC yet; its status is not wrapped).
    publish_writes(context, "stream")


SPEC = ServiceSpec(
    name="stream",
    engines=("kafka", "mqtt", "redis"),
    status_pb2=status_pb2,
    status_pb2_grpc=status_pb2_grpc,
    setup=_setup,
)
