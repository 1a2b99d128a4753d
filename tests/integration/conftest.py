"""Integration tests run against the real engines of the local stack (`datapunk up`)."""

from __future__ import annotations

import asyncio

import pytest
from datapunk_shared.config import Settings, load_settings
from datapunk_shared.probes import build_probes, run_probe

ENGINES = ("postgres", "questdb", "kafka", "mqtt", "redis")


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session", autouse=True)
def _engines_up(settings: Settings) -> None:
    async def probe_all() -> list[str]:
        probes = build_probes(settings.engines, ENGINES)
        results = await asyncio.gather(*(run_probe(p, 10) for p in probes))
        return [f"{r.name}: {r.error}" for r in results if not r.reachable]

    down = asyncio.run(probe_all())
    if down:
        pytest.fail(
            "integration tests need the local stack's engines; start them with "
            "`datapunk up --detach` (the test command does). Unreachable: " + "; ".join(down),
            pytrace=False,
        )
