"""OIDC federation against a real, certified OpenID provider (the npm package
oidc-provider, tests/oidc/provider.mjs), started on a free port: its client-credentials
JWT access tokens, fetched over HTTP, are verified with keys found by discovery; the
JWKS cache follows a key rotation; when the provider is down, cached keys keep working
until their lifetime plus the allowed staleness, and an issuer never reached fails
closed with UNAVAILABLE."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from datapunk_shared.auth.tokens import StaticKeySource, TokenVerifier
from datapunk_shared.auth.verifiers import build_verifier
from datapunk_shared.config import AuthSettings, OidcSettings
from datapunk_shared.errors import Unauthenticated, Unavailable
from joserfc.jwk import ECKey, Key, RSAKey

from tests.support import ROOT, free_port
from tests.token_kit import b64json, claims, ec_key, header, jwks, sign

OIDC_DIR = ROOT / "tests" / "oidc"
RESOURCE = "urn:datapunk:api"
CLIENT_ID = "datapunk-federation-test"
CLIENT_SECRET = "a-client-secret-only-this-test-knows"
NEXUS = "https://nexus.test"


@pytest.fixture(scope="module")
def provider_installed() -> None:
    subprocess.run([str(OIDC_DIR / "install.sh")], check=True, timeout=300)


class OidcProvider:
    """One oidc-provider process on a fixed port, restartable with other keys."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.issuer = f"http://127.0.0.1:{port}"
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, keys: list[Key], alg: str) -> None:
        self.starts += 1
        jwks_file = self.workdir / f"jwks-{self.starts}.json"
        jwks_file.write_text(json.dumps({"keys": [key.as_dict(private=True) for key in keys]}))
        env = {
            **os.environ,
            "OIDC_PORT": str(self.port),
            "OIDC_JWKS_FILE": str(jwks_file),
            "OIDC_ALG": alg,
            "OIDC_CLIENT_ID": CLIENT_ID,
            "OIDC_CLIENT_SECRET": CLIENT_SECRET,
            "OIDC_RESOURCE": RESOURCE,
        }
        log = (self.workdir / f"provider-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            ["node", "provider.mjs"], cwd=OIDC_DIR, env=env, stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("oidc-provider exited: " + self.log())
            try:
                httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise TimeoutError("oidc-provider did not answer: " + self.log())

    def log(self) -> str:
        return (self.workdir / f"provider-{self.starts}.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def access_token(self) -> str:
        """A client-credentials access token from the token endpoint, over HTTP."""
        response = httpx.post(
            f"{self.issuer}/token",
            data={"grant_type": "client_credentials", "scope": "lake.read", "resource": RESOURCE},
            auth=(CLIENT_ID, CLIENT_SECRET),
            timeout=10,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["token_type"] == "Bearer"
        token: str = body["access_token"]
        return token


@contextmanager
def running_provider(tmp_path: Path) -> Iterator[OidcProvider]:
    provider = OidcProvider(free_port(), tmp_path)
    try:
        yield provider
    finally:
        provider.stop()


def oidc_settings(*issuers: str, audience: str = RESOURCE) -> OidcSettings:
    return OidcSettings.model_validate(
        {
            "providers": [
                {
                    "issuer": issuer,
                    "audiences": [audience],
                    "algorithms": ["ES256", "RS256"],
                    "tenant_claim": "org",
                    "roles_claim": "realm_access.roles",
                    "role_map": {"data-engineer": "writer"},
                }
                for issuer in issuers
            ]
        }
    )


def edge_verifier(*issuers: str, audience: str = RESOURCE, **jwks_cache: Any) -> TokenVerifier:
    auth = AuthSettings.model_validate(
        {"issuer": NEXUS, "jwks": {"refetch_interval": 0.2, **jwks_cache}}
    )
    return build_verifier(
        auth,
        service="nexus",
        oidc=oidc_settings(*issuers, audience=audience),
        nexus_keys=StaticKeySource({NEXUS: jwks(ec_key())}),
    )


def es256_key(kid: str) -> ECKey:
    return ECKey.generate_key("P-256", {"kid": kid, "use": "sig", "alg": "ES256"})


async def refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        await verifier.verify(token)
    return caught.value.reason


@pytest.mark.usefixtures("provider_installed")
async def test_provider_tokens_verify_and_the_cache_follows_rotation_and_outages(
    tmp_path: Path,
) -> None:
    with running_provider(tmp_path) as provider:
        provider.start([es256_key("a1")], "ES256")
        # The other trusted issuer is never up: its port is free and nobody listens.
        never_seen = f"http://127.0.0.1:{free_port()}"
        verifier = edge_verifier(provider.issuer, never_seen, min_ttl=1, default_ttl=2, max_stale=4)
        try:
            first = provider.access_token()
            assert json.loads(_segment(first, 0))["typ"] == "at+jwt"
            identity = await verifier.verify(first)
            assert identity.kind == "user"
            assert identity.subject == f"user:{provider.issuer}|{CLIENT_ID}"
            assert identity.tenant == "acme"
            assert identity.roles == {"writer"}  # "admin" at the provider maps to nothing
            assert identity.scopes == {"lake.read"}
            assert identity.issuer == provider.issuer

            # Tampering with a real token breaks its signature.
            head, _, signature = first.split(".")
            edited = json.loads(_segment(first, 1)) | {"org": "globex"}
            assert await refused(verifier, f"{head}.{b64json(edited)}.{signature}") == (
                "BAD_SIGNATURE"
            )

            # Rotation: the provider restarts with a new key set; its new tokens name a
            # kid the cache has not seen, which triggers one refetch.
            provider.stop()
            provider.start([es256_key("b1")], "ES256")
            second = provider.access_token()
            assert json.loads(_segment(second, 0))["kid"] == "b1"
            time.sleep(0.3)  # past the refetch interval
            assert (await verifier.verify(second)).tenant == "acme"
            rotated_at = time.monotonic()
            # The old key is gone from the provider's set: its unexpired tokens now fail.
            assert await refused(verifier, first) == "UNKNOWN_KEY"

            # Outage: cached keys keep working, past their 2 s lifetime too...
            provider.stop()
            assert (await verifier.verify(second)).tenant == "acme"
            _sleep_until(rotated_at + 3)
            assert (await verifier.verify(second)).tenant == "acme"
            # ...while an issuer whose keys were never fetched fails closed.
            stranger = sign(
                ec_key("k1"),
                claims(iss=never_seen, aud=RESOURCE, org="acme"),
                header(kid="k1"),
            )
            with pytest.raises(Unavailable) as caught:
                await verifier.verify(stranger)
            assert caught.value.reason == "ISSUER_UNAVAILABLE"
            assert caught.value.retry_after is not None
            assert caught.value.metadata == {"issuer": never_seen}
            # Past lifetime + max_stale (2 + 4 s) the cached keys stop working too.
            _sleep_until(rotated_at + 6.5)
            with pytest.raises(Unavailable) as caught:
                await verifier.verify(second)
            assert caught.value.reason == "ISSUER_UNAVAILABLE"

            # The provider comes back (same keys): verification resumes.
            provider.start([_reuse_key(provider, "b1")], "ES256")
            time.sleep(0.3)
            assert (await verifier.verify(second)).tenant == "acme"
        finally:
            await verifier.aclose()


@pytest.mark.usefixtures("provider_installed")
async def test_rs256_tokens_and_audience_checks(tmp_path: Path) -> None:
    with running_provider(tmp_path) as provider:
        rsa = RSAKey.generate_key(2048, {"kid": "r1", "use": "sig", "alg": "RS256"})
        provider.start([rsa], "RS256")
        token = provider.access_token()
        assert json.loads(_segment(token, 0))["alg"] == "RS256"
        verifier = edge_verifier(provider.issuer)
        other_audience = edge_verifier(provider.issuer, audience="urn:datapunk:other")
        try:
            assert (await verifier.verify(token)).subject == f"user:{provider.issuer}|{CLIENT_ID}"
            assert await refused(other_audience, token) == "WRONG_AUDIENCE"
        finally:
            await verifier.aclose()
            await other_audience.aclose()


def _reuse_key(provider: OidcProvider, kid: str) -> Key:
    """The private key of an earlier start, read back from the key set file written."""
    for start in range(provider.starts, 0, -1):
        document = json.loads((provider.workdir / f"jwks-{start}.json").read_text())
        for entry in document["keys"]:
            if entry["kid"] == kid:
                return ECKey.import_key(entry)
    raise KeyError(kid)


def _segment(token: str, index: int) -> bytes:
    part = token.split(".")[index]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))
