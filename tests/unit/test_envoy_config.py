"""The Envoy configuration in envoy/ is current, and is valid for Envoy's own API.

Envoy cannot be installed here, so each file is parsed strictly into
``envoy.config.bootstrap.v3.Bootstrap`` from xds-protos (unknown fields, wrong types and
unresolvable ``@type`` URLs are errors, inside every typed_config too), then checked against
the protoc-gen-validate rules Envoy enforces at load time (required fields and oneofs, ranges,
lengths) and for deprecated fields. The route table is checked against the descriptor set,
read here independently of the generator.
"""

# mypy: disable-error-code="import-untyped"
# (xds-protos ships no type stubs; its modules are used for their descriptors.)
from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Every message a typed_config names must be in the default pool, or ParseDict fails on it.
# (xds-protos' own top-level package is named ``envoy``; the repository's envoy/ folder is
# not a package, so it does not shadow these.)
from datapunk_shared.config import EnvoyServicesSettings, RestEdgeSettings
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2  # noqa: F401
from envoy.extensions.filters.http.cors.v3 import cors_pb2  # noqa: F401
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2  # noqa: F401
from envoy.extensions.filters.http.grpc_json_transcoder.v3 import transcoder_pb2  # noqa: F401
from envoy.extensions.filters.http.health_check.v3 import health_check_pb2  # noqa: F401
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.extensions.resource_monitors.downstream_connections.v3 import (  # noqa: F401
    downstream_connections_pb2,
)
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from validate import validate_pb2

ROOT = Path(__file__).resolve().parents[2]
ENVOY = ROOT / "envoy"
GENERATOR = ENVOY / "generate.py"
DESCRIPTOR_SET = ROOT / "gen" / "descriptors" / "datapunk.binpb"
OWNERS = ("lake", "stream", "nexus")
FILES = ("edge.yaml", *(f"sidecar-{owner}.yaml" for owner in OWNERS))
REST_CLUSTER = "nexus_rest"
# The plain-HTTP paths Nexus's REST edge serves itself; tests/unit/test_edge_routes.py
# checks this against the edge's own table.
PLAIN_PATHS = {
    "/oauth/token",
    "/oauth/revoke",
    "/oauth/introspect",
    "/.well-known/oauth-authorization-server",
    "/.well-known/jwks.json",
    "/openapi.json",
    "/docs",
}

Json = dict[str, Any]


def load(text: str) -> Json:
    """The generated files are a '#' comment header followed by one JSON document."""
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    config = json.loads(body)
    assert isinstance(config, dict)
    return config


def committed(name: str) -> Json:
    return load((ENVOY / name).read_text())


