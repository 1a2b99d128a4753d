"""Public keys of trusted issuers, fetched from their discovery documents and JWKS over
HTTP and cached so that key rotation is followed and a provider outage is survived.

For each configured issuer ``JwksKeySource``

* finds the JWKS location by discovery (``<issuer>/.well-known/openid-configuration``,
  else RFC 8414's ``/.well-known/oauth-authorization-server``), refusing a document whose
  ``issuer`` is not exactly the configured one — or uses a configured JWKS URL;
* keeps the keys for the response's ``Cache-Control: max-age``, bounded to
  ``[min_ttl, max_ttl]`` (``default_ttl`` without one);
* refetches when a token names a ``kid`` it does not know (a rotation), at most once per
  ``refetch_interval`` per issuer, so a flood of tokens with random ``kid`` values costs
  the provider one request per interval; concurrent lookups share one fetch;
* while the provider cannot be reached, keeps using the keys it has until their lifetime
  plus ``max_stale`` has passed; an issuer whose keys were never fetched fails closed
  with ``Unavailable`` (``ISSUER_UNAVAILABLE``, with a retry delay).
* when told that an issuer's keys changed (``keys_changed``: Nexus announces deleted and
  retired keys, ``datapunk_shared.key_events``), drops the removed keys at once and
  fetches the key set again, whatever its lifetime and the refetch interval say.

Only configured issuers are ever contacted, and only at the discovered or configured
URL: nothing a token says (``kid``, ``iss``, headers) becomes part of a request.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from joserfc.jwk import Key

from datapunk_shared.auth.keys import import_public_keys
from datapunk_shared.auth.tokens import refuse
from datapunk_shared.errors import Unavailable
from datapunk_shared.logging import get_logger

__all__ = ["JwksCachePolicy", "JwksKeySource", "discovery_urls"]

log = get_logger("datapunk.auth.jwks")

_MAX_AGE = re.compile(r"(?:^|,)\s*(?:s-)?max-age\s*=\s*\"?(\d{1,10})\"?\s*(?:,|$)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\s*(?:,|$)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class JwksCachePolicy:
    """How long keys are kept and how often a provider may be asked for them."""

    min_ttl: float = 60.0
    """Keys are kept at least this long, whatever the provider's Cache-Control says."""
    max_ttl: float = 86400.0
    """...and at most this long, so a rotation is noticed within a day at the latest."""
    default_ttl: float = 600.0
    """The lifetime of keys served without a usable ``max-age``."""
    max_stale: float = 3600.0
    """While the provider is unreachable, expired keys keep working this much longer."""
    refetch_interval: float = 30.0
    """The least time between two fetches for one issuer (unknown ``kid``, expiry,
    failure): the bound on what a flood of forged tokens can make us send."""
    timeout: float = 5.0
    """The longest one HTTP request to a provider may take."""
    max_document_bytes: int = 256 * 1024
    """Discovery documents and key sets larger than this are refused."""

    def __post_init__(self) -> None:
        if not 0 < self.min_ttl <= self.default_ttl <= self.max_ttl:
            raise ValueError("JWKS cache lifetimes need 0 < min_ttl <= default_ttl <= max_ttl")
        if self.max_stale < 0 or self.refetch_interval < 0 or self.timeout <= 0:
            raise ValueError("max_stale and refetch_interval must be >= 0, timeout > 0")
        if self.max_document_bytes < 1024:
            raise ValueError("max_document_bytes must be at least 1024")

    def lifetime(self, cache_control: str | None) -> float:
        """Seconds to keep a key set served with this ``Cache-Control`` header."""
        if cache_control and _NO_CACHE.search(cache_control):
            return self.min_ttl
        found = _MAX_AGE.search(cache_control or "")
        ttl = float(found.group(1)) if found else self.default_ttl
        return min(max(ttl, self.min_ttl), self.max_ttl)


