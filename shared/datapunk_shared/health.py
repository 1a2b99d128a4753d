"""Engine health: periodic probes, readiness prerequisites, and the serving state.

A service is SERVING when every engine it requires answered its last probe and every
readiness prerequisite (such as applying schema migrations) has succeeded once. The
monitor never raises and never exits the process: an engine that is down only makes
the service NOT_SERVING until it comes back, so nothing crash-loops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from datapunk_shared.logging import get_logger
from datapunk_shared.metrics import ENGINE_ROUND_TRIP, ENGINE_UP
from datapunk_shared.probes import Probe, ProbeResult, run_probe

__all__ = ["HealthMonitor", "Prerequisite", "ServingState"]

log = get_logger("datapunk.health")


class ServingState(Enum):
    """Whether the service can do its work right now."""

    SERVING = "SERVING"
    NOT_SERVING = "NOT_SERVING"
    DRAINING = "DRAINING"


@dataclass(frozen=True, slots=True)
class Prerequisite:
    """Work that must succeed once, after ``engine`` is reachable, before serving."""

    name: str
    engine: str
    run: Callable[[], Awaitable[None]]


class HealthMonitor:
    """Probes the service's engines every ``interval`` seconds and tracks its state."""

    def __init__(
        self,
        service: str,
        probes: Sequence[Probe],
        *,
        interval: float,
        timeout: float,
        prerequisites: Sequence[Prerequisite] = (),
        on_change: Callable[[ServingState], Awaitable[None]] | None = None,
    ) -> None:
        self.service = service
        self.probes = {probe.name: probe for probe in probes}
        self.interval = interval
        self.timeout = timeout
        self._pending = list(prerequisites)
        self._on_change = on_change
        self._results: dict[str, ProbeResult] = {}
        self._state = ServingState.NOT_SERVING
        self._draining = False
        self._task: asyncio.Task[None] | None = None

    @property
    def state(self) -> ServingState:
        return self._state

    def latest(self) -> dict[str, ProbeResult]:
        """The last probe result of each engine probed so far."""
        return dict(self._results)

    async def probe(self, names: Sequence[str], timeout: float) -> list[ProbeResult]:
        """Probe the named engines now, concurrently, and record the results."""
        results = await asyncio.gather(*(run_probe(self.probes[n], timeout) for n in names))
        for result in results:
            self._record(result)
        return list(results)

    async def check_once(self) -> ServingState:
        """One full round: probe everything, run due prerequisites, update the state."""
        await self.probe(list(self.probes), self.timeout)
        for prerequisite in list(self._pending):
            if not self._results[prerequisite.engine].reachable:
                continue
            try:
                await prerequisite.run()
            except Exception as exc:
                log.warning("prerequisite failed", prerequisite=prerequisite.name, error=str(exc))
                continue
            self._pending.remove(prerequisite)
            log.info("prerequisite done", prerequisite=prerequisite.name)
        await self._set_state(self._evaluate())
        return self._state

    async def start(self) -> None:
        """Run the first round now and keep probing in the background."""
        await self.check_once()
        self._task = asyncio.create_task(self._loop(), name=f"{self.service}-health")

    async def drain(self) -> None:
        """Enter DRAINING for good (shutdown) and stop probing."""
        self._draining = True
        await self._set_state(ServingState.DRAINING)
        await self.stop()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check_once()

    def _evaluate(self) -> ServingState:
        if self._draining:
            return ServingState.DRAINING
        all_up = all(r.reachable for r in self._results.values()) and len(self._results) == len(
            self.probes
        )
        return ServingState.SERVING if all_up and not self._pending else ServingState.NOT_SERVING

    def _record(self, result: ProbeResult) -> None:
        previous = self._results.get(result.name)
        self._results[result.name] = result
        ENGINE_UP.labels(self.service, result.name).set(1 if result.reachable else 0)
        if result.round_trip is not None:
            ENGINE_ROUND_TRIP.labels(self.service, result.name).set(result.round_trip)
        if previous is None or previous.reachable != result.reachable:
            log.info(
                "engine reachable" if result.reachable else "engine unreachable",
                engine=result.name,
                endpoint=result.endpoint,
                error=result.error or None,
            )

    async def _set_state(self, state: ServingState) -> None:
        if state is self._state:
            return
        log.info("serving state changed", old=self._state.value, new=state.value)
        self._state = state
        if self._on_change is not None:
            await self._on_change(state)
