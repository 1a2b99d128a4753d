"""The REST route table: path templates, versioned packages, and equality with the table
Envoy serves (envoy/generate.py, same descriptor set): the transcoder's routes, and the
plain-HTTP paths (OAuth endpoints and public documents) Envoy sends to the REST edge."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from datapunk_nexus.edge import rest_route_table
from datapunk_nexus.edge.routes import default_descriptor_set
from datapunk_nexus.edge.template import PathTemplate, TemplateError
from datapunk_nexus.identity.oauth import build_authorization_server, oauth_http_routes
from datapunk_nexus.identity.signing import DeferredKeyRing
from datapunk_shared.config import Settings
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2
from psycopg_pool import AsyncConnectionPool

from tests.edge_support import edge_descriptor_set, edge_routes

ROOT = Path(__file__).resolve().parents[2]


def test_template_with_a_resource_pattern_and_a_verb() -> None:
    template = PathTemplate.parse("/v1/lake/{name=collections/*}:optimize")
    assert template.variables == ("name",)
    assert template.match("/v1/lake/collections/docs:optimize") == {"name": "collections/docs"}
    assert template.match("/v1/lake/collections/docs") is None
    assert template.match("/v1/lake/collections/a/b:optimize") is None
    assert template.openapi() == (
        "/v1/lake/collections/{collectionsId}:optimize",
        [("collectionsId", "name", "collections")],
    )


def test_openapi_parameters_of_wildcards_without_a_literal_of_their_own_are_unique() -> None:
    labels = PathTemplate.parse("/v1/nexus/policy/labels/{label.resource=*/*}")
    assert labels.match("/v1/nexus/policy/labels/collection/docs") == {
        "label.resource": "collection/docs"
    }
    assert labels.openapi() == (
        "/v1/nexus/policy/labels/{labelResource}/{labelResource2}",
        [("labelResource", "label.resource", ""), ("labelResource2", "label.resource", "")],
    )
    twice = PathTemplate.parse("/v1/{name=shelves/*/*}")
    assert twice.openapi()[0] == "/v1/shelves/{shelvesId}/{name}"


def test_template_with_nested_field_multi_wildcards_and_double_star() -> None:
    nested = PathTemplate.parse("/v1/{item.name=shelves/*/items/*}")
    assert nested.match("/v1/shelves/a/items/b") == {"item.name": "shelves/a/items/b"}
    rest = PathTemplate.parse("/v1/files/{path=**}")
    assert rest.match("/v1/files/a/b/c") == {"path": "a/b/c"}
    plain = PathTemplate.parse("/v1/things/{id}")
    assert plain.match("/v1/things/x%20y") == {"id": "x y"}
    assert plain.match("/v1/things/x/y") is None


def test_undecodable_path_parameter_is_refused() -> None:
    with pytest.raises(TemplateError):
        PathTemplate.parse("/v1/things/{id}").match("/v1/things/%ff%fe")


@pytest.mark.parametrize(
    "text", ["v1/x", "/v1/{name", "/v1//x", "/v1/{1bad}", "/v1/x:", "/v1/{a=b/}"]
)
def test_malformed_templates_are_refused(text: str) -> None:
    with pytest.raises(TemplateError):
        PathTemplate.parse(text)


def test_a_v2_package_is_served_beside_v1() -> None:
    entries = edge_routes().entries()
    assert (
        "GET",
        "/v1/test/{name=shelves/*/items/*}",
        "/datapunk.test.v1.ItemService/GetItem",
    ) in (entries)
    assert ("GET", "/v1/test/items/{name}", "/datapunk.test.v1.ItemService/GetItem") in entries
    assert ("GET", "/v2/test/{name=items/*}", "/datapunk.test.v2.ItemService/GetItem") in entries
    owners = {r.owner for r in edge_routes().routes}
    assert owners == {"test"}


def test_every_rpc_of_the_contracts_has_a_route() -> None:
    files = descriptor_pb2.FileDescriptorSet.FromString(default_descriptor_set().read_bytes())
    methods = {
        f"/{f.package}.{s.name}/{m.name}"
        for f in files.file
        if f.package.startswith("datapunk.")
        for s in f.service
        for m in s.method
    }
    assert {grpc_method for _, _, grpc_method in rest_route_table()} == methods


def _envoy_generate() -> Any:
    spec = importlib.util.spec_from_file_location("envoy_generate", ROOT / "envoy" / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["envoy_generate"] = module
    spec.loader.exec_module(module)
    return module


def _transcoder_table(descriptor_set: Path, services: list[str]) -> list[tuple[str, str, str]]:
    """The routes Envoy's transcoder serves for ``services`` with ``auto_mapping`` off:
    each google.api.http rule and additional binding of each of their methods, read
    straight from the descriptor set (no code of the Python edge involved)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    table: list[tuple[str, str, str]] = []

    def walk(rule: Any, grpc_method: str) -> None:
        kind = rule.WhichOneof("pattern")
        if kind == "custom":
            table.append((rule.custom.kind.upper(), rule.custom.path, grpc_method))
        elif kind is not None:
            table.append((kind.upper(), getattr(rule, kind), grpc_method))
        for extra in rule.additional_bindings:
            walk(extra, grpc_method)

    for file in files.file:
        for service in file.service:
            full = f"{file.package}.{service.name}"
            if full in services:
                for method in service.method:
                    rule = method.options.Extensions[annotations_pb2.http]
                    walk(rule, f"/{full}/{method.name}")
    return sorted(table)


