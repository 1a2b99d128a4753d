"""The plain-HTTP paths Envoy's edge sends to Nexus's REST edge (``envoy/edge.yaml``,
cluster ``nexus_rest``), asked of a real REST edge with the OAuth endpoints on a real
PostgreSQL (tests/integration/test_oauth_support.py): every one of them is served there
(a machine client gets, revokes and introspects a token through exactly these paths, and
reads the metadata, keys and documentation), the path Envoy health-checks answers 200, and
the neighbouring paths Envoy sends to its not-found route are unknown to the REST edge too.
Which route Envoy picks is read from the committed configuration with the matcher of
tests/unit/test_envoy_config.py (no Envoy binary can run here)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from datapunk_shared.config import Settings

from tests.integration.test_oauth_support import OAuthHarness, oauth_harness
from tests.unit.test_envoy_config import committed, route_for

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
async def oauth(settings: Settings) -> AsyncIterator[OAuthHarness]:
    async with oauth_harness(settings) as harness:
        yield harness


def edge_listener() -> dict[str, Any]:
    listener: dict[str, Any] = committed("edge.yaml")["static_resources"]["listeners"][0]
    return listener


def rest_paths() -> set[str]:
    """The paths of Envoy's routes to Nexus's REST edge."""
    hcm = edge_listener()["filter_chains"][0]["filters"][0]["typed_config"]
    return {
        route["match"]["path"]
        for route in hcm["route_config"]["virtual_hosts"][0]["routes"]
        if route.get("route", {}).get("cluster") == "nexus_rest"
    }


def basic(client_id: str, secret: str) -> dict[str, str]:
    pair = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {pair}", **FORM}


async def test_every_path_envoy_sends_to_the_rest_edge_is_served_there(
    oauth: OAuthHarness,
) -> None:
    paths = rest_paths()
    assert paths, "no route to nexus_rest in envoy/edge.yaml"
    client, secret = await oauth.client()
    served: set[str] = set()
    async with aiohttp.ClientSession() as http:
        # The machine client's flow, through the paths Envoy routes (and only those).
        assert "/oauth/token" in paths
        async with http.post(
            oauth.url + "/oauth/token",
            data="grant_type=client_credentials",
            headers=basic(client.client_id, secret),
        ) as answer:
            assert answer.status == 200, await answer.text()
            token = (await answer.json())["access_token"]
            served.add("/oauth/token")
        async with http.post(
            oauth.url + "/oauth/introspect",
            data=f"token={token}",
            headers=basic(client.client_id, secret),
        ) as answer:
            assert answer.status == 200
            assert (await answer.json())["active"] is True
            served.add("/oauth/introspect")
        async with http.post(
            oauth.url + "/oauth/revoke",
            data=f"token={token}",
            headers=basic(client.client_id, secret),
        ) as answer:
            assert answer.status == 200
            served.add("/oauth/revoke")
        for path in sorted(paths - served):  # the documents
            async with http.get(oauth.url + path) as answer:
                assert answer.status == 200, path
                body = await answer.read()
            if path == "/docs":
                assert answer.content_type == "text/html"
            else:
                assert answer.content_type == "application/json", path
                json.loads(body)
            served.add(path)
    assert served == paths


async def test_the_rest_edge_answers_envoys_health_check(oauth: OAuthHarness) -> None:
    cluster = next(
        c
        for c in committed("edge.yaml")["static_resources"]["clusters"]
        if c["name"] == "nexus_rest"
    )
    path = cluster["health_checks"][0]["http_health_check"]["path"]
    async with aiohttp.ClientSession() as http, http.get(oauth.url + path) as answer:
        assert answer.status == 200


@pytest.mark.parametrize(
    "path",
    [
        "/oauth/authorize",
        "/oauth/token/x",
        "/oauth/tokens",
        "/.well-known/openid-configuration",
        "/openapi.yaml",
        "/docs/x",
    ],
)
async def test_neighbouring_paths_are_unknown_on_both_sides(oauth: OAuthHarness, path: str) -> None:
    assert route_for(edge_listener(), path)["name"] == "not-found"
    async with aiohttp.ClientSession() as http:
        for method in ("GET", "POST"):
            async with http.request(method, oauth.url + path, headers=FORM) as answer:
                assert answer.status == 404, (method, path)
                assert answer.content_type == "application/json"
