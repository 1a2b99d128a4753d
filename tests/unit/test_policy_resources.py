"""What each call needs (``requirement_of``): every method of every service in the
contracts' descriptor set is mapped (a new RPC without a mapping fails here), and the
resource each data call is about comes from its request the way the cache's tags do."""

from __future__ import annotations

import pytest
from datapunk.lake.v1 import spatial_pb2, timeseries_pb2, vectors_pb2
from datapunk.nexus.v1 import audit_pb2, policy_pb2
from datapunk_nexus.contracts import load_contracts
from datapunk_nexus.identity.policy.resources import (
    AUTHENTICATED,
    PUBLIC,
    Requirement,
    UnmappedMethod,
    requirement_of,
)
from datapunk_nexus.identity.policy.rules import ACTIONS, parse_resource
from google.protobuf import empty_pb2, message_factory
from google.protobuf.message import Message


def all_methods() -> list[tuple[str, type[Message]]]:
    contracts = load_contracts()
    found = []
    for file in contracts.files.file:
        for service in file.service:
            for method in service.method:
                descriptor = contracts.pool.FindMessageTypeByName(method.input_type.lstrip("."))
                found.append(
                    (
                        f"/{file.package}.{service.name}/{method.name}",
                        message_factory.GetMessageClass(descriptor),
                    )
                )
    return found


METHODS = all_methods()


def test_the_descriptor_set_has_the_services_this_map_knows() -> None:
    services = {method.split("/")[1] for method, _ in METHODS}
    assert {
        "datapunk.lake.v1.VectorService",
        "datapunk.nexus.v1.PolicyService",
        "datapunk.nexus.v1.AuthService",
    } <= services


@pytest.mark.parametrize(("method", "request_class"), METHODS, ids=[m for m, _ in METHODS])
def test_every_method_is_mapped(method: str, request_class: type[Message]) -> None:
    requirement = requirement_of(method, request_class())
    if requirement.public or not requirement.action:
        assert requirement in (PUBLIC, AUTHENTICATED)
        return
    assert requirement.action in ACTIONS
    for resource in requirement.resources:
        assert parse_resource(resource) is not None, resource


@pytest.mark.parametrize(
    "method",
    [
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/datapunk.lake.v1.StatusService/GetStatus",
        "/datapunk.nexus.v1.AuthService/IssueToken",
    ],
)
def test_public_methods(method: str) -> None:
    assert requirement_of(method, empty_pb2.Empty()).public


@pytest.mark.parametrize(
    "method",
    [
        "/datapunk.lake.v1.VectorService/FrobnicateCollection",
        "/datapunk.lake.v1.VectorService/Collection",
        "/datapunk.nexus.v1.PolicyService/DropEverything",
        "/datapunk.nexus.v1.NewService/Get",
        "/evil.Service/GetStatusService",
        "/datapunk.lake.v1.StatusService/../VectorService/DeleteCollection",
        "no-slash",
        "",
    ],
)
def test_an_unmapped_method_is_refused(method: str) -> None:
    with pytest.raises(UnmappedMethod) as caught:
        requirement_of(method, empty_pb2.Empty())
    assert caught.value.code == "PERMISSION_DENIED"
    assert caught.value.reason == "UNMAPPED_METHOD"


VECTORS = "/datapunk.lake.v1.VectorService/"
SERIES = "/datapunk.lake.v1.TimeSeriesService/"
LAYERS = "/datapunk.lake.v1.SpatialService/"


