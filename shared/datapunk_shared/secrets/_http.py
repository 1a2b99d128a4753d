"""Secrets from an HTTP secret store speaking the KV version 2 read API of HashiCorp
Vault and OpenBao (production).

Secret ``nexus/signing-token-pin`` is read with ``GET <url>/v1/<mount>/data/<prefix>/
nexus/signing-token-pin`` and an ``X-Vault-Token`` header; its value is the string under
``field`` (``value``) in the answer's ``data.data``. The token comes from a file (a
Vault/OpenBao agent's token sink, reread at every request so renewals are followed) or an
environment variable. Answers are mapped to the error vocabulary: not stored (404, a
deleted version, no such field) is NotFound; the store unreachable, timing out, sealed,
rate-limiting or failing (5xx) is Unavailable and is retried briefly first; a refused
token (401, 403) is PermissionDenied. No error carries the token or a secret."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from datapunk_shared.errors import (
    FailedPrecondition,
    PermissionDenied,
    Unavailable,
)
from datapunk_shared.retry import RetryPolicy, retry_call
from datapunk_shared.secrets._base import check_secret_name, secret_not_found

__all__ = ["HttpSecretProvider"]

_PROVIDER = "http"
_MAX_ANSWER_BYTES = 1024 * 1024


class HttpSecretProvider:
    """Reads secrets from a Vault/OpenBao KV v2 mount over HTTP(S). Close it with
    ``aclose`` (or use it as an async context manager)."""

    def __init__(
        self,
        url: str,
        *,
        mount: str = "secret",
        path_prefix: str | None = "datapunk",
        field: str = "value",
        namespace: str = "",
        token_env: str = "VAULT_TOKEN",
        token_file: Path | None = None,
        ca_file: Path | None = None,
        timeout: float = 5.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._base = url.rstrip("/")
        self._mount = mount.strip("/")
        self._prefix = (path_prefix or "").strip("/")
        self._field = field
        self._token_env = token_env
        self._token_file = token_file
        self._retry = retry or RetryPolicy(attempts=3, initial=0.1, maximum=1.0, deadline=timeout)
        headers = {"X-Vault-Namespace": namespace} if namespace else {}
        verify: ssl.SSLContext | bool = True
        if ca_file is not None:
            verify = ssl.create_default_context(cafile=str(ca_file))
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            headers=headers,
            verify=verify,
            follow_redirects=False,
            trust_env=False,
        )

    def url(self, name: str) -> str:
        """Where secret ``name`` is read from."""
        path = "/".join(part for part in (self._prefix, check_secret_name(name)) if part)
        return f"{self._base}/v1/{quote(self._mount)}/data/{quote(path)}"

    async def get(self, name: str) -> bytes:
        url = self.url(name)
        return await retry_call(lambda: self._get_once(name, url), self._retry)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> HttpSecretProvider:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def _get_once(self, name: str, url: str) -> bytes:
        token = await self._token(name)
        try:
            response = await self._client.get(url, headers={"X-Vault-Token": token})
            body = response.content[: _MAX_ANSWER_BYTES + 1]
        except httpx.TimeoutException:
            raise _unavailable(name, "did not answer in time") from None
        except httpx.TransportError as exc:
            raise _unavailable(name, f"cannot be reached ({type(exc).__name__})") from None
        status = response.status_code
        if status == 404:
            raise secret_not_found(name, "http", url)
        if status in (401, 403):
            raise PermissionDenied(
                f"the secret store refused to read secret {name!r} (HTTP {status}): "
                "check the token and its policy",
                reason="SECRET_STORE_DENIED",
                metadata={"secret": name, "provider": _PROVIDER, "status": str(status)},
            )
        if status == 429 or status >= 500:
            raise _unavailable(name, f"answered HTTP {status}", status=status)
        if status != 200:
            raise FailedPrecondition(
                f"the secret store answered HTTP {status} for secret {name!r}",
                reason="SECRET_STORE_ERROR",
                metadata={"secret": name, "provider": _PROVIDER, "status": str(status)},
            )
        return self._value(name, url, body)

    def _value(self, name: str, url: str, body: bytes) -> bytes:
        try:
            answer: Any = json.loads(body) if len(body) <= _MAX_ANSWER_BYTES else None
        except ValueError:
            answer = None
        stored = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(stored, dict):
            raise _unavailable(name, "answered with something that is not a KV v2 secret")
        data = stored.get("data")
        if data is None:  # a deleted or destroyed version
            raise secret_not_found(name, "http", f"{url}, whose latest version is deleted")
        if not isinstance(data, dict):
            raise _unavailable(name, "answered with something that is not a KV v2 secret")
        value = data.get(self._field)
        if value is None or value == "":
            raise secret_not_found(name, "http", f"the field {self._field!r} of {url}")
        if not isinstance(value, str):
            raise FailedPrecondition(
                f"secret {name!r}: the field {self._field!r} is not a string",
                reason="SECRET_STORE_ERROR",
                metadata={"secret": name, "provider": _PROVIDER},
            )
        return value.encode("utf-8")

    async def _token(self, name: str) -> str:
        if self._token_file is not None:
            try:
                token = await asyncio.to_thread(self._token_file.read_text, "utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise FailedPrecondition(
                    f"the secret store token cannot be read from {self._token_file} "
                    f"({type(exc).__name__})",
                    reason="SECRET_STORE_NO_TOKEN",
                    metadata={"secret": name, "provider": _PROVIDER},
                ) from None
        else:
            token = os.environ.get(self._token_env, "")
        token = token.strip()
        if not (token.isascii() and token.isprintable()):
            raise FailedPrecondition(
                f"the secret store token for secret {name!r} has characters a token cannot have",
                reason="SECRET_STORE_NO_TOKEN",
                metadata={"secret": name, "provider": _PROVIDER},
            )
        if not token:
            where = self._token_file or f"the variable {self._token_env}"
            raise FailedPrecondition(
                f"no secret store token to read secret {name!r}: {where} is empty",
                reason="SECRET_STORE_NO_TOKEN",
                metadata={"secret": name, "provider": _PROVIDER},
            )
        return token


def _unavailable(name: str, what: str, *, status: int | None = None) -> Unavailable:
    metadata = {"secret": name, "provider": _PROVIDER}
    if status is not None:
        metadata["status"] = str(status)
    return Unavailable(
        f"the secret store {what} while reading secret {name!r}",
        retry_after=0.25,
        reason="SECRET_STORE_UNAVAILABLE",
        metadata=metadata,
    )
