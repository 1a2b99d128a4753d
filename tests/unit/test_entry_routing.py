"""The gRPC entry's pure logic: owners and call kinds from the descriptor set, what
metadata crosses, request ids, deadlines."""

from __future__ import annotations

import pytest
from datapunk_nexus.entry.deadlines import DeadlinePolicy
from datapunk_nexus.entry.metadata import client_ip, outgoing, request_id_of, returned
from datapunk_nexus.entry.routes import (
    DEFAULT_DESCRIPTOR_SET,
    CallKind,
    RouteTable,
    load_descriptor_set,
    owner_of,
)
from datapunk_shared.rpc.interceptor import REQUEST_ID_KEY
from datapunk_shared.rpc.status_codes import STATUS_DETAILS_KEY

OWNERS = frozenset({"lake", "stream", "nexus"})


@pytest.fixture(scope="module")
def table() -> RouteTable:
    return RouteTable(load_descriptor_set(DEFAULT_DESCRIPTOR_SET), OWNERS)


@pytest.mark.parametrize(
    ("service", "owner"),
    [
        ("datapunk.lake.v1.VectorService", "lake"),
        ("datapunk.stream.v1.StatusService", "stream"),
        ("datapunk.nexus.v2.StatusService", "nexus"),
        ("datapunk.lake.v1alpha1.Thing", "lake"),
        ("grpc.health.v1.Health", None),
        ("datapunk.common.StatusService", None),
        ("acme.lake.v1.VectorService", None),
        ("VectorService", None),
    ],
)
def test_owner_comes_from_the_package(service: str, owner: str | None) -> None:
    assert owner_of(service) == owner


@pytest.mark.parametrize(
    ("method", "kind"),
    [
        ("/datapunk.lake.v1.StatusService/GetStatus", CallKind.UNARY_UNARY),
        ("/datapunk.lake.v1.VectorService/SearchPoints", CallKind.UNARY_UNARY),
        ("/datapunk.lake.v1.VectorService/ImportPoints", CallKind.STREAM_STREAM),
        ("/datapunk.lake.v1.TimeSeriesService/StreamWriteRows", CallKind.STREAM_STREAM),
        ("/datapunk.lake.v1.SpatialService/LoadFeatures", CallKind.STREAM_STREAM),
        ("/datapunk.nexus.v1.StatusService/GetStatus", CallKind.UNARY_UNARY),
    ],
)
def test_call_kind_comes_from_the_descriptor_set(
    table: RouteTable, method: str, kind: CallKind
) -> None:
    route = table.lookup(method)
    assert route is not None
    assert route.kind is kind
    assert table.knows(method)


def test_every_service_of_the_contracts_is_routed(table: RouteTable) -> None:
    assert {
        "datapunk.lake.v1.StatusService",
        "datapunk.lake.v1.VectorService",
        "datapunk.lake.v1.TimeSeriesService",
        "datapunk.lake.v1.SpatialService",
        "datapunk.stream.v1.StatusService",
        "datapunk.nexus.v1.StatusService",
    } <= set(table.services)


def test_a_method_the_contracts_do_not_know_goes_to_its_owner_as_a_stream(
    table: RouteTable,
) -> None:
    route = table.lookup("/datapunk.stream.v1.NewerService/DoIt")
    assert route is not None
    assert (route.owner, route.kind) == ("stream", CallKind.STREAM_STREAM)
    assert not table.knows("/datapunk.stream.v1.NewerService/DoIt")


@pytest.mark.parametrize(
    "method",
    [
        "/acme.v1.Widgets/Get",
        "/datapunk.billing.v1.Invoices/Get",  # no such backend
        "/datapunk.lake.v1.VectorService",  # no method
        "/datapunk.lake.v1.VectorService/",
        "",
    ],
)
def test_methods_nobody_owns_have_no_route(table: RouteTable, method: str) -> None:
    assert table.lookup(method) is None


def test_outgoing_metadata_drops_hop_by_hop_reserved_and_credential_headers() -> None:
    incoming = (
        ("user-agent", "grpc-go/1.0"),
        ("x-tenant", "acme"),
        ("grpc-timeout", "5S"),
        ("te", "trailers"),
        ("authorization", "Bearer t"),
        ("trace-bin", b"\x00\x01"),
        ("traceparent", "00-abc-def-01"),
    )
    # The caller's credentials stay at the entry; Nexus's own go first.
    nexus = (("authorization", "Bearer nexus"),)
    assert outgoing(incoming, "rid", nexus) == (
        (REQUEST_ID_KEY, "rid"),
        ("authorization", "Bearer nexus"),
        ("x-tenant", "acme"),
        ("trace-bin", b"\x00\x01"),
        ("traceparent", "00-abc-def-01"),
    )


def test_exactly_one_request_id_goes_out() -> None:
    incoming = ((REQUEST_ID_KEY, "x" * 500), ("x-a", "1"))
    assert request_id_of(incoming) is None  # too long: the entry makes one up
    assert outgoing(incoming, "new") == ((REQUEST_ID_KEY, "new"), ("x-a", "1"))
    assert request_id_of(((REQUEST_ID_KEY, "mine"),)) == "mine"
    assert request_id_of(((REQUEST_ID_KEY, b"bytes"),)) is None
    assert request_id_of(None) is None


def test_returned_metadata_keeps_status_details_and_adds_headers_and_id() -> None:
    trailing = ((STATUS_DETAILS_KEY, b"\x08\x03"), ("grpc-message", "x"), ("x-b", "2"))
    assert returned(trailing, "rid", {"Retry-After": "3"}) == (
        (STATUS_DETAILS_KEY, b"\x08\x03"),
        ("x-b", "2"),
        ("retry-after", "3"),
        (REQUEST_ID_KEY, "rid"),
    )
    # The backend's own request id is not duplicated.
    assert returned(((REQUEST_ID_KEY, "rid"),), "rid") == ((REQUEST_ID_KEY, "rid"),)


@pytest.mark.parametrize(
    ("peer", "ip"),
    [
        ("ipv4:10.1.2.3:5000", "10.1.2.3"),
        ("ipv6:[::1]:5000", "::1"),
        ("ipv6:[2001:db8::7]:443", "2001:db8::7"),
        ("unix:/run/x.sock", "/run/x.sock"),
    ],
)
def test_client_ip_of_a_peer(peer: str, ip: str) -> None:
    assert client_ip(peer) == ip


def test_deadline_fallbacks(table: RouteTable) -> None:
    policy = DeadlinePolicy(
        30.0,
        {
            "/datapunk.lake.v1.VectorService/SearchPoints": 2.0,
            "datapunk.lake.v1.SpatialService": 7.0,
        },
    )
    search = table.lookup("/datapunk.lake.v1.VectorService/SearchPoints")
    upsert = table.lookup("/datapunk.lake.v1.VectorService/UpsertPoints")
    imports = table.lookup("/datapunk.lake.v1.VectorService/ImportPoints")
    load = table.lookup("/datapunk.lake.v1.SpatialService/LoadFeatures")
    assert search is not None
    assert upsert is not None
    assert imports is not None
    assert load is not None
    assert policy.fallback(search) == 2.0
    assert policy.fallback(upsert) == 30.0
    assert policy.fallback(imports) is None  # streams: none unless configured
    assert policy.fallback(load) == 7.0
    # What the caller has left always wins.
    assert DeadlinePolicy.timeout(0.25, 30.0) == 0.25
    assert DeadlinePolicy.timeout(None, 30.0) == 30.0
    assert DeadlinePolicy.timeout(None, None) is None
