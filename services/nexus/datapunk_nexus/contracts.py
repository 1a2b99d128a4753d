"""Where the contracts' descriptor set lies, for every part of Nexus that reads it (the
REST routes, the gRPC entry's routes and reflection, the cache's resource tags)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["default_descriptor_set"]


def default_descriptor_set() -> Path:
    """``gen/descriptors/datapunk.binpb`` of the source tree the generated code lives in."""
    from datapunk.nexus.v1 import status_pb2

    return Path(status_pb2.__file__).resolve().parents[4] / "descriptors" / "datapunk.binpb"
