"""The contracts' descriptor set, read once for every part of Nexus that needs it (the
REST routes, the gRPC entry's routes and reflection, the cache's resource tags, the
permissions each call needs), from the one ``[nexus] descriptor_set`` setting."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool

__all__ = ["Contracts", "default_descriptor_set", "load_contracts", "owner_of_package"]

_PACKAGE = re.compile(r"^datapunk\.(?P<owner>[a-z]+)\.v[0-9]+(?:(?:alpha|beta)[0-9]*)?$")
"""``datapunk.<owner>.v<N>`` (or ``v<N>alpha<M>``/``v<N>beta<M>``): the package rule of
both entries, and of envoy/generate.py, which keeps a copy."""


def owner_of_package(package: str) -> str | None:
    """The service that owns a contracts package (``datapunk.lake.v1`` → ``lake``), or
    None for a package that is not a Datapunk service's."""
    match = _PACKAGE.match(package)
    return match["owner"] if match is not None else None


def default_descriptor_set() -> Path:
    """``gen/descriptors/datapunk.binpb`` of the source tree the generated code lives in."""
    from datapunk.nexus.v1 import status_pb2

    return Path(status_pb2.__file__).resolve().parents[4] / "descriptors" / "datapunk.binpb"


@dataclass(frozen=True, slots=True)
class Contracts:
    """A parsed descriptor set and a pool of its message types (separate from the
    generated modules' pool, so contracts newer than this build can be served)."""

    path: Path
    files: descriptor_pb2.FileDescriptorSet
    pool: descriptor_pool.DescriptorPool


@cache
def _load(path: Path) -> Contracts:
    files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return Contracts(path, files, pool)


def load_contracts(path: Path | None = None) -> Contracts:
    """The contracts at ``path`` (default: ``default_descriptor_set()``), parsed on the
    first call and shared afterwards; callers must not modify them."""
    return _load((path or default_descriptor_set()).resolve())
