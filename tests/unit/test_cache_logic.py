"""The cache's pure parts: resource tags from the contracts, the tag tree rule, scopes
that never let one principal's answer reach another, and the bounded LRU."""

from __future__ import annotations

import pytest
from datapunk.lake.v1 import spatial_pb2, timeseries_pb2, vectors_pb2
from datapunk_nexus.cache.keys import cache_key
from datapunk_nexus.cache.lru import LocalLru
from datapunk_nexus.cache.tags import ResourceTags, ancestors, tag_matches
from datapunk_nexus.policy import CallInfo

VS = "/datapunk.lake.v1.VectorService/"
SS = "/datapunk.lake.v1.SpatialService/"
TS = "/datapunk.lake.v1.TimeSeriesService/"


@pytest.fixture(scope="module")
def tags() -> ResourceTags:
    return ResourceTags()


def test_tags_follow_the_http_rules(tags: ResourceTags) -> None:
    get = vectors_pb2.GetCollectionRequest(name="collections/docs").SerializeToString()
    assert tags.tag(VS + "GetCollection", get) == "lake/collections/docs"
    search = vectors_pb2.SearchPointsRequest(collection="collections/docs").SerializeToString()
    assert tags.tag(VS + "SearchPoints", search) == "lake/collections/docs"
    upsert = vectors_pb2.UpsertPointsRequest(collection="collections/docs").SerializeToString()
    assert tags.tag(VS + "UpsertPoints", upsert) == "lake/collections/docs"
    assert tags.tag(VS + "ListCollections", b"") == "lake/collections"
    feature = spatial_pb2.GetFeatureRequest(name="layers/roads/features/7").SerializeToString()
    assert tags.tag(SS + "GetFeature", feature) == "lake/layers/roads/features/7"


def test_a_path_without_a_variable_takes_the_resource_its_request_names(
    tags: ResourceTags,
) -> None:
    # POST /v1/lake/series:streamWrite names no series; each batch's series field does.
    batch = timeseries_pb2.StreamWriteRowsRequest(series="series/cpu").SerializeToString()
    assert tags.tag(TS + "StreamWriteRows", batch) == "lake/series/cpu"
    for series in ("", "series/", "layers/roads", "/series/cpu"):
        odd = timeseries_pb2.StreamWriteRowsRequest(series=series).SerializeToString()
        assert tags.tag(TS + "StreamWriteRows", odd) == "lake/series", series


def test_tags_fall_back_to_something_broader(tags: ResourceTags) -> None:
    assert tags.tag(VS + "GetCollection", b"") == "lake/collections"  # no name given
    assert tags.tag(VS + "GetCollection", b"\xff\xff") == "lake"  # undecodable
    assert tags.tag("/datapunk.other.v1.Thing/Do", b"") == "other"  # unknown method


def test_tag_tree_rule() -> None:
    assert ancestors("lake/collections/docs") == ["lake", "lake/collections"]
    assert tag_matches("lake/collections/docs", "lake/collections/docs")
    assert tag_matches("lake/collections/docs/stats", "lake/collections/docs")  # below
    assert tag_matches("lake/collections", "lake/collections/docs")  # the list above
    assert not tag_matches("lake/collections/other", "lake/collections/docs")
    assert not tag_matches("lake/collections/docs2", "lake/collections/docs")


def test_scopes_separate_principals_keys_and_anonymous_ips() -> None:
    base = dict(method=VS + "GetCollection", request=b"\x0a\x03abc")
    keys = {
        cache_key(CallInfo(client_ip="1.1.1.1", principal="alice", **base)),  # type: ignore[arg-type]
        cache_key(CallInfo(client_ip="1.1.1.1", principal="bob", **base)),  # type: ignore[arg-type]
        cache_key(CallInfo(client_ip="1.1.1.1", principal="alice", tenant="t2", **base)),  # type: ignore[arg-type]
        cache_key(CallInfo(client_ip="1.1.1.1", api_key_id="k1", **base)),  # type: ignore[arg-type]
        cache_key(CallInfo(client_ip="1.1.1.1", **base)),  # type: ignore[arg-type]
        cache_key(CallInfo(client_ip="2.2.2.2", **base)),  # type: ignore[arg-type]
    }
    assert len(keys) == 6
    # The same principal from another address shares its own answers.
    assert cache_key(CallInfo(client_ip="9.9.9.9", principal="alice", **base)) == cache_key(  # type: ignore[arg-type]
        CallInfo(client_ip="1.1.1.1", principal="alice", **base)  # type: ignore[arg-type]
    )
    # No choice of names makes two scopes collide.
    assert cache_key(CallInfo(VS + "X", "ip", principal="a", tenant="bp")) != cache_key(
        CallInfo(VS + "X", "ip", principal="ab", tenant="p")
    )


def test_lru_bounds_entries_and_bytes_and_drops_by_tag() -> None:
    lru = LocalLru(max_entries=3, max_bytes=10_000)
    for i in range(5):
        lru.put(f"k{i}", "lake/collections/a", b"x", ttl=60)
    assert len(lru) == 3
    assert lru.get("k0") is None
    assert lru.get("k4") == b"x"

    small = LocalLru(max_entries=100, max_bytes=2_000)
    for i in range(10):
        small.put(f"k{i}", "t", b"y" * 500, ttl=60)
    assert small.bytes <= 2_000
    assert len(small) == 2

    lru = LocalLru(max_entries=100, max_bytes=100_000)
    lru.put("get", "lake/collections/docs", b"1", ttl=60)
    lru.put("stats", "lake/collections/docs/stats", b"2", ttl=60)
    lru.put("list", "lake/collections", b"3", ttl=60)
    lru.put("other", "lake/collections/other", b"4", ttl=60)
    assert lru.invalidate("lake/collections/docs") == 3
    assert lru.get("other") == b"4"
    assert [lru.get(k) for k in ("get", "stats", "list")] == [None, None, None]
    lru.clear()
    assert lru.bytes == 0


def test_lru_expires_entries() -> None:
    lru = LocalLru(max_entries=10, max_bytes=10_000)
    lru.put("k", "t", b"v", ttl=1e-9)
    assert lru.get("k") is None
    assert len(lru) == 0
