"""Server reflection at the entry for every service behind it, answered from the
contracts' descriptor set (with its imports), so ``grpcurl <entry> list`` and
``describe`` work without asking the backends. The error details every service sends
(``google.rpc.ErrorInfo``, ``BadRequest``, ``RetryInfo``) are served too, so a client
that decodes details through reflection (grpcurl) shows them, not raw bytes."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

__all__ = ["enable_reflection"]


def _add_with_imports(
    pool: descriptor_pool.DescriptorPool, descriptor: FileDescriptor, known: set[str]
) -> None:
    """Add ``descriptor`` after whichever of its imports the pool lacks."""
    if descriptor.name in known:
        return
    for dependency in descriptor.dependencies:
        _add_with_imports(pool, dependency, known)
    proto = descriptor_pb2.FileDescriptorProto()
    descriptor.CopyToProto(proto)
    pool.Add(proto)
    known.add(descriptor.name)


def _pool(files: descriptor_pb2.FileDescriptorSet) -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    known = {file.name for file in files.file}
    for file in files.file:  # buf writes imports before the files that use them
        pool.Add(file)
    own: Sequence[FileDescriptor] = (
        error_details_pb2.DESCRIPTOR,
        health_pb2.DESCRIPTOR,
        reflection_pb2.DESCRIPTOR,
    )
    for descriptor in own:
        _add_with_imports(pool, descriptor, known)
    return pool


def enable_reflection(
    server: grpc.aio.Server, files: descriptor_pb2.FileDescriptorSet, services: Sequence[str]
) -> None:
    """Serve reflection for ``services`` (full names) plus health and reflection."""
    names = [
        *services,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    ]
    reflection.enable_server_reflection(names, server, pool=_pool(files))