def discovery_urls(issuer: str) -> list[str]:
    """Where an issuer's metadata may be: OpenID Connect Discovery's location, then RFC
    8414's (which puts the well-known segment before the issuer's path)."""
    base = issuer.rstrip("/")
    parts = urlsplit(base)
    return [
        f"{base}/.well-known/openid-configuration",
        f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{parts.path}",
    ]


class _FetchFailed(Exception):
    """One provider request did not give a usable answer (the reason is for the log)."""


@dataclass(slots=True)
class _Issuer:
    issuer: str
    configured_jwks_uri: str | None
    jwks_uri: str | None = None
    keys: dict[str, Key] | None = None
    expires_at: float = 0.0
    last_attempt: float | None = None
    inflight: asyncio.Task[None] | None = field(default=None, repr=False)


class JwksKeySource:
    """A ``KeySource`` for issuers that publish their keys over HTTP.

    ``issuers`` maps each trusted issuer to its JWKS URL, or to ``None`` to find it by
    discovery. Pass ``http`` to share a client (its lifetime is then the caller's);
    otherwise ``aclose()`` closes the one made here."""

    def __init__(
        self,
        issuers: Mapping[str, str | None],
        *,
        policy: JwksCachePolicy | None = None,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy or JwksCachePolicy()
        self._issuers: dict[str, _Issuer] = {}
        for issuer, jwks_uri in issuers.items():
            _check_url(issuer, issuer, "issuer")
            if jwks_uri is not None:
                _check_url(jwks_uri, issuer, "JWKS URL")
            self._issuers[issuer] = _Issuer(issuer, jwks_uri, jwks_uri)
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=self._policy.timeout, follow_redirects=False)
        self._clock = clock

    async def aclose(self) -> None:
        """Stop pending fetches and close the HTTP client if it was made here."""
        for state in self._issuers.values():
            if state.inflight is not None:
                state.inflight.cancel()
        if self._own_http:
            await self._http.aclose()

    async def key(self, issuer: str, kid: str) -> Key:
        state = self._issuers.get(issuer)
        if state is None:
            raise refuse("UNTRUSTED_ISSUER", "the token's issuer is not trusted")
        now = self._clock()
        if state.keys is not None and now < state.expires_at and kid in state.keys:
            return state.keys[kid]
        if state.inflight is not None or self._may_fetch(state, now):
            await self._refresh(state)
        now = self._clock()
        if state.keys is not None and now < state.expires_at + self._policy.max_stale:
            key = state.keys.get(kid)
            if key is None:
                raise refuse(
                    "UNKNOWN_KEY", "the token is signed with a key the issuer does not publish"
                )
            return key
        raise self._unavailable(state, now)

    async def keys_changed(self, issuer: str | None, removed: Collection[str]) -> None:
        """``issuer``'s keys changed (None: any issuer's): forget the ``removed`` key ids
        now, then fetch again every affected key set already cached (a fetch that started
        before the change may carry the old set, so a new one is made after it). While
        the issuer cannot be reached the cached keys stay in use, minus ``removed``."""
        states = [
            state
            for state in self._issuers.values()
            if (issuer is None or state.issuer == issuer) and state.keys is not None
        ]
        for state in states:
            self._drop(state, removed)
        for state in states:
            stale = state.inflight
            if stale is not None:
                await asyncio.wait([stale])
                if state.inflight is stale:
                    state.inflight = None
            before = state.keys
            await self._refresh(state)
            if state.keys is before:
                # The issuer unreachable: the old set stayed, minus ``removed``. A set
                # fetched after the change is the issuer's word, even on these kids.
                self._drop(state, removed)

    @staticmethod
    def _drop(state: _Issuer, removed: Collection[str]) -> None:
        if state.keys is not None and not state.keys.keys().isdisjoint(removed):
            state.keys = {kid: key for kid, key in state.keys.items() if kid not in removed}

    def _may_fetch(self, state: _Issuer, now: float) -> bool:
        return (
            state.last_attempt is None or now - state.last_attempt >= self._policy.refetch_interval
        )

    def _unavailable(self, state: _Issuer, now: float) -> Unavailable:
        waited = now - state.last_attempt if state.last_attempt is not None else 0.0
        return Unavailable(
            "the token's issuer cannot be reached to fetch its keys; retry later",
            reason="ISSUER_UNAVAILABLE",
            retry_after=max(1.0, self._policy.refetch_interval - waited),
            metadata={"issuer": state.issuer},
        )

    async def _refresh(self, state: _Issuer) -> None:
        """Fetch the issuer's keys, or join the fetch already running; a failure leaves
        the cached keys as they were (it has been logged)."""
        if state.inflight is None:
            task = asyncio.get_running_loop().create_task(self._fetch(state))
            state.inflight = task
            task.add_done_callback(lambda _: _forget_fetch(state, task))
        # Shielded: one waiter giving up (its call was cancelled) does not cancel the
        # fetch the others wait for.
        await asyncio.shield(state.inflight)

    async def _fetch(self, state: _Issuer) -> None:
        state.last_attempt = self._clock()
        try:
            if state.jwks_uri is None:
                state.jwks_uri = await self._discover(state.issuer)
            document, cache_control = await self._get_json(state.jwks_uri)
            try:
                keys = import_public_keys(document)
            except ValueError as exc:
                raise _FetchFailed(f"the key set is not usable: {exc}") from None
        except _FetchFailed as exc:
            # Discover again next time: the provider may have moved its key set.
            state.jwks_uri = state.configured_jwks_uri
            log.warning("issuer keys not fetched", issuer=state.issuer, error=str(exc))
            return
        previous = set(state.keys or ())
        state.keys = keys
        state.expires_at = self._clock() + self._policy.lifetime(cache_control)
        if set(keys) != previous:
            log.info("issuer keys loaded", issuer=state.issuer, kids=sorted(keys))

    async def _discover(self, issuer: str) -> str:
        failures: list[str] = []
        for url in discovery_urls(issuer):
            try:
                document, _ = await self._get_json(url)
            except _FetchFailed as exc:
                failures.append(str(exc))
                continue
            if document.get("issuer") != issuer:
                raise _FetchFailed(f"the metadata at {url} is for another issuer")
            jwks_uri = document.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                raise _FetchFailed(f"the metadata at {url} has no jwks_uri")
            try:
                _check_url(jwks_uri, issuer, "jwks_uri")
            except ValueError as exc:
                raise _FetchFailed(str(exc)) from None
            return jwks_uri
        raise _FetchFailed("no discovery document: " + "; ".join(failures))

    async def _get_json(self, url: str) -> tuple[dict[str, Any], str | None]:
        limit = self._policy.max_document_bytes
        try:
            async with self._http.stream(
                "GET", url, headers={"accept": "application/json"}
            ) as response:
                if response.status_code != 200:
                    raise _FetchFailed(f"{url} answered HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise _FetchFailed(f"{url} sent more than {limit} bytes")
                cache_control = response.headers.get("cache-control")
        except httpx.HTTPError as exc:
            raise _FetchFailed(f"{url}: {type(exc).__name__}") from None
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise _FetchFailed(f"{url} did not send JSON") from None
        if not isinstance(document, dict):
            raise _FetchFailed(f"{url} did not send a JSON object")
        return document, cache_control


def _forget_fetch(state: _Issuer, task: asyncio.Task[None]) -> None:
    if state.inflight is task:  # not a newer fetch started after this one
        state.inflight = None


def _check_url(url: str, issuer: str, what: str) -> None:
    """Issuers and key locations are https URLs; plain http only for an http issuer
    (a development or test provider on this machine)."""
    parts = urlsplit(url)
    allowed = {"https", "http"} if urlsplit(issuer).scheme == "http" else {"https"}
    if parts.scheme not in allowed or not parts.netloc or parts.fragment:
        raise ValueError(f"the {what} of issuer {issuer} must be an {'/'.join(allowed)} URL")
