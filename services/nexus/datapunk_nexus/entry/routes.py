"""Which service owns a gRPC method, and which of the four call kinds it is.

Both come from the contracts' descriptor set: the owner from the package
(``datapunk.lake.v1`` is the Lake's), the kind from the method's streaming flags, so a
unary method gets the cheap unary forwarder and only real streams pay for streaming."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from google.protobuf import descriptor_pb2

from datapunk_nexus.contracts import default_descriptor_set, load_contracts, owner_of_package

__all__ = [
    "DEFAULT_DESCRIPTOR_SET",
    "CallKind",
    "Route",
    "RouteTable",
    "load_descriptor_set",
    "owner_of",
]

# The descriptor set sits beside the generated Python package: gen/descriptors/.
DEFAULT_DESCRIPTOR_SET = default_descriptor_set()


class CallKind(Enum):
    """The four kinds of gRPC call, by whether each side streams."""

    UNARY_UNARY = "unary_unary"
    UNARY_STREAM = "unary_stream"
    STREAM_UNARY = "stream_unary"
    STREAM_STREAM = "stream_stream"

    @classmethod
    def of(cls, client_streaming: bool, server_streaming: bool) -> CallKind:
        if client_streaming:
            return cls.STREAM_STREAM if server_streaming else cls.STREAM_UNARY
        return cls.UNARY_STREAM if server_streaming else cls.UNARY_UNARY


@dataclass(frozen=True, slots=True)
class Route:
    """Where one method goes and how it is called."""

    method: str
    """The full method path, ``/datapunk.lake.v1.VectorService/SearchPoints``."""
    service: str
    """The full service name, ``datapunk.lake.v1.VectorService``."""
    owner: str
    kind: CallKind


def owner_of(service: str) -> str | None:
    """The owner of a full service name by its package, or None for a foreign service."""
    return owner_of_package(service.rpartition(".")[0])


def load_descriptor_set(path: Path) -> descriptor_pb2.FileDescriptorSet:
    return load_contracts(path).files


class RouteTable:
    """Routes of every method of the descriptor set whose owner is a known backend.

    A method the descriptor set does not know (a backend newer than the contracts this
    entry was built with) still goes to the owner of its package, as a bidirectional
    stream: on raw bytes that carries every kind of call, only a little slower."""

    def __init__(self, files: descriptor_pb2.FileDescriptorSet, owners: frozenset[str]) -> None:
        self._owners = owners
        self._routes: dict[str, Route] = {}
        self.services: list[str] = []
        for file in files.file:
            for service in file.service:
                full = f"{file.package}.{service.name}" if file.package else service.name
                owner = owner_of(full)
                if owner is None or owner not in owners:
                    continue
                self.services.append(full)
                for method in service.method:
                    path = f"/{full}/{method.name}"
                    kind = CallKind.of(method.client_streaming, method.server_streaming)
                    self._routes[path] = Route(path, full, owner, kind)

    def knows(self, method: str) -> bool:
        """Whether ``method`` is in the descriptor set."""
        return method in self._routes

    def lookup(self, method: str) -> Route | None:
        """The route of ``method``, or None when no backend owns it."""
        route = self._routes.get(method)
        if route is not None:
            return route
        service, slash, name = method.lstrip("/").partition("/")
        owner = owner_of(service)
        if not slash or not name or owner is None or owner not in self._owners:
            return None
        return Route(method, service, owner, CallKind.STREAM_STREAM)
