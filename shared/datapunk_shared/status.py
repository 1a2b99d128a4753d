"""The status report every service answers ``GetStatus`` with (domain side, no grpc)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from datapunk_shared.errors import FieldViolation, InvalidArgument
from datapunk_shared.health import HealthMonitor, ServingState
from datapunk_shared.probes import ProbeResult

__all__ = ["EngineReport", "StatusProvider", "StatusReport", "datapunk_version"]


def datapunk_version() -> str:
    """The installed Datapunk release."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("datapunk")
    except PackageNotFoundError:
        return "0.0.0+unknown"


@dataclass(frozen=True, slots=True)
class EngineReport:
    """One engine's last probe, and whether the service needs it to serve."""

    probe: ProbeResult
    required: bool


@dataclass(frozen=True, slots=True)
class StatusReport:
    """What ``GetStatus`` returns."""

    service: str
    version: str
    instance_id: str
    start_time: datetime
    uptime: float
    state: ServingState
    engines: tuple[EngineReport, ...]


class StatusProvider:
    """Builds status reports from the health monitor's results or fresh probes."""

    def __init__(self, service: str, monitor: HealthMonitor, *, default_timeout: float) -> None:
        self.service = service
        self.monitor = monitor
        self.default_timeout = default_timeout
        self.version = datapunk_version()
        self.instance_id = f"{socket.gethostname()}:{os.getpid()}"
        self.start_time = datetime.now(UTC)
        self._started = time.monotonic()

    async def report(
        self, *, refresh: bool, probe_timeout: float | None, engines: Sequence[str]
    ) -> StatusReport:
        known = list(self.monitor.probes)
        unknown = [
            FieldViolation(
                field=f"engines[{index}]",
                description=f"unknown engine {name!r}; {self.service} depends on: "
                + ", ".join(known),
                reason="UNKNOWN_ENGINE",
            )
            for index, name in enumerate(engines)
            if name not in self.monitor.probes
        ]
        if unknown:
            raise InvalidArgument(
                "the request names engines this service does not use",
                violations=unknown,
                reason="UNKNOWN_ENGINE",
                metadata={"service": self.service, "known_engines": ",".join(known)},
            )
        names = list(engines) or known
        if refresh:
            results = await self.monitor.probe(names, probe_timeout or self.default_timeout)
        else:
            latest = self.monitor.latest()
            results = [latest[name] for name in names if name in latest]
        return StatusReport(
            service=self.service,
            version=self.version,
            instance_id=self.instance_id,
            start_time=self.start_time,
            uptime=time.monotonic() - self._started,
            state=self.monitor.state,
            engines=tuple(EngineReport(probe=r, required=True) for r in results),
        )
