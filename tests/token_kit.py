"""Crafting access tokens for the verifier's tests: valid ones, and broken ones that a
JOSE library would refuse to produce (``alg: none``, HS256 keyed with a public key,
forbidden headers, duplicate members), built from raw base64url and JSON."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from typing import Any

from datapunk_shared.auth.claims import datapunk_claims
from datapunk_shared.auth.tokens import IssuerPolicy, StaticKeySource, TokenVerifier
from joserfc.jwk import ECKey, Key
from joserfc.jws import JWSRegistry

ISSUER = "https://nexus.test"
AUDIENCE = "datapunk:lake"
KID = "nexus-1"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def ec_key(kid: str = KID) -> ECKey:
    return ECKey.generate_key("P-256", {"kid": kid})


def jwks(*keys: Key) -> dict[str, Any]:
    return {"keys": [key.as_dict(private=False) for key in keys]}


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims of a Nexus client-credentials token; ``None`` removes a claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "client:ingest-bot",
        "aud": AUDIENCE,
        "client_id": "ingest-bot",
        "scope": "lake.read lake.write",
        "datapunk_tenant": "acme",
        "datapunk_roles": ["writer"],
        "jti": "6f1c2d3e-0000-4000-8000-000000000001",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def header(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"alg": "ES256", "typ": "at+jwt", "kid": KID}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(
    key: Key | None,
    claims_: Mapping[str, Any] | None = None,
    header_: Mapping[str, Any] | None = None,
    *,
    sign_as: str | None = None,
) -> str:
    """A compact JWS over any header, signed with ``key`` by ``sign_as`` (default: the
    header's ``alg``) without the library's checks, so a test can sign what a careful
    issuer never would."""
    head = dict(header_ if header_ is not None else header())
    body = dict(claims_ if claims_ is not None else claims())
    signing_input = f"{b64json(head)}.{b64json(body)}"
    alg = sign_as or head.get("alg", "ES256")
    if key is None or alg == "none":
        return signing_input + "."
    signature = JWSRegistry.algorithms[alg].sign(signing_input.encode(), key)
    return f"{signing_input}.{b64(signature)}"


def verifier(
    *keys: Key,
    algorithms: frozenset[str] = frozenset({"ES256"}),
    **kwargs: Any,
) -> TokenVerifier:
    policy = IssuerPolicy(
        issuer=ISSUER,
        audiences=frozenset({AUDIENCE}),
        algorithms=algorithms,
        mapper=datapunk_claims,
    )
    return TokenVerifier([policy], StaticKeySource({ISSUER: jwks(*keys)}), **kwargs)