@pytest.mark.parametrize("which", ["contracts", "synthetic v1+v2"])
def test_route_table_equals_envoys(which: str) -> None:
    descriptor_set = default_descriptor_set() if which == "contracts" else edge_descriptor_set()
    generate = _envoy_generate()
    if which == "contracts":
        files = generate.render(generate.Options())
    else:
        services = generate.load_services(descriptor_set)
        addresses = {o: ("127.0.0.1", 1) for o in {s.owner for s in services}}
        files = {"edge.yaml": generate.dump(generate.edge(services, addresses, generate.Options()))}
    edge = json.loads(files["edge.yaml"].split("\n", 2)[2])
    http_filters = edge["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]["http_filters"]
    transcoder = next(
        f["typed_config"]
        for f in http_filters
        if f["name"] == "envoy.filters.http.grpc_json_transcoder"
    )
    # Only the annotations route: the same table as ours needs auto-mapping off.
    assert transcoder["auto_mapping"] is False
    assert transcoder["request_validation_options"]["reject_unknown_query_parameters"] is True
    envoy_table = _transcoder_table(descriptor_set, transcoder["services"])
    assert rest_route_table(descriptor_set) == envoy_table


# What RestEdge serves itself before any route or plain route (RestEdge._dispatch): the
# OpenAPI document and its page. tests/integration/test_envoy_rest_paths.py asks a running
# edge for each of them.
EDGE_DOCUMENTS = {"/openapi.json": None, "/docs": None}


def _python_plain_paths() -> dict[str, str | None]:
    """Path -> the gRPC method whose rate limits its requests meet (None: not gated), of
    every plain-HTTP path Nexus's REST edge serves: the OAuth endpoints exactly as Nexus
    adds them (``oauth_http_routes``; building them opens no connection) and the
    documents."""
    settings = Settings()
    pool = AsyncConnectionPool(settings.engines.postgres.url, open=False)
    server = build_authorization_server(settings, pool, DeferredKeyRing())
    table = {route.path: route.gated_as for route in oauth_http_routes(server)}
    return {**table, **EDGE_DOCUMENTS}


def _envoy_plain_paths(edge: dict[str, Any]) -> dict[str, bool]:
    """Path -> whether Envoy rate-limits it, of every route of Envoy's edge to the REST
    edge's cluster."""
    hcm = edge["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    return {
        route["match"]["path"]: bool(route["route"].get("rate_limits"))
        for route in hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
        if route.get("route", {}).get("cluster") == "nexus_rest"
    }


def test_plain_paths_equal_envoys() -> None:
    """Every path the REST edge serves outside the contracts reaches it through Envoy, and
    nothing else does. The OAuth endpoints meet the limits of their gRPC twins at the REST
    edge, and only there: Envoy does not count them a second time."""
    generate = _envoy_generate()
    edge = json.loads(generate.render(generate.Options())["edge.yaml"].split("\n", 2)[2])
    python = _python_plain_paths()
    assert _envoy_plain_paths(edge) == dict.fromkeys(python, False)
    assert {p for p, rpc in python.items() if rpc} == {
        "/oauth/token",
        "/oauth/revoke",
        "/oauth/introspect",
    }
