"""Writes made straight to the Lake invalidate Nexus's cached answers, on real processes:
one Lake and two Nexus instances sharing the stack's Redis. A read cached by both
instances (seen by their hit counters) is fresh at both after a write sent directly to
the Lake with a service token, long before its TTL; a write of another tenant to an
object of the same name drops nothing of this tenant; and the Lake counts what it
published."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from datapunk.lake.v1 import vectors_pb2 as vec
from datapunk.lake.v1 import vectors_pb2_grpc as vec_grpc
from datapunk_shared.config import load_settings
from grpc_health.v1 import health_pb2

from tests.auth_support import authed_channel, entry_channel, tenant_caller
from tests.support import (
    RunningService,
    engines_env,
    free_port,
    run_service,
    wait_for_grpc_health,
    wait_until,
)

TTL = 600
"""Far beyond the test: an answer that turns fresh was invalidated, not expired."""
FRESH_WITHIN = 5.0
"""How long an instance may take to hear an invalidation (milliseconds in practice)."""


@dataclass
class Setup:
    lake: RunningService
    nexus: list[RunningService]
    entries: list[str]
    prefix: str


def _metric(port: int, name: str, labels: str = "") -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$", re.M)
    found = pattern.search(text)
    return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp: Path = tmp_path_factory.mktemp("invalidation")
    prefix = f"test:winv:{uuid.uuid4().hex}:"
    cache = {
        "DATAPUNK_NEXUS__CACHE__BACKEND": "redis",
        "DATAPUNK_NEXUS__CACHE__RULES": json.dumps(
            [{"methods": ["/datapunk.lake.v1.VectorService/GetPoints"], "ttl": TTL}]
        ),
        "DATAPUNK_NEXUS__CACHE__KEY_PREFIX": prefix,
        "DATAPUNK_NEXUS__CACHE__CHANNEL": prefix + "invalidate",
    }
    engines = engines_env(load_settings())
    with ExitStack() as running:
        # The Lake reads the same [nexus.cache] section: it publishes on that channel.
        lake = running.enter_context(run_service("lake", tmp, {**engines, **cache}))
        nexus: list[RunningService] = []
        entries: list[str] = []
        for _ in range(2):
            entry_port = free_port()
            env = {
                **engines,
                **cache,
                "DATAPUNK_NEXUS__BACKENDS": json.dumps({"lake": lake.address}),
                "DATAPUNK_NEXUS__GRPC_ENTRY__PORT": str(entry_port),
            }
            nexus.append(running.enter_context(run_service("nexus", tmp, env)))
            entries.append(f"127.0.0.1:{entry_port}")
        for instance, entry in zip(nexus, entries, strict=True):
            wait_for_grpc_health(entry)
            wait_until(serving(instance), timeout=40)
        yield Setup(lake, nexus, entries, prefix)


def serving(service: RunningService) -> Callable[[], bool]:
    """Its signing keys are loaded and its bootstrap administrator exists."""
    return lambda: service.health() == health_pb2.HealthCheckResponse.SERVING


def point(num: int) -> vec.Point:
    return vec.Point(id=vec.PointId(num=num), vector=[0.1 * num, 0.2, 0.3])


async def ids_through(entry: str, collection: str) -> list[int]:
    """The ids of points 1 to 3 that exist, read through a Nexus entry (cacheable)."""
    async with entry_channel(entry) as channel:
        found = await vec_grpc.VectorServiceStub(channel).GetPoints(
            vec.GetPointsRequest(
                collection=f"collections/{collection}",
                ids=[vec.PointId(num=n) for n in (1, 2, 3)],
            ),
            timeout=10,
        )
    return sorted(p.id.num for p in found.points)


async def write_to_lake(lake: str, tenant: str, collection: str, *points: vec.Point) -> None:
    """Upsert straight to the Lake, as a service acting for ``tenant`` would."""
    caller = tenant_caller(tenant, "admin")
    async with authed_channel(lake, on_behalf=caller) as channel:
        await vec_grpc.VectorServiceStub(channel).UpsertPoints(
            vec.UpsertPointsRequest(collection=f"collections/{collection}", points=points),
            timeout=10,
        )


async def create_in_lake(lake: str, tenant: str, collection: str) -> None:
    async with authed_channel(lake, on_behalf=tenant_caller(tenant, "admin")) as channel:
        await vec_grpc.VectorServiceStub(channel).CreateCollection(
            vec.CreateCollectionRequest(
                collection_id=collection,
                collection=vec.Collection(vector_size=3, distance=vec.DISTANCE_COSINE),
            ),
            timeout=30,
        )


def cache_hits(service: RunningService) -> float:
    """Reads the instance answered from its cache: its local LRU, or Redis while the LRU
    may not serve (until its invalidation subscription is confirmed)."""
    name = "datapunk_cache_hits_total"
    port = service.metrics_port
    return _metric(port, name, '{layer="local"}') + _metric(port, name, '{layer="redis"}')


async def fresh_everywhere(setup: Setup, collection: str, expected: list[int]) -> None:
    deadline = time.monotonic() + FRESH_WITHIN
    for entry in setup.entries:
        while (found := await ids_through(entry, collection)) != expected:
            assert time.monotonic() < deadline, f"{entry} still answers {found}"
            await asyncio.sleep(0.02)


async def test_a_write_straight_to_the_lake_refreshes_both_nexus_instances(
    setup: Setup,
) -> None:
    collection = f"inv-{uuid.uuid4().hex[:10]}"
    lake = setup.lake.address
    # The bootstrap administrator of both Nexus instances is of tenant ``default``.
    await create_in_lake(lake, "default", collection)
    await write_to_lake(lake, "default", collection, point(1))

    one, two = setup.nexus
    for entry in setup.entries:
        assert await ids_through(entry, collection) == [1]
    before = [cache_hits(one), cache_hits(two)]
    for entry in setup.entries:
        assert await ids_through(entry, collection) == [1]
    # Both answers came from the cache.
    assert [cache_hits(one), cache_hits(two)] == [h + 1 for h in before]

    published = _metric(
        setup.lake.metrics_port,
        "datapunk_cache_invalidation_publish_total",
        '{outcome="ok",service="lake"}',
    )
    await write_to_lake(lake, "default", collection, point(2))
    await fresh_everywhere(setup, collection, [1, 2])
    assert (
        _metric(
            setup.lake.metrics_port,
            "datapunk_cache_invalidation_publish_total",
            '{outcome="ok",service="lake"}',
        )
        == published + 1
    )

    # And again, through the other instance's cached copy first: each write is heard.
    for entry in setup.entries:
        assert await ids_through(entry, collection) == [1, 2]
    await write_to_lake(lake, "default", collection, point(3))
    await fresh_everywhere(setup, collection, [1, 2, 3])


async def test_a_bulk_import_straight_to_the_lake_refreshes_at_each_acknowledged_batch(
    setup: Setup,
) -> None:
    collection = f"inv-{uuid.uuid4().hex[:10]}"
    lake = setup.lake.address
    await create_in_lake(lake, "default", collection)
    for entry in setup.entries:
        assert await ids_through(entry, collection) == []  # cached, empty

    async with authed_channel(lake, on_behalf=tenant_caller("default", "admin")) as channel:
        stream = vec_grpc.VectorServiceStub(channel).ImportPoints(timeout=30)
        await stream.write(
            vec.ImportPointsRequest(
                collection=f"collections/{collection}", sequence=0, points=[point(1)]
            )
        )
        acknowledged = await stream.read()
        assert isinstance(acknowledged, vec.ImportPointsResponse)
        assert acknowledged.sequence == 0
        # The stream is still open: its first batch is already visible through Nexus.
        await fresh_everywhere(setup, collection, [1])
        await stream.write(
            vec.ImportPointsRequest(
                collection=f"collections/{collection}", sequence=1, points=[point(2)]
            )
        )
        await stream.done_writing()
        async for _ in stream:
            pass
    await fresh_everywhere(setup, collection, [1, 2])


async def test_another_tenants_write_drops_nothing_of_this_tenant(setup: Setup) -> None:
    collection = f"inv-{uuid.uuid4().hex[:10]}"
    lake = setup.lake.address
    other = f"t-{uuid.uuid4().hex[:8]}"
    # A marker: another collection of this tenant, read (and cached) while empty.
    # (Creating a collection drops the answers about every collection of its tenant,
    # the list's tag being above them: so everything is created first.)
    marker = f"inv-{uuid.uuid4().hex[:10]}"
    for tenant, name in (("default", collection), (other, collection), ("default", marker)):
        await create_in_lake(lake, tenant, name)
    await write_to_lake(lake, "default", collection, point(1))
    one = setup.nexus[0]
    assert await ids_through(setup.entries[0], collection) == [1]
    assert await ids_through(setup.entries[0], marker) == []

    # The other tenant writes to its collection of the same name, then this tenant to
    # the marker. Once the instance has heard the marker's invalidation (published
    # after the other tenant's), this tenant's answer is still its cached copy.
    await write_to_lake(lake, other, collection, point(2))
    await write_to_lake(lake, "default", marker, point(1))
    await fresh_everywhere(setup, marker, [1])
    hits = cache_hits(one)
    assert await ids_through(setup.entries[0], collection) == [1]
    assert cache_hits(one) == hits + 1
