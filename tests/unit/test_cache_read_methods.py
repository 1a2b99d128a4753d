"""The cache's default read methods agree with the policy's reads: a call the policy lets
a reader make never counts as a write, so it never invalidates cached answers (through
Nexus, or published by the service that owns the data)."""

from __future__ import annotations

from fnmatch import fnmatchcase

from datapunk_nexus.identity.policy.resources import Requirements
from datapunk_shared.config import CacheSettings
from google.protobuf import descriptor_pb2, message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message import Message

from tests.support import ROOT

_NEVER_WRITE = {
    # Nexus methods that read or answer a question; their requirement is admin on their
    # route (or nothing), not the read action, so they are listed here.
    "/datapunk.nexus.v1.AuditService/ExportAuditEvents",
    "/datapunk.nexus.v1.AuditService/VerifyAuditTrail",
    "/datapunk.nexus.v1.AuthService/WhoAmI",
    "/datapunk.nexus.v1.PolicyService/CheckPermission",
    "/datapunk.nexus.v1.AuthService/IntrospectToken",
}


def _methods() -> list[tuple[str, Message]]:
    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString((ROOT / "gen/descriptors/datapunk.binpb").read_bytes())
    pool = DescriptorPool()
    for file in files.file:
        pool.Add(file)
    found = []
    for file in files.file:
        if not file.package.startswith("datapunk."):
            continue
        for service in file.service:
            for method in service.method:
                name = f"/{file.package}.{service.name}/{method.name}"
                request_type = pool.FindMessageTypeByName(method.input_type.lstrip("."))
                found.append((name, message_factory.GetMessageClass(request_type)()))
    return found


def _is_read(method: str) -> bool:
    return any(fnmatchcase(method, glob) for glob in CacheSettings().read_methods)


def test_every_read_the_policy_knows_is_a_cache_read() -> None:
    requirements = Requirements()
    reads = [m for m, request in _methods() if requirements.of(m, request).action == "read"]
    assert reads, "the contracts have read methods"
    assert [m for m in reads if not _is_read(m)] == []


def test_methods_that_change_nothing_are_reads_and_writes_are_not() -> None:
    methods = dict(_methods())
    assert set(methods) >= _NEVER_WRITE
    assert [m for m in _NEVER_WRITE if not _is_read(m)] == []
    requirements = Requirements()
    writes = [m for m, request in methods.items() if requirements.of(m, request).action == "write"]
    assert writes
    assert [m for m in writes if _is_read(m)] == []
