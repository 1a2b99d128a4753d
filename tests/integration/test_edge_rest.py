"""The REST edge in a real Nexus process in front of a real Lake process, against the
stack's engines: every kind of call through curl and aiohttp, bad input as JSON
google.rpc.Status, a backend that is not running, and Schemathesis against the served
OpenAPI document (given the test Nexus's bootstrap administrator key)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from grpc_health.v1 import health_pb2

from tests.auth_support import issuer
from tests.support import BIN, ROOT, free_port, run_service, wait_until


def _stack_env() -> dict[str, str]:
    """The engines this test session uses (run_service starts from a clean environment)."""
    return {
        k: v
        for k, v in os.environ.items()
        if k.startswith(("DATAPUNK_ENGINES__", "DATAPUNK_STACK__"))
    }


@pytest.fixture(scope="module")
def edge_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("edge")
    with run_service("lake", tmp, _stack_env()) as lake:
        rest_port = free_port()
        env = {
            **_stack_env(),
            "DATAPUNK_LAKE__PORT": lake.address.rsplit(":", 1)[1],
            # No Stream runs here: its routes must answer 503 with retry information.
            "DATAPUNK_STREAM__PORT": str(free_port()),
            "DATAPUNK_NEXUS__REST__PORT": str(rest_port),
            "DATAPUNK_NEXUS__RATE_LIMITS__BACKEND": "memory",
            "DATAPUNK_NEXUS__CACHE__BACKEND": "memory",
        }
        with run_service("nexus", tmp, env) as nexus:
            url = f"http://127.0.0.1:{rest_port}"
            wait_until(lambda: _curl(url + "/openapi.json")[0] == 200, timeout=30)
            # Its signing keys and bootstrap administrator are ready once it is SERVING.
            serving = health_pb2.HealthCheckResponse.SERVING
            wait_until(lambda: nexus.health() == serving, timeout=30)
            yield url
            assert "rest edge listening" in nexus.log()


def _curl(url: str, *args: str) -> tuple[int, dict[str, str], bytes]:
    """curl, a client we did not write; returns status, headers and body."""
    done = subprocess.run(
        ["curl", "-sS", "-i", "--max-time", "30", *args, url],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        return 0, {}, done.stderr
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 100"):
        head, _, body = body.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def _admin_header() -> str:
    return f"x-api-key: {issuer().admin_key}"


def _reason(status: Any) -> str:
    info = next(d for d in status["details"] if d["@type"].endswith("google.rpc.ErrorInfo"))
    reason: str = info["reason"]
    return reason


def test_lake_status_over_rest_with_curl(edge_url: str) -> None:
    status, headers, body = _curl(
        edge_url + "/v1/lake/status?refresh=true&engines=postgres&probeTimeout=2s",
        "-H",
        "x-request-id: curl-1",
    )
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    assert headers["x-request-id"] == "curl-1"
    report = json.loads(body)["status"]
    assert report["service"] == "lake"
    assert [(e["name"], e["reachable"]) for e in report["engines"]] == [("postgres", True)]


def test_contract_violations_are_400_with_field_violations(edge_url: str) -> None:
    status, _, body = _curl(edge_url + "/v1/lake/status?engines=BAD%20NAME")
    assert status == 400
    error = json.loads(body)
    assert error["code"] == 3
    violations = next(d for d in error["details"] if d["@type"].endswith("BadRequest"))
    assert violations["fieldViolations"][0]["field"] == "engines[0]"


def test_a_backend_that_is_not_running_is_503_json(edge_url: str) -> None:
    status, headers, body = _curl(edge_url + "/v1/stream/status")
    assert status == 503
    assert headers["retry-after"] == "1"
    error = json.loads(body)
    assert (error["code"], _reason(error)) == (14, "BACKEND_UNAVAILABLE")


def test_nexus_routes_reach_nexus_itself(edge_url: str) -> None:
    status, _, body = _curl(edge_url + "/v1/nexus/status")
    assert status == 200, body
    assert json.loads(body)["status"]["service"] == "nexus"


async def test_vectors_round_trip_over_rest(edge_url: str) -> None:
    name = f"edge_{uuid.uuid4().hex[:8]}"
    admin = {"x-api-key": issuer().admin_key}
    async with aiohttp.ClientSession(base_url=edge_url, headers=admin) as http:

        async def send(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            data = body if isinstance(body, str) or body is None else json.dumps(body)
            async with http.request(method, path, data=data) as response:
                raw = await response.read()
                assert response.content_type in ("application/json", "application/x-ndjson")
                if response.content_type == "application/x-ndjson":
                    return response.status, [json.loads(x) for x in raw.splitlines()]
                return response.status, json.loads(raw)

        status, created = await send(
            "POST",
            f"/v1/lake/collections?collectionId={name}",
            {"vectorSize": 3, "distance": "DISTANCE_COSINE"},
        )
        assert status == 200, created
        assert created["collection"]["name"] == f"collections/{name}"
        try:
            status, got = await send("GET", f"/v1/lake/collections/{name}")
            assert (status, got["collection"]["vectorSize"]) == (200, 3)
            status, upserted = await send(
                "POST",
                f"/v1/lake/collections/{name}/points:upsert",
                {"points": [{"id": {"num": "1"}, "vector": [0.1, 0.2, 0.3]}]},
            )
            assert status == 200, upserted
            # The bidi ImportPoints stream takes NDJSON and acknowledges each batch.
            lines = "\n".join(
                json.dumps(
                    {
                        "sequence": str(i),
                        "points": [{"id": {"num": str(10 + i)}, "vector": [1.0, 0.5, float(i)]}],
                    }
                )
                for i in range(3)
            )
            status, acks = await send("POST", f"/v1/lake/collections/{name}/points:import", lines)
            assert status == 200, acks
            assert [a["sequence"] for a in acks] == ["0", "1", "2"]
            status, counted = await send("POST", f"/v1/lake/collections/{name}/points:count", {})
            assert (status, counted["count"]) == (200, "4")
            status, found = await send(
                "POST",
                f"/v1/lake/collections/{name}/points:search",
                {"query": {"vector": [0.1, 0.2, 0.3], "limit": 1}},
            )
            assert status == 200, found
            assert found["points"][0]["id"] == {"num": "1"}
            # Wrong vector size: the Lake's BadRequest comes through.
            status, error = await send(
                "POST",
                f"/v1/lake/collections/{name}/points:upsert",
                {"points": [{"id": {"num": "2"}, "vector": [1]}]},
            )
            assert status == 400
            violation = next(d for d in error["details"] if d["@type"].endswith("BadRequest"))
            assert violation["fieldViolations"][0]["field"] == "points[0].vector"
        finally:
            status, _ = await send("DELETE", f"/v1/lake/collections/{name}")
            assert status == 200
        status, error = await send("GET", f"/v1/lake/collections/{name}")
        assert (status, error["code"]) == (404, 5)


def test_schemathesis_finds_no_server_errors_and_no_schema_violations(
    edge_url: str, tmp_path: Path
) -> None:
    # Reads only: the engines are shared with the rest of the suite. 503/504 are the
    # documented answers of a backend that is down (Stream does not run here) or slow.
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        '[checks]\nnot_a_server_error.expected-statuses = ["2XX", "3XX", "4XX", "503", "504"]\n'
    )
    done = subprocess.run(
        [
            str(BIN / "schemathesis"),
            "--config-file",
            str(config),
            "run",
            edge_url + "/openapi.json",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance,response_headers_conformance,ignored_auth",
            # The bootstrap administrator: every read is allowed, so the operations are
            # exercised past the guard; ignored_auth also calls each protected one
            # without (and with a wrong) credential and expects a refusal.
            "--header",
            _admin_header(),
            "--phases",
            "examples,fuzzing",
            "--max-examples",
            "8",
            "--seed",
            "4",
            "--request-timeout",
            "20",
            # Writes are left out, and so is whatever changes credentials or the policy:
            # Schemathesis fills ids from earlier answers (ListApiKeys names the
            # administrator's own key), so it would revoke or rotate the key it calls with.
            "--exclude-operation-id-regex",
            "(Create|Delete|Update|Upsert|Write|Load|Import|Set|Optimize|Invalidate"
            "|Revoke|Rotate|Grant|Put)",
            "--continue-on-failure",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "passed" in done.stdout
    # The administrator's key still works: the run was made with it throughout, and
    # Schemathesis saw no operation answer only 401/403.
    status, _, body = _curl(edge_url + "/v1/lake/collections", "-H", _admin_header())
    assert status == 200, body
    assert "Authentication failed" not in done.stdout
    print(done.stdout[-1200:])  # the run's summary, for -s


def test_openapi_and_docs_are_served(edge_url: str) -> None:
    status, headers, body = _curl(edge_url + "/openapi.json")
    assert status == 200
    document = json.loads(body)
    paths = document["paths"]
    assert "/v1/lake/collections/{collectionsId}" in paths
    # The credentials the edge accepts, required everywhere but on the public routes.
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {**schemes["apiKey"], "in": "header", "name": "x-api-key"}
    assert document["security"] == [{"bearerAuth": []}, {"apiKey": []}]
    protected = paths["/v1/lake/collections/{collectionsId}"]["get"]
    assert "security" not in protected
    assert {"401", "403"} <= set(protected["responses"])
    public = paths["/v1/lake/status"]["get"]
    assert public["security"] == []
    assert "401" in public["responses"]
    assert "403" not in public["responses"]
    assert paths["/v1/nexus/auth/tokens:issue"]["post"]["security"] == []
    unauthorized = document["components"]["responses"]["E401"]
    assert "WWW-Authenticate" in unauthorized["headers"]
    status, headers, body = _curl(edge_url + "/docs")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in headers["content-security-policy"]
    assert b"VectorService" in body
    assert ROOT.exists()
