"""Nexus's response cache: a local LRU in front of a shared Redis layer.

A read is answered from the local LRU, else from Redis (and then kept locally), else it
is a miss; the entry fetches the answer from the backend and ``put``s it. ``put`` stores
the answer with what the ``get`` before it saw (the Redis generation stamp and the local
invalidation epoch), so an answer that raced with an invalidation is never stored as
valid. Writes (every method not in ``read_methods``) invalidate their resource tag in
every instance, through ``after_call``; ``invalidate`` serves the InvalidateCache RPC.

Entries are kept under tags scoped by the caller's tenant (``<tenant>/<tag>``, see
``datapunk_shared.resource_tags``): tenants have their own objects under the same names,
so one tenant's write drops that tenant's answers only. A call without a tenant (an
anonymous call of a public method, or authentication off) is the default tenant's, as
it is for the services."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

from datapunk_shared.auth.tenancy import DEFAULT_TENANT
from datapunk_shared.config import CacheRule
from datapunk_shared.errors import Unavailable
from datapunk_shared.logging import get_logger

from datapunk_nexus.cache.keys import cache_key
from datapunk_nexus.cache.lru import LocalLru
from datapunk_nexus.cache.metrics import (
    CACHE_BYTES,
    CACHE_ENTRIES,
    CACHE_ERRORS,
    CACHE_HITS,
    CACHE_INVALIDATIONS,
    CACHE_MISSES,
)
from datapunk_nexus.cache.shared_layer import SharedLayer
from datapunk_nexus.cache.tags import ResourceTags, scoped, tag_matches
from datapunk_nexus.limits.rules import matches_any
from datapunk_nexus.policy import CallInfo

__all__ = ["TieredCache"]

log = get_logger("datapunk.nexus.cache")

_MAX_PENDING = 10_000
_PENDING_MAX_AGE = 300.0
_RECENT_INVALIDATIONS = 1024
_MAX_METHODS = 4096


@dataclass(frozen=True, slots=True)
class _Pending:
    """What a miss saw, for the ``put`` that follows it."""

    stamp: bytes | None
    epoch: int
    at: float
    tag: str | None
    """The call's tag when the ``get`` already worked it out (it decodes the request)."""


