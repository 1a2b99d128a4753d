"""The Stream service: what it needs and what it serves."""

from __future__ import annotations

from datapunk.stream.v1 import status_pb2, status_pb2_grpc
from datapunk_shared.rpc.server import ServiceSpec

__all__ = ["SPEC"]

SPEC = ServiceSpec(
    name="stream",
    engines=("kafka", "mqtt", "redis"),
    status_pb2=status_pb2,
    status_pb2_grpc=status_pb2_grpc,
)
