"""The three Datapunk services as children of the supervisor, and the gRPC health
check that says one is up."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from datapunk_shared.config import NexusSettings, ServiceSettings, Settings
from grpc_health.v1 import health_pb2, health_pb2_grpc

from datapunk_stack.layout import Layout, StackError
from datapunk_stack.process import Child

__all__ = ["Door", "HttpProbe", "Service", "ServiceProbe", "all_services"]

# Codes that mean nobody answered; any other answer (even NOT_FOUND for the empty
# service name) comes from a live gRPC server.
_NO_ANSWER = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    settings: ServiceSettings

    @property
    def command(self) -> Path:
        # Console scripts sit next to the interpreter in the same virtualenv.
        return Path(sys.executable).parent / f"datapunk-{self.name}"

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    def doors(self) -> list[Door]:
        """The listeners the service opens besides its own gRPC port and metrics: the
        Nexus's single gRPC entry and REST edge, when enabled."""
        own = self.settings
        if not isinstance(own, NexusSettings):
            return []
        found = []
        if own.grpc_entry.enabled:
            entry = own.grpc_entry
            found.append(Door(f"{self.name} entry", entry.host, entry.port, "grpc"))
        if own.rest.enabled:
            found.append(Door(f"{self.name} rest", own.rest.host, own.rest.port, "http"))
        return found

    def ports(self) -> list[tuple[str, int]]:
        return [
            (self.settings.host, self.settings.port),
            (self.settings.host, self.settings.metrics_port),
            *((door.host, door.port) for door in self.doors()),
        ]

    def endpoints(self) -> list[tuple[str, str]]:
        return [
            (f"{self.name} grpc", self.address),
            (
                f"{self.name} metrics",
                f"http://{self.settings.host}:{self.settings.metrics_port}/metrics",
            ),
            *((door.name, door.address) for door in self.doors()),
        ]

    def child(self, layout: Layout, env: Mapping[str, str] | None = None) -> Child:
        """The service's process; ``env`` is added to the supervisor's environment."""
        if not self.command.exists():
            raise StackError(
                f"{self.name}: {self.command} does not exist; run scripts/python-env.sh "
                "(or start with --engines-only)"
            )
        # cwd stays the supervisor's, so the service reads the same datapunk.toml.
        return Child(
            name=self.name,
            argv=[str(self.command)],
            log=layout.log(self.name),
            cwd=Path.cwd(),
            env={**os.environ, **env} if env else None,
        )

    def probe(self) -> ServiceProbe:
        return ServiceProbe(self.name, self.address)


@dataclass(slots=True)
class ServiceProbe:
    """A ``grpc.health.v1.Health/Check`` for the whole server; fits the ``Probe``
    protocol, and keeps the answer (SERVING, NOT_SERVING, ...) in ``answer``."""

    name: str
    endpoint: str
    answer: str = field(default="", init=False)

    async def check(self) -> None:
        async with grpc.aio.insecure_channel(self.endpoint) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                response = await stub.Check(health_pb2.HealthCheckRequest(service=""))
            except grpc.aio.AioRpcError as exc:
                if exc.code() in _NO_ANSWER:
                    raise ConnectionError(f"{exc.code().name}: {exc.details()}") from None
                self.answer = exc.code().name
                return
            self.answer = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


@dataclass(frozen=True, slots=True)
class Door:
    """A listener of a service other than its own gRPC port."""

    name: str
    host: str
    port: int
    protocol: str  # "grpc" or "http"

    @property
    def address(self) -> str:
        hostport = f"{self.host}:{self.port}"
        return hostport if self.protocol == "grpc" else f"http://{hostport}"

    def probe(self) -> ServiceProbe | HttpProbe:
        if self.protocol == "grpc":
            return ServiceProbe(self.name, self.address)
        return HttpProbe(self.name, self.address, "/v1/nexus/status")


@dataclass(slots=True)
class HttpProbe:
    """A GET of a public path; any HTTP answer means the listener is up, and its status
    is kept in ``answer``."""

    name: str
    endpoint: str
    path: str
    answer: str = field(default="", init=False)

    async def check(self) -> None:
        async with httpx.AsyncClient() as client:
            response = await client.get(self.endpoint + self.path)
        self.answer = f"HTTP {response.status_code}"


def all_services(settings: Settings) -> list[Service]:
    """The services in start order: Lake and Stream before the Nexus gateway."""
    return [
        Service("lake", settings.lake),
        Service("stream", settings.stream),
        Service("nexus", settings.nexus),
    ]