@pytest.mark.parametrize(
    ("method", "message", "expected"),
    [
        (
            VECTORS + "SearchPoints",
            vectors_pb2.SearchPointsRequest(collection="collections/docs"),
            Requirement("read", "collection/docs"),
        ),
        (
            VECTORS + "GetCollectionStats",
            vectors_pb2.GetCollectionStatsRequest(name="collections/docs/stats"),
            Requirement("read", "collection/docs"),
        ),
        (
            VECTORS + "UpsertPoints",
            vectors_pb2.UpsertPointsRequest(collection="collections/docs"),
            Requirement("write", "collection/docs"),
        ),
        (
            VECTORS + "DeletePoints",
            vectors_pb2.DeletePointsRequest(collection="collections/docs"),
            Requirement("write", "collection/docs"),
        ),
        (
            VECTORS + "CreateCollection",
            vectors_pb2.CreateCollectionRequest(collection_id="docs"),
            Requirement("admin", "collection/docs"),
        ),
        (
            VECTORS + "DeleteCollection",
            vectors_pb2.DeleteCollectionRequest(name="collections/docs"),
            Requirement("admin", "collection/docs"),
        ),
        (
            VECTORS + "OptimizeCollection",
            vectors_pb2.OptimizeCollectionRequest(name="collections/docs"),
            Requirement("admin", "collection/docs"),
        ),
        (
            VECTORS + "ListCollections",
            vectors_pb2.ListCollectionsRequest(),
            Requirement("read", "collection/*"),
        ),
        (
            SERIES + "UpdateSeries",
            timeseries_pb2.UpdateSeriesRequest(series=timeseries_pb2.Series(name="series/cpu")),
            Requirement("admin", "series/cpu"),
        ),
        (
            SERIES + "StreamWriteRows",
            timeseries_pb2.StreamWriteRowsRequest(series="series/cpu"),
            Requirement("write", "series/cpu"),
        ),
        (
            SERIES + "CreateDownsamplingRule",
            timeseries_pb2.CreateDownsamplingRuleRequest(parent="series/cpu", rule_id="hourly"),
            Requirement("write", "series/cpu"),
        ),
        (
            SERIES + "ReadLatest",
            timeseries_pb2.ReadLatestRequest(series="series/cpu"),
            Requirement("read", "series/cpu"),
        ),
        (
            LAYERS + "GetFeature",
            spatial_pb2.GetFeatureRequest(name="layers/roads/features/7"),
            Requirement("read", "layer/roads"),
        ),
        (
            LAYERS + "ComputeDistance",
            spatial_pb2.ComputeDistanceRequest(
                from_feature="layers/roads/features/1", to_feature="layers/secret/features/2"
            ),
            Requirement("read", "layer/roads", also=("layer/secret",)),
        ),
        (
            LAYERS + "ComputeDistance",
            spatial_pb2.ComputeDistanceRequest(
                from_feature="layers/roads/features/1", to_feature="layers/roads/features/2"
            ),
            Requirement("read", "layer/roads"),
        ),
    ],
)
def test_data_calls_need_an_action_on_the_resource_they_name(
    method: str, message: Message, expected: Requirement
) -> None:
    assert requirement_of(method, message) == expected


@pytest.mark.parametrize(
    "name",
    [
        "collections/../globex/docs",
        "collections/*",
        "collections/doc*",
        "tenants/globex/collections/docs",
        "layers/docs",
        "",
    ],
)
def test_odd_names_need_the_permission_on_every_resource(name: str) -> None:
    request = vectors_pb2.GetCollectionRequest(name=name)
    assert requirement_of(VECTORS + "GetCollection", request).resource == "collection/*"


def test_odd_ids_of_a_new_resource_need_the_permission_on_every_resource() -> None:
    for collection_id in ("", "*", "a/b", "x" * 300):
        request = vectors_pb2.CreateCollectionRequest(collection_id=collection_id)
        assert requirement_of(VECTORS + "CreateCollection", request).resource == "collection/*"


def test_check_permission_about_oneself_needs_only_authentication() -> None:
    method = "/datapunk.nexus.v1.PolicyService/CheckPermission"
    assert requirement_of(method, policy_pb2.CheckPermissionRequest()) == AUTHENTICATED
    other = policy_pb2.CheckPermissionRequest(principal="client:other")
    assert requirement_of(method, other) == Requirement(
        "admin", "route/datapunk.nexus.v1.PolicyService.CheckPermission"
    )


def test_administrative_calls_need_admin_on_their_route() -> None:
    for name in ("PutRole", "GetRole", "ListRoles", "DeleteRole", "GrantRole", "RevokeRole"):
        method = f"/datapunk.nexus.v1.PolicyService/{name}"
        assert requirement_of(method, empty_pb2.Empty()) == Requirement(
            "admin", f"route/datapunk.nexus.v1.PolicyService.{name}"
        )
    signing = requirement_of("/datapunk.nexus.v1.AuthService/RotateSigningKey", empty_pb2.Empty())
    assert signing.resource == "platform/datapunk.nexus.v1.AuthService.RotateSigningKey"
    search = "/datapunk.nexus.v1.AuditService/SearchAuditEvents"
    tenant_trail = requirement_of(search, audit_pb2.SearchAuditEventsRequest())
    assert tenant_trail.resource.startswith("route/")
    platform_trail = requirement_of(search, audit_pb2.SearchAuditEventsRequest(platform=True))
    assert platform_trail.resource.startswith("platform/")


def test_no_permission_means_no_resources() -> None:
    assert PUBLIC.resources == ()
    assert AUTHENTICATED.resources == ()
    assert Requirement("read", "layer/a", also=("layer/b",)).resources == ("layer/a", "layer/b")
