"""``datapunk status``: probes every engine and service at once and prints a table."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from datapunk_shared.config import Settings
from datapunk_shared.probes import Probe, run_probe

from datapunk_stack.engines import all_engines
from datapunk_stack.layout import Layout
from datapunk_stack.services import HttpProbe, ServiceProbe, all_services

__all__ = ["Row", "collect", "format_table"]

PROBE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    kind: str  # "engine", "external engine" or "service"
    endpoint: str
    ok: bool
    round_trip: float | None
    detail: str


async def collect(settings: Settings, layout: Layout, *, engines_only: bool) -> list[Row]:
    """One row per engine and service, probed concurrently so a dead engine costs
    one timeout, not one per row."""
    engines = all_engines(settings, layout)
    services = all_services(settings)
    doors = [door for s in services for door in s.doors()]
    service_probes: list[ServiceProbe | HttpProbe] = [s.probe() for s in services]
    service_probes += [door.probe() for door in doors]
    probes: list[Probe] = [e.probe() for e in engines]
    if not engines_only:
        probes += service_probes
    results = await asyncio.gather(*(run_probe(p, PROBE_TIMEOUT) for p in probes))
    e_results, s_results = results[: len(engines)], results[len(engines) :]
    rows = [
        Row(
            name=r.name,
            kind="engine" if e.managed else "external engine",
            endpoint=r.endpoint,
            ok=r.reachable,
            round_trip=r.round_trip,
            detail="ok" if r.reachable else r.error,
        )
        for e, r in zip(engines, e_results, strict=True)
    ]
    if engines_only:
        rows += [
            Row(name, "service", address, True, None, "not started (--engines-only)")
            for name, address in [(s.name, s.address) for s in services]
            + [(d.name, d.address) for d in doors]
        ]
    else:
        rows += [
            Row(
                name=p.name,
                kind="service",
                endpoint=r.endpoint,
                ok=r.reachable,
                round_trip=r.round_trip,
                detail=_service_detail(p) if r.reachable else r.error,
            )
            for p, r in zip(service_probes, s_results, strict=True)
        ]
    return rows


def _service_detail(probe: ServiceProbe | HttpProbe) -> str:
    return f"health: {probe.answer}" if isinstance(probe, ServiceProbe) else probe.answer


def format_table(rows: list[Row]) -> str:
    header = ("NAME", "KIND", "ENDPOINT", "STATE", "ROUND-TRIP", "DETAIL")
    body = [
        (
            r.name,
            r.kind,
            r.endpoint,
            "up" if r.ok and r.round_trip is not None else ("-" if r.ok else "DOWN"),
            f"{r.round_trip * 1000:.1f} ms" if r.round_trip is not None else "",
            r.detail,
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line[:-1], widths, strict=True))
        + "  "
        + line[-1]
        for line in [header, *body]
    ]
    return "\n".join(lines)
