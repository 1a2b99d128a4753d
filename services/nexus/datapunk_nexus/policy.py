"""The seam between Nexus's entries and its request policies.

Both entries — the REST/JSON edge and the single gRPC entry — describe every call as a
``CallInfo`` and pass it through one ``RequestGate`` (rate limits, bounded concurrency,
load shedding) and, for cacheable reads, one ``ResponseCache``. Entries know nothing
about how limits or caches work; policies know nothing about HTTP or gRPC framing.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from datapunk_shared.errors import DatapunkError

__all__ = [
    "CallInfo",
    "NoCache",
    "OpenGate",
    "RequestGate",
    "ResponseCache",
    "rejection_headers",
]


@dataclass(frozen=True, slots=True)
class CallInfo:
    """One call as the policies see it."""

    method: str
    """Full gRPC method name, e.g. ``/datapunk.lake.v1.VectorService/SearchPoints``."""
    client_ip: str
    """The caller's address (forwarded-for is honoured only from trusted proxies)."""
    principal: str | None = None
    """The authenticated principal, when there is one."""
    tenant: str | None = None
    """The principal's tenant, when there is one."""
    api_key_id: str | None = None
    """The id (never the secret) of the API key used, when there is one."""
    request: bytes = b""
    """The serialized request message: part of a cache key, never logged."""


class RequestGate(Protocol):
    """Admits a call or refuses it with ``ResourceExhausted`` (over a rate limit, with
    ``retry_after``) or ``Unavailable`` (over a concurrency bound, shed quickly).

    ``admit`` returns an async context manager held for the whole call (it frees any
    concurrency slot on exit) whose value is the response headers to add, such as
    ``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset``."""

    def admit(self, call: CallInfo) -> AbstractAsyncContextManager[Mapping[str, str]]: ...

    async def check_rate(self, call: CallInfo) -> Mapping[str, str]:
        """The rate limits alone (no concurrency slot is taken), for a proxy that bounds
        concurrency itself (Envoy asking ``ShouldRateLimit``): the headers to add, or
        ``ResourceExhausted`` over a limit."""
        ...


class ResponseCache(Protocol):
    """Caches serialized responses of cacheable reads, per principal, method and request.
    A cache never serves one principal's answer to another."""

    def cacheable(self, method: str) -> bool: ...

    async def get(self, call: CallInfo) -> bytes | None: ...

    async def put(self, call: CallInfo, response: bytes) -> None: ...

    async def after_call(self, call: CallInfo) -> None:
        """Entries call this after every call that succeeded and was not answered from
        the cache: when the call was a write, the cached answers about the resource it
        names are dropped here and in every other instance."""


def rejection_headers(error: DatapunkError) -> dict[str, str]:
    """The HTTP headers (gRPC: the same names, lower-case, as trailing metadata) for a
    refusal of the gate: ``Retry-After`` (whole seconds, rounded up) for any error with
    ``retry_after``, plus ``RateLimit-Limit``, ``RateLimit-Remaining`` and
    ``RateLimit-Reset`` (names of the IETF draft draft-ietf-httpapi-ratelimit-headers)
    when a rate limit refused the call."""
    headers: dict[str, str] = {}
    retry_after: float | None = getattr(error, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    meta = error.metadata
    if error.reason == "RATE_LIMITED" and "limit" in meta:
        headers["RateLimit-Limit"] = meta["limit"]
        headers["RateLimit-Remaining"] = meta.get("remaining", "0")
        headers["RateLimit-Reset"] = meta.get("reset", headers.get("Retry-After", "1"))
    return headers


class OpenGate:
    """The gate when no limits are configured: admits every call, adds no headers."""

    @asynccontextmanager
    async def admit(self, call: CallInfo) -> AsyncIterator[Mapping[str, str]]:
        yield {}

    async def check_rate(self, call: CallInfo) -> Mapping[str, str]:
        return {}


class NoCache:
    """The cache when caching is off: nothing is cacheable."""

    def cacheable(self, method: str) -> bool:
        return False

    async def get(self, call: CallInfo) -> bytes | None:
        return None

    async def put(self, call: CallInfo, response: bytes) -> None:
        return None

    async def after_call(self, call: CallInfo) -> None:
        return None