class TieredCache:
    """The ``ResponseCache`` of Nexus. ``shared`` is None for the local LRU alone."""

    def __init__(
        self,
        rules: Sequence[CacheRule],
        read_methods: Sequence[str],
        tags: ResourceTags,
        lru: LocalLru,
        *,
        shared: SharedLayer | None,
        max_entry_bytes: int,
        retry_interval: float = 1.0,
        default_tenant: str = DEFAULT_TENANT,
    ) -> None:
        self._rules = tuple((tuple(rule.methods), rule.ttl) for rule in rules)
        self._read_globs = tuple(read_methods)
        self._tags = tags
        self._lru = lru
        self._shared = shared
        self._max_entry_bytes = max_entry_bytes
        self._retry_interval = retry_interval
        self._default_tenant = default_tenant
        self._shared_down_until = 0.0
        self._ttl_by_method: dict[str, float | None] = {}
        self._is_read: dict[str, bool] = {}
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._epoch = 0
        self._recent: deque[tuple[int, str]] = deque(maxlen=_RECENT_INVALIDATIONS)
        # Without Redis the local LRU is the whole cache; with it, the LRU may serve only
        # while this instance hears the invalidations (the subscriber says so).
        self.local_usable = shared is None
        self._hits_local = CACHE_HITS.labels("local")
        self._hits_shared = CACHE_HITS.labels("redis")

    # -- the ResponseCache seam ---------------------------------------------------------

    def cacheable(self, method: str) -> bool:
        return self._ttl(method) is not None

    async def get(self, call: CallInfo) -> bytes | None:
        ttl = self._ttl(call.method)
        if ttl is None:
            return None
        key = cache_key(call)
        if self.local_usable:
            value = self._lru.get(key)
            if value is not None:
                self._hits_local.inc()
                return value
        stamp = tag = None
        if self._shared is not None and time.monotonic() >= self._shared_down_until:
            tag = self._tag(call)
            epoch = self._epoch
            try:
                value, stamp, ttl_left = await self._shared.get(key, tag)
            except Exception as exc:
                self._shared_failed("get", exc)
                value = None
            if value is not None:
                self._hits_shared.inc()
                if self.local_usable and not self._invalidated_since(epoch, tag):
                    self._store_local(key, tag, value, min(ttl, ttl_left))
                return value
        CACHE_MISSES.inc()
        self._remember(key, stamp, tag)
        return None

    async def put(self, call: CallInfo, response: bytes) -> None:
        ttl = self._ttl(call.method)
        if ttl is None:
            return
        key = cache_key(call)
        pending = self._pending.pop(key, None)
        if pending is None or time.monotonic() - pending.at > _PENDING_MAX_AGE:
            return  # no miss before it (or a very old one): nothing safe to stamp it with
        if len(response) > self._max_entry_bytes:
            return
        tag = pending.tag
        if tag is None:
            tag = self._tag(call)
        if self.local_usable and not self._invalidated_since(pending.epoch, tag):
            self._store_local(key, tag, response, ttl)
        if (
            self._shared is not None
            and pending.stamp is not None
            and time.monotonic() >= self._shared_down_until
        ):
            try:
                await self._shared.put(key, pending.stamp, response, ttl)
            except Exception as exc:
                self._shared_failed("put", exc)

    async def after_call(self, call: CallInfo) -> None:
        if self._read(call.method):
            return
        tag = self._tag(call)
        try:
            await self.invalidate([tag], source="write")
        except Unavailable as exc:
            # The write happened; its stale entries in other instances now expire by TTL.
            log.error("cache: a write's invalidation failed", tag=tag, error=exc.message)

    # -- invalidation -------------------------------------------------------------------

    async def invalidate(self, tags: Sequence[str], *, source: str = "rpc") -> None:
        """Drop the entries about ``tags`` (scoped tags, ``<tenant>/<tag>``) here and
        (through Redis) in every instance; raises Unavailable when Redis cannot take the
        invalidation."""
        self.drop_local(tags)
        CACHE_INVALIDATIONS.labels(source).inc(len(tags))
        if self._shared is not None:
            try:
                await self._shared.invalidate(tags)
            except Exception as exc:
                self._shared_failed("invalidate", exc)
                raise Unavailable(
                    "the cache invalidation could not be published; retry",
                    retry_after=1.0,
                    reason="CACHE_UNAVAILABLE",
                ) from None

    def drop_local(self, tags: Sequence[str]) -> None:
        """Drop the local entries about ``tags`` (an invalidation heard on the channel)."""
        for tag in tags:
            self._epoch += 1
            self._recent.append((self._epoch, tag))
            self._lru.invalidate(tag)
        self._update_gauges()

    def set_local_usable(self, usable: bool) -> None:
        """Whether the local LRU may serve (only while invalidations are heard)."""
        self.local_usable = usable

    def reset_local(self) -> None:
        """Empty the local LRU (after the subscription was (re)established)."""
        self._epoch += 1
        self._recent.clear()
        self._lru.clear()
        self._update_gauges()

    # -- internals ----------------------------------------------------------------------

    def _tag(self, call: CallInfo) -> str:
        """The call's resource tag, scoped by its tenant."""
        tenant = call.tenant or self._default_tenant
        return scoped(tenant, self._tags.tag(call.method, call.request))

    def _ttl(self, method: str) -> float | None:
        try:
            return self._ttl_by_method[method]
        except KeyError:
            pass
        if len(self._ttl_by_method) >= _MAX_METHODS:
            self._ttl_by_method.clear()
        ttl = next((ttl for globs, ttl in self._rules if matches_any(method, globs)), None)
        self._ttl_by_method[method] = ttl
        return ttl

    def _read(self, method: str) -> bool:
        found = self._is_read.get(method)
        if found is None:
            if len(self._is_read) >= _MAX_METHODS:
                self._is_read.clear()
            found = self._is_read[method] = self.cacheable(method) or matches_any(
                method, self._read_globs
            )
        return found

    def _remember(self, key: str, stamp: bytes | None, tag: str | None) -> None:
        # Two concurrent misses of one key keep the older stamp: a newer stamp must never
        # validate an answer fetched before it.
        if key not in self._pending:
            self._pending[key] = _Pending(stamp, self._epoch, time.monotonic(), tag)
            if len(self._pending) > _MAX_PENDING:
                self._pending.popitem(last=False)

    def _invalidated_since(self, epoch: int, tag: str) -> bool:
        if epoch == self._epoch:
            return False
        if not self._recent or self._recent[0][0] > epoch + 1:
            return True  # the record does not reach back that far: assume the worst
        return any(e > epoch and tag_matches(tag, t) for e, t in self._recent)

    def _store_local(self, key: str, tag: str, value: bytes, ttl: float) -> None:
        if ttl > 0:
            self._lru.put(key, tag, value, ttl)
            self._update_gauges()

    def _update_gauges(self) -> None:
        CACHE_ENTRIES.set(len(self._lru))
        CACHE_BYTES.set(self._lru.bytes)

    def _shared_failed(self, operation: str, exc: BaseException) -> None:
        """Count the failure and skip Redis reads and writes for ``retry_interval`` (so
        that a Redis outage costs one timeout per interval, not one per call)."""
        CACHE_ERRORS.labels(operation).inc()
        if time.monotonic() >= self._shared_down_until:
            log.warning(
                "cache: Redis failed; reads and writes bypass it for a while",
                operation=operation,
                error=repr(exc),
                retry_in_s=self._retry_interval,
            )
        self._shared_down_until = time.monotonic() + self._retry_interval