def generate(out_dir: Path, *args: str) -> dict[str, str]:
    subprocess.run(
        [sys.executable, str(GENERATOR), "--out-dir", str(out_dir), *args],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    return {p.name: p.read_text() for p in sorted(out_dir.glob("*.yaml"))}


# --- strict parsing -----------------------------------------------------------------------


def _range_violation(value: Any, rules: Any, convert: Any = lambda v: v) -> str | None:
    """PGV's gt/gte/lt/lte/const/in/not_in for numbers and durations."""
    if rules.HasField("const") and value != convert(rules.const):
        return f"must be {convert(rules.const)}"
    allowed = getattr(rules, "in", None)
    if allowed and value not in map(convert, allowed):
        return "not in the allowed values"
    if rules.not_in and value in map(convert, rules.not_in):
        return "a forbidden value"
    low = ("gt", convert(rules.gt)) if rules.HasField("gt") else None
    low = ("gte", convert(rules.gte)) if rules.HasField("gte") else low
    high = ("lt", convert(rules.lt)) if rules.HasField("lt") else None
    high = ("lte", convert(rules.lte)) if rules.HasField("lte") else high
    ok_low = low is None or (value > low[1] if low[0] == "gt" else value >= low[1])
    ok_high = high is None or (value < high[1] if high[0] == "lt" else value <= high[1])
    exclusive = low is not None and high is not None and high[1] < low[1]
    if (ok_low or ok_high) if exclusive else (ok_low and ok_high):
        return None
    return f"out of range ({low}, {high})"


def _scalar_violation(fd: Any, value: Any, rules: Any) -> str | None:
    kind = rules.WhichOneof("type")
    if kind is None:
        return None
    typed_rules = getattr(rules, kind)
    if kind == "string":
        r = typed_rules
        if r.ignore_empty and not value:
            return None
        if r.HasField("min_len") and len(value) < r.min_len:
            return f"shorter than {r.min_len}"
        if r.HasField("max_len") and len(value) > r.max_len:
            return f"longer than {r.max_len}"
        if r.HasField("min_bytes") and len(value.encode()) < r.min_bytes:
            return f"shorter than {r.min_bytes} bytes"
        if r.HasField("prefix") and not value.startswith(r.prefix):
            return f"must start with {r.prefix!r}"
        if getattr(r, "in") and value not in getattr(r, "in"):
            return "not in the allowed values"
        return None
    if kind == "enum":
        if typed_rules.defined_only and fd.enum_type.values_by_number.get(value) is None:
            return "undefined enum value"
        return None
    if kind in ("double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64"):
        if getattr(typed_rules, "ignore_empty", False) and not value:
            return None
        return _range_violation(value, typed_rules)
    return None


WRAPPERS = {
    f"google.protobuf.{n}Value"
    for n in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String")
}


def _message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def pgv_violations(msg: Message, path: str = "") -> Iterator[str]:
    """The protoc-gen-validate rules (and deprecations) Envoy checks when it loads a config,
    recursing into every set message field and every Any."""
    desc = msg.DESCRIPTOR
    if desc.full_name == "google.protobuf.Any":
        assert isinstance(msg, any_pb2.Any)
        inner_desc = descriptor_pool.Default().FindMessageTypeByName(msg.TypeName())
        inner = _message_class(inner_desc)()
        assert msg.Unpack(inner)
        yield from pgv_violations(inner, f"{path}<{msg.TypeName()}>")
        return
    for oneof in desc.oneofs:
        required = oneof.GetOptions().Extensions[validate_pb2.required]
        if required and msg.WhichOneof(oneof.name) is None:
            yield f"{path}: one of {oneof.name!r} is required"
    for fd in desc.fields:
        here = f"{path}.{fd.name}"
        group = fd.containing_oneof
        if group is not None and msg.WhichOneof(group.name) != fd.name:
            continue
        repeated = fd.is_repeated
        value = getattr(msg, fd.name)
        is_message = fd.type == FieldDescriptor.TYPE_MESSAGE
        present = len(value) > 0 if repeated else (msg.HasField(fd.name) if is_message else True)
        options = fd.GetOptions()
        if repeated:
            in_use = len(value) > 0
        elif fd.has_presence:
            in_use = msg.HasField(fd.name)
        else:
            in_use = value != fd.default_value
        if options.deprecated and in_use:
            yield f"{here}: deprecated field"
        has_rules = options.HasExtension(validate_pb2.rules)
        rules = options.Extensions[validate_pb2.rules] if has_rules else None
        if rules is not None:
            if rules.HasField("message") and rules.message.required and not present:
                yield f"{here}: required"
            kind = rules.WhichOneof("type")
            if repeated and kind == "repeated":
                if rules.repeated.HasField("min_items") and len(value) < rules.repeated.min_items:
                    yield f"{here}: needs at least {rules.repeated.min_items} items"
                if rules.repeated.HasField("items") and not is_message:
                    for i, item in enumerate(value):
                        problem = _scalar_violation(fd, item, rules.repeated.items)
                        if problem:
                            yield f"{here}[{i}]: {problem}"
            elif kind == "duration":
                if rules.duration.required and not present:
                    yield f"{here}: required"
                if present:
                    problem = _range_violation(
                        value.ToTimedelta(), rules.duration, lambda d: d.ToTimedelta()
                    )
                    if problem:
                        yield f"{here}: {problem}"
            elif kind == "any":
                if rules.any.required and not present:
                    yield f"{here}: required"
            elif (
                is_message
                and fd.message_type is not None
                and (fd.message_type.full_name in WRAPPERS)
            ):
                if present:
                    problem = _scalar_violation(fd, value.value, rules)
                    if problem:
                        yield f"{here}: {problem}"
            elif not repeated and not is_message:
                problem = _scalar_violation(fd, value, rules)
                if problem:
                    yield f"{here}: {problem}"
        if fd.enum_type is not None and not repeated:
            enum_value = fd.enum_type.values_by_number.get(value)
            if enum_value is not None and enum_value.GetOptions().deprecated:
                yield f"{here}: deprecated enum value {enum_value.name}"
        if is_message and present and fd.message_type is not None:
            if fd.message_type.GetOptions().map_entry:
                map_value = fd.message_type.fields_by_name["value"]
                is_message_map = map_value.type == FieldDescriptor.TYPE_MESSAGE
                items = [value[k] for k in value] if is_message_map else []
            else:
                items = list(value) if repeated else [value]
            for i, item in enumerate(items):
                yield from pgv_violations(item, f"{here}[{i}]" if repeated else here)


def parse_strictly(config: Json) -> bootstrap_pb2.Bootstrap:
    """Parse like Envoy would: no unknown field anywhere, every Any resolved, PGV rules hold."""
    bootstrap = bootstrap_pb2.Bootstrap()
    json_format.ParseDict(config, bootstrap, ignore_unknown_fields=False)
    problems = list(pgv_violations(bootstrap))
    if problems:
        raise ValueError("; ".join(problems))
    return bootstrap


def test_every_committed_file_is_generated_and_current(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    assert sorted(fresh) == sorted(FILES)
    on_disk = {p.name for p in ENVOY.glob("*.yaml")}
    assert on_disk == set(FILES), "stale or missing files in envoy/"
    stale = [name for name, text in fresh.items() if (ENVOY / name).read_text() != text]
    assert not stale, f"{stale} out of date: run scripts/gen-envoy.sh and commit the result"


@pytest.mark.parametrize("name", FILES)
def test_each_file_parses_strictly_into_bootstrap(name: str) -> None:
    bootstrap = parse_strictly(committed(name))
    assert bootstrap.static_resources.listeners
    assert bootstrap.static_resources.clusters


def test_deployment_variant_with_tls_parses_strictly(tmp_path: Path) -> None:
    files = generate(
        tmp_path,
        "--listen-address", "0.0.0.0",
        "--tls-cert", "/etc/envoy/tls.crt",
        "--tls-key", "/etc/envoy/tls.key",
        "--host", "lake=lake.internal",
        "--descriptor-path", "/etc/envoy/datapunk.binpb",
        "--edge-via-sidecars",
        "--host", "nexus=nexus.internal",
        "--authz-client-cert", "/etc/envoy/nexus-client.crt",
        "--authz-client-key", "/etc/envoy/nexus-client.key",
        "--authz-ca", "/etc/envoy/datapunk-ca.crt",
        "--authz-server-name", "nexus.internal",
    )  # fmt: skip
    for text in files.values():
        parse_strictly(load(text))
    edge = parse_strictly(load(files["edge.yaml"]))
    chain = edge.static_resources.listeners[0].filter_chains[0]
    tls = tls_pb2.DownstreamTlsContext()
    assert chain.transport_socket.typed_config.Unpack(tls)
    assert list(tls.common_tls_context.alpn_protocols) == ["h2", "http/1.1"]
    lake = next(c for c in edge.static_resources.clusters if c.name == "lake")
    endpoint = lake.load_assignment.endpoints[0].lb_endpoints[0].endpoint
    assert endpoint.address.socket_address.address == "lake.internal"
    assert endpoint.address.socket_address.port_value == 15051  # lake's sidecar, inbound
    # The authorizer is called directly (never via a sidecar), with the deployment's files.
    authz = next(c for c in edge.static_resources.clusters if c.name == "nexus_authz")
    endpoint = authz.load_assignment.endpoints[0].lb_endpoints[0].endpoint
    assert (endpoint.address.socket_address.address, endpoint.address.socket_address.port_value) \
        == ("nexus.internal", 50054)  # fmt: skip
    upstream = tls_pb2.UpstreamTlsContext()
    assert authz.transport_socket.typed_config.Unpack(upstream)
    assert upstream.sni == "nexus.internal"
    context = upstream.common_tls_context
    assert context.tls_certificates[0].certificate_chain.filename == "/etc/envoy/nexus-client.crt"
    assert context.tls_certificates[0].private_key.filename == "/etc/envoy/nexus-client.key"
    assert context.validation_context.trusted_ca.filename == "/etc/envoy/datapunk-ca.crt"
    assert context.validation_context.match_typed_subject_alt_names[0].matcher.exact == (
        "nexus.internal"
    )
    # Nexus's REST edge too: its sidecar routes gRPC only.
    rest = next(c for c in edge.static_resources.clusters if c.name == REST_CLUSTER)
    endpoint = rest.load_assignment.endpoints[0].lb_endpoints[0].endpoint
    assert (endpoint.address.socket_address.address, endpoint.address.socket_address.port_value) \
        == ("nexus.internal", 8080)  # fmt: skip


# --- the strictness itself ------------------------------------------------------------------


def _edge_filter(config: Json, name: str) -> Json:
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    flt = next(f for f in hcm["typed_config"]["http_filters"] if f["name"] == name)
    typed_config: Json = flt["typed_config"]
    return typed_config


def _mutations() -> Iterator[tuple[str, Callable[[Json], None], str]]:
    def transcoder_bogus_field(c: Json) -> None:
        _edge_filter(c, "envoy.filters.http.grpc_json_transcoder")["print_option"] = {}

    def ext_authz_wrong_type(c: Json) -> None:
        _edge_filter(c, "envoy.filters.http.ext_authz")["failure_mode_allow"] = "no"

    def unknown_type_url(c: Json) -> None:
        _edge_filter(c, "envoy.filters.http.router")["@type"] = (
            "type.googleapis.com/envoy.extensions.filters.http.router.v3.Routr"
        )

    def nested_any_bogus_field(c: Json) -> None:
        vhost = _edge_route_config(c)["virtual_hosts"][0]
        vhost["typed_per_filter_config"]["envoy.filters.http.cors"]["allow_origin"] = "*"

    def cluster_bogus_field(c: Json) -> None:
        c["static_resources"]["clusters"][0]["circuit_breaker"] = {}

    def port_as_text(c: Json) -> None:
        c["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0][
            "endpoint"
        ]["address"]["socket_address"]["port_value"] = "fifty"

    def ratelimit_empty_domain(c: Json) -> None:  # PGV: domain min_len 1, inside an Any
        _edge_filter(c, "envoy.filters.http.ratelimit")["domain"] = ""

    def zero_connect_timeout(c: Json) -> None:  # PGV: connect_timeout gt 0
        c["static_resources"]["clusters"][0]["connect_timeout"] = "0s"

    def route_without_action(c: Json) -> None:  # PGV: Route.action oneof required
        del _edge_route_config(c)["virtual_hosts"][0]["routes"][0]["route"]

    def health_check_without_checker(c: Json) -> None:  # PGV: health_checker oneof required
        del c["static_resources"]["clusters"][0]["health_checks"][0]["grpc_health_check"]

    def ratelimit_without_service(c: Json) -> None:
        del _edge_filter(c, "envoy.filters.http.ratelimit")["rate_limit_service"]

    def deprecated_field(c: Json) -> None:  # Cluster.http2_protocol_options is deprecated
        c["static_resources"]["clusters"][0]["http2_protocol_options"] = {}

    def empty_rate_limit_key(c: Json) -> None:  # PGV: RequestHeaders.descriptor_key min_len 1
        route = _edge_route_config(c)["virtual_hosts"][0]["routes"][0]
        route["route"]["rate_limits"][0]["actions"][0]["request_headers"]["descriptor_key"] = ""

    yield "transcoder_bogus_field", transcoder_bogus_field, 'no field named "print_option"'
    yield "ext_authz_wrong_type", ext_authz_wrong_type, "failure_mode_allow"
    yield "unknown_type_url", unknown_type_url, "Routr"
    yield "nested_any_bogus_field", nested_any_bogus_field, 'no field named "allow_origin"'
    yield "cluster_bogus_field", cluster_bogus_field, 'no field named "circuit_breaker"'
    yield "port_as_text", port_as_text, "port_value"
    yield "ratelimit_empty_domain", ratelimit_empty_domain, r"\.domain: shorter than 1"
    yield "zero_connect_timeout", zero_connect_timeout, "connect_timeout: out of range"
    yield "route_without_action", route_without_action, "one of 'action' is required"
    yield "health_check_without_checker", health_check_without_checker, "'health_checker'"
    yield "ratelimit_without_service", ratelimit_without_service, "rate_limit_service: required"
    yield "deprecated_field", deprecated_field, "http2_protocol_options: deprecated"
    yield "empty_rate_limit_key", empty_rate_limit_key, "descriptor_key: shorter than 1"


def _edge_route_config(config: Json) -> Json:
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    route_config: Json = hcm["typed_config"]["route_config"]
    return route_config


@pytest.mark.parametrize(
    ("mutate", "reason"), [m[1:] for m in _mutations()], ids=[m[0] for m in _mutations()]
)
def test_a_broken_copy_is_rejected(mutate: Callable[[Json], None], reason: str) -> None:
    """Strictness itself: each mutation of a valid file is refused, for the right reason."""
    config = committed("edge.yaml")
    parse_strictly(copy.deepcopy(config))  # the original is fine ...
    mutate(config)
    with pytest.raises((json_format.ParseError, ValueError), match=reason):
        parse_strictly(config)  # ... the mutated copy is not


# --- content --------------------------------------------------------------------------------


def descriptor_services() -> dict[str, str]:
    """Full name -> owner of every service of a datapunk.<owner>.v<N> package."""
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    found = {}
    for file in files.file:
        parts = file.package.split(".")
        if len(parts) == 3 and parts[0] == "datapunk" and parts[2].startswith("v"):
            for svc in file.service:
                found[f"{file.package}.{svc.name}"] = parts[1]
    return found


def hcm_of(listener: Json) -> Json:
    typed_config: Json = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return typed_config


def routes_of(listener: Json) -> list[Json]:
    routes: list[Json] = []
    for vhost in hcm_of(listener)["route_config"]["virtual_hosts"]:
        routes.extend(vhost["routes"])
    return routes


def prefix_routes(listener: Json) -> dict[str, str]:
    """Service full name -> cluster, from the routes matching ``/<service>/``."""
    table = {}
    for route in routes_of(listener):
        prefix = route["match"].get("prefix", "")
        if prefix.count("/") == 2 and prefix.endswith("/"):
            table[prefix.strip("/")] = route["route"]["cluster"]
    return table


def test_the_descriptor_set_has_the_three_owners() -> None:
    assert set(descriptor_services().values()) == set(OWNERS)


def test_edge_transcodes_and_routes_every_service() -> None:
    config = committed("edge.yaml")
    services = descriptor_services()
    transcoder = _edge_filter(config, "envoy.filters.http.grpc_json_transcoder")
    assert sorted(transcoder["services"]) == sorted(services)
    assert transcoder["proto_descriptor"] == "gen/descriptors/datapunk.binpb"
    assert transcoder["convert_grpc_status"] is True
    assert transcoder["auto_mapping"] is False
    assert transcoder["match_incoming_request_route"] is False
    listener = config["static_resources"]["listeners"][0]
    assert prefix_routes(listener) == services  # service -> owner == its cluster
    last = routes_of(listener)[-1]
    assert last["match"] == {"prefix": "/"}
    assert last["direct_response"]["status"] == 404
    json.loads(last["direct_response"]["body"]["inline_string"])  # a JSON body


def test_streaming_methods_have_no_overall_timeout_and_no_retries() -> None:
    listener = committed("edge.yaml")["static_resources"]["listeners"][0]
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    streaming = {
        f"/{f.package}.{s.name}/{m.name}"
        for f in files.file
        if f.package.startswith("datapunk.")
        for s in f.service
        for m in s.method
        if m.client_streaming or m.server_streaming
    }
    exact = {
        r["match"]["path"]: r["route"]
        for r in routes_of(listener)
        if "path" in r["match"] and "grpc" in r["match"]
    }
    assert set(exact) == streaming
    for route in exact.values():
        assert route["timeout"] == "0s"
        assert "retry_policy" not in route


def test_edge_filter_chain_order_and_nexus_callouts() -> None:
    config = committed("edge.yaml")
    hcm = hcm_of(config["static_resources"]["listeners"][0])
    names = [f["name"].removeprefix("envoy.filters.http.") for f in hcm["http_filters"]]
    # The transcoder precedes ext_authz and ratelimit: they must see the RPC's route (see
    # envoy/README.md); the router is last.
    assert names == ["health_check", "cors", "grpc_json_transcoder", "ext_authz", "ratelimit",
                     "router"]  # fmt: skip
    authz = _edge_filter(config, "envoy.filters.http.ext_authz")
    assert authz["grpc_service"]["envoy_grpc"]["cluster_name"] == "nexus_authz"
    assert authz["failure_mode_allow"] is False
    assert authz["transport_api_version"] == "V3"
    assert authz["grpc_service"]["timeout"] == "0.5s"
    limit = _edge_filter(config, "envoy.filters.http.ratelimit")
    assert limit["domain"] == "datapunk"
    assert limit["rate_limit_service"]["grpc_service"]["envoy_grpc"]["cluster_name"] == (
        "nexus_authz"
    )
    assert limit["rate_limit_service"]["transport_api_version"] == "V3"
    for route in routes_of(config["static_resources"]["listeners"][0])[:-1]:
        if "grpc" in route["match"]:
            assert route["route"]["rate_limits"], route["name"]
        else:  # the REST edge's plain paths: its own gate limits them (test below)
            assert "rate_limits" not in route["route"], route["name"]


@pytest.mark.parametrize("name", FILES)
def test_every_cluster_is_guarded(name: str) -> None:
    bootstrap = parse_strictly(committed(name))
    names = {c.name for c in bootstrap.static_resources.clusters}
    for listener in bootstrap.static_resources.listeners:  # every route's cluster exists
        for flt in listener.filter_chains[0].filters:
            hcm = http_connection_manager_pb2.HttpConnectionManager()
            assert flt.typed_config.Unpack(hcm)
            for vhost in hcm.route_config.virtual_hosts:
                for route in vhost.routes:
                    if route.HasField("route"):
                        assert route.route.cluster in names
    for cluster in bootstrap.static_resources.clusters:
        checker = "http_health_check" if cluster.name == REST_CLUSTER else "grpc_health_check"
        assert cluster.health_checks[0].HasField(checker), cluster.name
        assert cluster.circuit_breakers.thresholds[0].HasField("retry_budget"), cluster.name
        assert cluster.outlier_detection.consecutive_gateway_failure.value > 0, cluster.name
        assert cluster.outlier_detection.enforcing_consecutive_gateway_failure.value == 100
        assert cluster.outlier_detection.HasField("base_ejection_time"), cluster.name
        options = cluster.typed_extension_protocol_options[
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ]
        protocol = http_protocol_options_pb2.HttpProtocolOptions()
        assert options.Unpack(protocol)
        # gRPC everywhere; HTTP/1.1 to the REST edge (aiohttp).
        http = "http_protocol_options" if cluster.name == REST_CLUSTER else "http2_protocol_options"
        assert protocol.explicit_http_config.HasField(http), cluster.name


def test_health_checks_ask_for_each_owners_status_service() -> None:
    config = committed("edge.yaml")
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == REST_CLUSTER:  # a document the REST edge serves from memory
            path = cluster["health_checks"][0]["http_health_check"]["path"]
            assert path == "/.well-known/oauth-authorization-server"
            assert path in PLAIN_PATHS
            continue
        service_name = cluster["health_checks"][0]["grpc_health_check"]["service_name"]
        if cluster["name"] == "nexus_authz":  # its own listener sets this one
            assert service_name == "envoy.service.auth.v3.Authorization"
        else:
            assert service_name == f"datapunk.{cluster['name']}.v1.StatusService"


def test_envoy_calls_nexus_authorizer_over_mutual_tls() -> None:
    bootstrap = parse_strictly(committed("edge.yaml"))
    authz = next(c for c in bootstrap.static_resources.clusters if c.name == "nexus_authz")
    address = authz.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    # The listener nexus.envoy_services configures, at its default port.
    settings = EnvoyServicesSettings()
    assert (address.socket_address.address, address.socket_address.port_value) == (
        settings.host,
        settings.port,
    )
    assert authz.transport_socket.name == "envoy.transport_sockets.tls"
    upstream = tls_pb2.UpstreamTlsContext()
    assert authz.transport_socket.typed_config.Unpack(upstream)
    context = upstream.common_tls_context
    assert upstream.sni == "localhost"
    assert list(context.alpn_protocols) == ["h2"]
    # Envoy presents its certificate and trusts only the CA's, for Nexus's name.
    assert context.tls_certificates[0].certificate_chain.filename == (
        ".datapunk/envoy-tls/envoy.crt"
    )
    assert context.tls_certificates[0].private_key.filename == ".datapunk/envoy-tls/envoy.key"
    assert context.validation_context.trusted_ca.filename == ".datapunk/envoy-tls/ca.crt"
    matcher = context.validation_context.match_typed_subject_alt_names[0]
    assert (matcher.san_type, matcher.matcher.exact) == (matcher.DNS, "localhost")
    # Only the edge calls it; the other clusters stay plaintext inside the machine.
    with_tls = [
        c.name for c in bootstrap.static_resources.clusters if c.HasField("transport_socket")
    ]
    assert with_tls == ["nexus_authz"]


def route_for(listener: Json, path: str, *, grpc: bool = False) -> Json:
    """The route Envoy picks for a request (before transcoding): the first whose ``path``
    (exact, query string removed) or ``prefix`` matches and whose ``grpc`` matcher, if
    any, holds (a gRPC content type)."""
    bare = path.split("?", 1)[0]
    for route in routes_of(listener):
        match = route["match"]
        if "grpc" in match and not grpc:
            continue
        if match.get("path") == bare or bare.startswith(match.get("prefix", "\0")):
            return route
    raise AssertionError(f"no route for {path}")


def test_the_rest_edges_plain_paths_reach_it_without_ext_authz() -> None:
    config = committed("edge.yaml")
    listener = config["static_resources"]["listeners"][0]
    routes = routes_of(listener)
    plain = [r for r in routes if r.get("route", {}).get("cluster") == REST_CLUSTER]
    # Exactly those paths, each an exact match, before the not-found route.
    assert {r["match"]["path"] for r in plain} == set(PLAIN_PATHS)
    assert all(set(r["match"]) == {"path"} for r in plain)
    assert routes[-1]["name"] == "not-found"
    assert routes[-1 - len(plain) : -1] == plain  # just before it
    for path in PLAIN_PATHS:
        route = route_for(listener, path)
        assert route["route"]["cluster"] == REST_CLUSTER, path
        assert route_for(listener, path + "?x=1") is route
        # Their clients authenticate in the request (or they are public documents).
        disabled = route["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
        assert disabled["disabled"] is True
    # Nothing broader: neighbours fall to the not-found route (with no Check either).
    for path in (
        "/oauth/",
        "/oauth/authorize",
        "/oauth/token/x",
        "/oauth/tokens",
        "/.well-known/openid-configuration",
        "/.well-known/jwks.json/x",
        "/openapi.yaml",
        "/docs/x",
        "/doc",
    ):
        assert route_for(listener, path)["name"] == "not-found", path


def test_oauth_endpoints_are_rate_limited_once_by_the_rest_edge() -> None:
    """Envoy sends the OAuth endpoints on without a rate-limit check: the REST edge behind it
    gates them (as their gRPC twins, per client address; tests/integration/
    test_oauth_rate_limits.py), and Envoy's ShouldRateLimit counts in the same buckets, so
    a check here too would halve their limits. Envoy never answers them 429 itself, so it
    needs no JSON reply of its own for that."""
    listener = committed("edge.yaml")["static_resources"]["listeners"][0]
    for path in PLAIN_PATHS:
        route = route_for(listener, path)
        assert "rate_limits" not in route["route"], path
        assert "rate_limits" not in route, path
    assert "local_reply_config" not in hcm_of(listener)


def test_a_token_request_is_retried_only_when_it_never_reached_nexus() -> None:
    """Issuing a token is not idempotent (a replayed refresh-token grant would present a
    rotated refresh token and revoke its family): only a connect failure is retried. The
    rest may be sent twice and are retried like RPCs."""
    listener = committed("edge.yaml")["static_resources"]["listeners"][0]
    token = route_for(listener, "/oauth/token")["route"]["retry_policy"]
    assert token["retry_on"] == "connect-failure"
    for path in set(PLAIN_PATHS) - {"/oauth/token"}:
        route = route_for(listener, path)["route"]
        assert route["timeout"] == "30s"
        retry_on = set(route["retry_policy"]["retry_on"].split(","))
        assert retry_on == {"connect-failure", "reset", "gateway-error"}, path
        assert route["retry_policy"]["retry_host_predicate"], path


def test_the_rest_edge_cluster_is_the_configured_rest_port(tmp_path: Path) -> None:
    bootstrap = parse_strictly(committed("edge.yaml"))
    rest = next(c for c in bootstrap.static_resources.clusters if c.name == REST_CLUSTER)
    address = rest.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    defaults = RestEdgeSettings()
    assert (address.socket_address.address, address.socket_address.port_value) == (
        defaults.host,
        defaults.port,
    )
    assert not rest.HasField("transport_socket")  # plaintext inside the machine
    # A port set in datapunk.toml's [nexus.rest] moves it, as the other clusters move.
    config = tmp_path / "datapunk.toml"
    config.write_text(
        (ROOT / "datapunk.toml").read_text() + '\n[nexus.rest]\nhost = "10.1.2.3"\nport = 8181\n'
    )
    edge = load(generate(tmp_path / "out", "--config", str(config))["edge.yaml"])
    rest_json = next(c for c in edge["static_resources"]["clusters"] if c["name"] == REST_CLUSTER)
    endpoint = rest_json["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {"address": "10.1.2.3", "port_value": 8181}


@pytest.mark.parametrize("owner", OWNERS)
def test_sidecar_routes_inbound_to_its_service_and_outbound_to_the_others(owner: str) -> None:
    config = committed(f"sidecar-{owner}.yaml")
    listeners = {lst["name"]: lst for lst in config["static_resources"]["listeners"]}
    assert set(listeners) == {"inbound", "outbound"}
    services = descriptor_services()
    own = {name: f"local_{owner}" for name, o in services.items() if o == owner}
    inbound = prefix_routes(listeners["inbound"])
    assert inbound.pop("grpc.health.v1.Health") == f"local_{owner}"
    # Envoy's Check and ShouldRateLimit go straight to Nexus's mutual-TLS listener.
    assert inbound == own
    others = {name: o for name, o in services.items() if o != owner}
    assert prefix_routes(listeners["outbound"]) == others
    inbound_filters = [f["name"] for f in hcm_of(listeners["inbound"])["http_filters"]]
    outbound_filters = [f["name"] for f in hcm_of(listeners["outbound"])["http_filters"]]
    # Each service checks its callers' tokens itself; no ext_authz inside the mesh.
    assert inbound_filters == ["envoy.filters.http.router"]
    assert outbound_filters == ["envoy.filters.http.router"]
    clusters = {c["name"] for c in config["static_resources"]["clusters"]}
    assert clusters == {f"local_{owner}", *(o for o in OWNERS if o != owner)}


@pytest.mark.parametrize("name", FILES)
def test_per_route_filter_configs_name_filters_of_their_chain(name: str) -> None:
    for listener in committed(name)["static_resources"]["listeners"]:
        hcm = hcm_of(listener)
        chain = {f["name"] for f in hcm["http_filters"]}
        for vhost in hcm["route_config"]["virtual_hosts"]:
            for scope in [vhost, *vhost["routes"]]:
                assert set(scope.get("typed_per_filter_config", {})) <= chain, scope["name"]


def test_a_new_service_in_the_descriptor_set_is_routed_and_transcoded(tmp_path: Path) -> None:
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    stream_file = next(f for f in files.file if f.package == "datapunk.stream.v1")
    added = stream_file.service.add()
    added.CopyFrom(stream_file.service[0])
    added.name = "ReplayService"
    modified = tmp_path / "modified.binpb"
    modified.write_bytes(files.SerializeToString())
    out = generate(tmp_path / "out", "--descriptor-set", str(modified))
    edge = load(out["edge.yaml"])
    transcoder = _edge_filter(edge, "envoy.filters.http.grpc_json_transcoder")
    assert "datapunk.stream.v1.ReplayService" in transcoder["services"]
    routes = prefix_routes(edge["static_resources"]["listeners"][0])
    assert routes["datapunk.stream.v1.ReplayService"] == "stream"
    lake = load(out["sidecar-lake.yaml"])
    outbound = next(x for x in lake["static_resources"]["listeners"] if x["name"] == "outbound")
    assert prefix_routes(outbound)["datapunk.stream.v1.ReplayService"] == "stream"


def test_a_service_of_an_unknown_owner_is_refused(tmp_path: Path) -> None:
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    stray = files.file.add(name="datapunk/billing/v1/x.proto", package="datapunk.billing.v1")
    stray.service.add(name="InvoiceService")
    modified = tmp_path / "modified.binpb"
    modified.write_bytes(files.SerializeToString())
    run = subprocess.run(
        [sys.executable, str(GENERATOR), "--out-dir", str(tmp_path), "--descriptor-set",
         str(modified)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )  # fmt: skip
    assert run.returncode != 0
    assert "billing" in run.stderr
    assert not list(tmp_path.glob("*.yaml"))
