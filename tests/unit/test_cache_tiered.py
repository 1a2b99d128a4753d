"""The response cache in process (memory backend): hits, per-principal answers, writes
that invalidate, and answers that raced with an invalidation never stored."""

from __future__ import annotations

from collections.abc import Sequence

from datapunk.lake.v1 import vectors_pb2
from datapunk_nexus.cache import build_cache
from datapunk_nexus.cache.lru import LocalLru
from datapunk_nexus.cache.tags import ResourceTags
from datapunk_nexus.cache.tiered import TieredCache
from datapunk_nexus.policy import CallInfo
from datapunk_shared.config import CacheRule, CacheSettings

VS = "/datapunk.lake.v1.VectorService/"
GET = VS + "GetCollection"
UPSERT = VS + "UpsertPoints"


def cache() -> TieredCache:
    settings = CacheSettings(backend="memory", rules=[CacheRule(methods=[VS + "Get*"], ttl=60)])
    built, subscriber = build_cache(settings, None, None)
    assert subscriber is None
    return built


def get_call(name: str = "collections/docs", **who: str) -> CallInfo:
    request = vectors_pb2.GetCollectionRequest(name=name).SerializeToString()
    return CallInfo(GET, who.get("ip", "10.0.0.1"), who.get("principal"), request=request)


def upsert_call(collection: str = "collections/docs") -> CallInfo:
    request = vectors_pb2.UpsertPointsRequest(collection=collection).SerializeToString()
    return CallInfo(UPSERT, "10.0.0.1", "writer", request=request)


async def fill(c: TieredCache, call: CallInfo, answer: bytes) -> None:
    assert await c.get(call) is None
    await c.put(call, answer)


async def test_hit_after_put_and_only_for_cacheable_methods() -> None:
    c = cache()
    assert c.cacheable(GET)
    assert not c.cacheable(UPSERT)
    await fill(c, get_call(principal="alice"), b"answer")
    assert await c.get(get_call(principal="alice")) == b"answer"
    assert await c.get(get_call(name="collections/other", principal="alice")) is None


async def test_never_serves_one_principals_answer_to_another() -> None:
    c = cache()
    await fill(c, get_call(principal="alice"), b"alice's")
    assert await c.get(get_call(principal="bob")) is None
    assert await c.get(get_call()) is None  # anonymous
    await fill(c, get_call(ip="10.0.0.1"), b"anon 1")
    assert await c.get(get_call(ip="10.0.0.2")) is None


async def test_a_write_invalidates_its_resource_only() -> None:
    c = cache()
    await fill(c, get_call(principal="alice"), b"docs")
    await fill(c, get_call(name="collections/other", principal="alice"), b"other")
    await c.after_call(upsert_call())
    assert await c.get(get_call(principal="alice")) is None
    assert await c.get(get_call(name="collections/other", principal="alice")) == b"other"


def tenant_call(method: str, request: bytes, tenant: str | None, principal: str) -> CallInfo:
    return CallInfo(method, "10.0.0.1", principal, tenant, request=request)


async def test_a_write_drops_its_own_tenants_entries_only() -> None:
    c = cache()
    get = vectors_pb2.GetCollectionRequest(name="collections/docs").SerializeToString()
    upsert = vectors_pb2.UpsertPointsRequest(collection="collections/docs").SerializeToString()
    await fill(c, tenant_call(GET, get, "acme", "alice"), b"acme's docs")
    await fill(c, tenant_call(GET, get, "globex", "gina"), b"globex's docs")
    await fill(c, tenant_call(GET, get, None, "dora"), b"default's docs")
    await c.after_call(tenant_call(UPSERT, upsert, "acme", "writer"))
    assert await c.get(tenant_call(GET, get, "acme", "alice")) is None
    assert await c.get(tenant_call(GET, get, "globex", "gina")) == b"globex's docs"
    assert await c.get(tenant_call(GET, get, None, "dora")) == b"default's docs"
    # A call without a tenant is the default tenant's, as the services see it.
    c.drop_local(["default/lake/collections/docs"])
    assert await c.get(tenant_call(GET, get, None, "dora")) is None
    assert await c.get(tenant_call(GET, get, "globex", "gina")) == b"globex's docs"


async def test_reads_do_not_invalidate() -> None:
    c = cache()
    await fill(c, get_call(principal="alice"), b"docs")
    search = vectors_pb2.SearchPointsRequest(collection="collections/docs").SerializeToString()
    await c.after_call(CallInfo(VS + "SearchPoints", "ip", "bob", request=search))
    assert await c.get(get_call(principal="alice")) == b"docs"


async def test_an_answer_that_raced_with_an_invalidation_is_not_stored() -> None:
    c = cache()
    call = get_call(principal="alice")
    assert await c.get(call) is None  # miss: the entry goes to the backend...
    await c.after_call(upsert_call())  # ...while a write lands
    await c.put(call, b"maybe stale")
    assert await c.get(call) is None
    # An unrelated invalidation does not prevent caching.
    assert await c.get(call) is None
    await c.after_call(upsert_call("collections/other"))
    await c.put(call, b"fresh")
    assert await c.get(call) == b"fresh"


async def test_put_without_a_miss_and_oversized_answers_are_ignored() -> None:
    c = cache()
    await c.put(get_call(principal="alice"), b"unasked")
    assert await c.get(get_call(principal="alice")) is None
    settings = CacheSettings(
        backend="memory", rules=[CacheRule(methods=[GET], ttl=60)], max_entry_bytes=10
    )
    small, _ = build_cache(settings, None, None)
    await fill(small, get_call(principal="alice"), b"x" * 11)
    assert await small.get(get_call(principal="alice")) is None


class _FakeShared:
    """A Redis layer that always misses and records what is put."""

    def __init__(self) -> None:
        self.puts: list[tuple[str, bytes, bytes, float]] = []

    async def get(self, key: str, tag: str) -> tuple[bytes | None, bytes, float]:
        return None, b"stamp", 0.0

    async def put(self, key: str, stamp: bytes, value: bytes, ttl: float) -> None:
        self.puts.append((key, stamp, value, ttl))

    async def invalidate(self, tags: Sequence[str]) -> None:
        return None


async def test_a_miss_and_its_put_decode_the_request_for_its_tag_once() -> None:
    tags = ResourceTags()
    seen: list[str] = []
    tag_of = tags.tag

    def counted(method: str, request: bytes) -> str:
        seen.append(tag_of(method, request))
        return seen[-1]

    tags.tag = counted  # type: ignore[method-assign]
    shared = _FakeShared()
    c = TieredCache(
        [CacheRule(methods=[VS + "Get*"], ttl=60)],
        [],
        tags,
        LocalLru(max_entries=100, max_bytes=1 << 20),
        shared=shared,  # type: ignore[arg-type]
        max_entry_bytes=1 << 20,
    )
    c.set_local_usable(True)
    call = get_call(principal="alice")
    await fill(c, call, b"docs")
    assert seen == ["lake/collections/docs"]
    assert [(stamp, value) for _, stamp, value, _ in shared.puts] == [(b"stamp", b"docs")]
    assert await c.get(call) == b"docs"  # kept locally, under the tag worked out by get
    await c.after_call(upsert_call())
    assert await c.get(call) is None
