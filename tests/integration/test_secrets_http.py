"""The HTTP secret provider against a real HTTP server started by the test, answering
the Vault/OpenBao KV version 2 read API (``GET /v1/<mount>/data/<path>`` with an
``X-Vault-Token``), including its failures: missing and deleted secrets, a refused
token, a sealed or failing store, timeouts, nothing listening, garbage answers, TLS."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from datapunk_shared.config import SecretsSettings
from datapunk_shared.errors import (
    DatapunkError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from datapunk_shared.retry import RetryPolicy
from datapunk_shared.secrets import HttpSecretProvider, build_secret_provider

from tests.support import free_port

TOKEN = "hvs.test-token-7d1e"
PIN = "pin-value-31337"
FAST = RetryPolicy(attempts=3, initial=0.01, maximum=0.05, deadline=5.0)


@dataclass
class KvStore:
    """A KV v2 mount named ``secret`` with a namespace, and switches for failures."""

    secrets: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    token: str = TOKEN
    namespace: str = ""
    fail_next: list[int] = field(default_factory=list)
    delay: float = 0.0
    raw_answer: bytes | None = None
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    async def read(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, dict(request.headers)))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_next:
            status = self.fail_next.pop(0)
            return web.json_response({"errors": ["Vault is sealed"]}, status=status)
        if request.headers.get("X-Vault-Token") != self.token:
            return web.json_response({"errors": ["permission denied"]}, status=403)
        if request.headers.get("X-Vault-Namespace", "") != self.namespace:
            return web.json_response({"errors": ["no handler for route"]}, status=404)
        if self.raw_answer is not None:
            return web.Response(body=self.raw_answer, content_type="text/html")
        path = request.match_info["path"]
        if path not in self.secrets:
            return web.json_response({"errors": []}, status=404)
        data = self.secrets[path]
        metadata = {"created_time": "2025-01-01T00:00:00Z", "version": 3, "destroyed": False}
        if data is None:  # a deleted latest version: Vault answers 404 with metadata
            metadata["deletion_time"] = "2025-01-02T00:00:00Z"
            return web.json_response({"data": {"data": None, "metadata": metadata}}, status=404)
        return web.json_response({"data": {"data": data, "metadata": metadata}})


@pytest.fixture
async def store() -> AsyncIterator[tuple[KvStore, str]]:
    kv = KvStore()
    app = web.Application()
    app.router.add_get("/v1/secret/data/{path:.+}", kv.read)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield kv, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAULT_TOKEN", TOKEN)


def _no_secrets_in(error: DatapunkError) -> None:
    text = error.message + repr(error.metadata)
    assert TOKEN not in text
    assert PIN not in text


async def test_reads_a_secret_with_the_token_from_the_environment(
    store: tuple[KvStore, str],
) -> None:
    kv, url = store
    kv.secrets["datapunk/nexus/signing-token-pin"] = {"value": PIN}
    async with HttpSecretProvider(url) as provider:
        assert await provider.get("nexus/signing-token-pin") == PIN.encode()
    path, headers = kv.requests[-1]
    assert path == "/v1/secret/data/datapunk/nexus/signing-token-pin"
    assert headers["X-Vault-Token"] == TOKEN


async def test_prefix_field_and_namespace_are_configurable(store: tuple[KvStore, str]) -> None:
    kv, url = store
    kv.namespace = "team-a"
    kv.secrets["pepper"] = {"pin": PIN, "value": "not this one"}
    settings = SecretsSettings(
        provider="http", url=url, path_prefix=None, field="pin", namespace="team-a"
    )
    provider = build_secret_provider(settings)
    assert isinstance(provider, HttpSecretProvider)
    try:
        assert await provider.get("pepper") == PIN.encode()
    finally:
        await provider.aclose()


async def test_the_token_file_is_reread_at_every_request(
    store: tuple[KvStore, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kv, url = store
    monkeypatch.delenv("VAULT_TOKEN")
    kv.secrets["datapunk/a"] = {"value": PIN}
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    async with HttpSecretProvider(url, token_file=token_file, retry=FAST) as provider:
        assert await provider.get("a") == PIN.encode()
        kv.token = "hvs.renewed-by-the-agent"
        token_file.write_text(kv.token)
        assert await provider.get("a") == PIN.encode()
        assert kv.requests[-1][1]["X-Vault-Token"] == "hvs.renewed-by-the-agent"


@pytest.mark.parametrize(
    ("stored", "where"),
    [
        ("absent", "the field"),
        ("deleted", "deleted"),
        ("no-field", "the field 'value'"),
        ("empty", "the field 'value'"),
    ],
)
async def test_missing_secrets_are_not_found_naming_the_secret(
    store: tuple[KvStore, str], stored: str, where: str
) -> None:
    kv, url = store
    kv.secrets.update(
        {
            "datapunk/deleted": None,
            "datapunk/no-field": {"other": PIN},
            "datapunk/empty": {"value": ""},
        }
    )
    async with HttpSecretProvider(url, retry=FAST) as provider:
        with pytest.raises(NotFound) as caught:
            await provider.get(stored)
    assert caught.value.reason == "SECRET_NOT_FOUND"
    assert caught.value.metadata == {"secret": stored, "provider": "http"}
    assert f"'{stored}'" in caught.value.message
    if stored != "absent":
        assert where in caught.value.message
    assert len(kv.requests) == 1  # not found is an answer, not retried
    _no_secrets_in(caught.value)


async def test_a_refused_token_is_permission_denied_without_retrying(
    store: tuple[KvStore, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    kv, url = store
    kv.secrets["datapunk/a"] = {"value": PIN}
    monkeypatch.setenv("VAULT_TOKEN", "hvs.wrong-token")
    async with HttpSecretProvider(url, retry=FAST) as provider:
        with pytest.raises(PermissionDenied) as caught:
            await provider.get("a")
    assert caught.value.reason == "SECRET_STORE_DENIED"
    assert caught.value.metadata["status"] == "403"
    assert "hvs.wrong-token" not in caught.value.message
    assert len(kv.requests) == 1


@pytest.mark.parametrize("status", [503, 500, 429])
async def test_a_failing_store_is_unavailable_after_brief_retries(
    store: tuple[KvStore, str], status: int
) -> None:
    kv, url = store
    kv.secrets["datapunk/a"] = {"value": PIN}
    kv.fail_next = [status] * 10
    async with HttpSecretProvider(url, retry=FAST) as provider:
        with pytest.raises(Unavailable) as caught:
            await provider.get("a")
    assert caught.value.reason == "SECRET_STORE_UNAVAILABLE"
    assert caught.value.metadata == {"secret": "a", "provider": "http", "status": str(status)}
    assert caught.value.retry_after == 0.25
    assert len(kv.requests) == FAST.attempts
    _no_secrets_in(caught.value)


async def test_a_store_that_recovers_within_the_retries_answers(
    store: tuple[KvStore, str],
) -> None:
    kv, url = store
    kv.secrets["datapunk/a"] = {"value": PIN}
    kv.fail_next = [503, 503]
    async with HttpSecretProvider(url, retry=FAST) as provider:
        assert await provider.get("a") == PIN.encode()
    assert len(kv.requests) == 3


async def test_a_slow_store_times_out_as_unavailable(store: tuple[KvStore, str]) -> None:
    kv, url = store
    kv.secrets["datapunk/a"] = {"value": PIN}
    kv.delay = 2.0
    async with HttpSecretProvider(url, timeout=0.2, retry=RetryPolicy(attempts=1)) as provider:
        with pytest.raises(Unavailable) as caught:
            await provider.get("a")
    assert "did not answer in time" in caught.value.message


async def test_nothing_listening_is_unavailable() -> None:
    async with HttpSecretProvider(f"http://127.0.0.1:{free_port()}", retry=FAST) as provider:
        with pytest.raises(Unavailable) as caught:
            await provider.get("a")
    assert caught.value.reason == "SECRET_STORE_UNAVAILABLE"
    assert "cannot be reached" in caught.value.message


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"<html>proxy login</html>", Unavailable),
        (b'{"data": {"data": {"value": 5}}}', FailedPrecondition),
        (b'{"data": {"data": ["value"]}}', Unavailable),
        (b'{"errors": []}', Unavailable),
    ],
    ids=["html", "number", "list", "no-data"],
)
async def test_answers_that_are_not_a_kv_secret_are_refused(
    store: tuple[KvStore, str], answer: bytes, error: type[DatapunkError]
) -> None:
    kv, url = store
    kv.raw_answer = answer
    async with HttpSecretProvider(url, retry=RetryPolicy(attempts=1)) as provider:
        with pytest.raises(error):
            await provider.get("a")


async def test_no_token_or_a_bad_name_fails_before_any_request(
    store: tuple[KvStore, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kv, url = store
    monkeypatch.delenv("VAULT_TOKEN")
    async with HttpSecretProvider(url) as provider:
        with pytest.raises(FailedPrecondition) as caught:
            await provider.get("a")
        assert caught.value.reason == "SECRET_STORE_NO_TOKEN"
        assert "VAULT_TOKEN" in caught.value.message
        with pytest.raises(InvalidArgument):
            await provider.get("../sys/seal")
    monkeypatch.setenv("VAULT_TOKEN", "bad\ntoken")
    async with HttpSecretProvider(url) as provider:
        with pytest.raises(FailedPrecondition) as malformed:
            await provider.get("a")
        assert "bad" not in malformed.value.message
    async with HttpSecretProvider(url, token_file=tmp_path / "missing") as provider:
        with pytest.raises(FailedPrecondition) as unreadable:
            await provider.get("a")
        assert unreadable.value.reason == "SECRET_STORE_NO_TOKEN"
    assert kv.requests == []


def _self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "store.crt", tmp_path / "store.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file


async def test_https_with_the_store_ca_and_refusal_without_it(tmp_path: Path) -> None:
    kv = KvStore(secrets={"datapunk/a": {"value": PIN}})
    app = web.Application()
    app.router.add_get("/v1/secret/data/{path:.+}", kv.read)
    runner = web.AppRunner(app)
    await runner.setup()
    context, ca_file = _self_signed(tmp_path)
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    url = f"https://127.0.0.1:{port}"
    try:
        async with HttpSecretProvider(url, ca_file=ca_file) as provider:
            assert await provider.get("a") == PIN.encode()
        async with HttpSecretProvider(url, retry=RetryPolicy(attempts=1)) as untrusting:
            with pytest.raises(Unavailable) as caught:
                await untrusting.get("a")
        assert "cannot be reached" in caught.value.message
    finally:
        await runner.cleanup()
