"""The seam between Nexus's entries and its request policies.

Both entries — the REST/JSON edge and the single gRPC entry — describe every call as a
``CallInfo`` and pass it through one ``RequestGate`` (rate limits, bounded concurrency,
load shedding) and, for cacheable reads, one ``ResponseCache``. Entries know nothing
about how limits or caches work; policies know nothing about HTTP or gRPC framing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

__all__ = ["CallInfo", "NoCache", "OpenGate", "RequestGate", "ResponseCache"]


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


class ResponseCache(Protocol):
    """Caches serialized responses of cacheable reads, per principal, method and request.
    A cache never serves one principal's answer to another."""

    def cacheable(self, method: str) -> bool: ...

    async def get(self, call: CallInfo) -> bytes | None: ...

    async def put(self, call: CallInfo, response: bytes) -> None: ...


class OpenGate:
    """The gate when no limits are configured: admits every call, adds no headers."""

    @asynccontextmanager
    async def admit(self, call: CallInfo) -> AsyncIterator[Mapping[str, str]]:
        yield {}


class NoCache:
    """The cache when caching is off: nothing is cacheable."""

    def cacheable(self, method: str) -> bool:
        return False

    async def get(self, call: CallInfo) -> bytes | None:
        return None

    async def put(self, call: CallInfo, response: bytes) -> None:
        return None
