"""Cache invalidations from the services that own the data.

Nexus caches the answers of reads (``datapunk_nexus.cache``) per resource tag
(``datapunk_shared.resource_tags``). A write through Nexus drops its resource's entries
there, but a write straight to the Lake (by a service, or through another path) does
not pass Nexus. So every service that owns data publishes the invalidations of its own
writes: after a write RPC succeeds, the resource tag of its request, scoped to the
caller's tenant, is invalidated in Redis (the shared layer's generation counters are
bumped, so its entries stop being served at once) and published on the invalidation
channel (every Nexus instance drops its local LRU's matching entries when it hears it).

One mechanism for every servicer: ``publish_writes(context)`` at the start of a
service's ``setup`` wraps the handlers it then registers. Which methods are writes is
decided once per method at registration, with the rule Nexus's cache uses (every method
that is neither listed in ``nexus.cache.read_methods`` nor cacheable by a
``nexus.cache.rules`` rule); reads, health, reflection and status are left untouched
and cost nothing. A client stream's messages may name different resources: each one's
tag is collected as it arrives and published when the service acknowledges (each
response of a bidirectional stream, the end of a client stream) — and also when such a
stream fails, since batches before the failure may be written.

A failed publication never fails the write: the engine has accepted it. It is logged and
counted (``datapunk_cache_invalidation_publish_total{outcome="failed"}``), and the stale
entries then live at most until their TTL (``nexus.cache.rules``).

Message on the channel: JSON ``{"tags": ["acme/lake/collections/docs"]}``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from fnmatch import fnmatchcase
from typing import Any, cast

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message import Message
from prometheus_client import Counter
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from datapunk_shared.auth.interceptor import is_public_method
from datapunk_shared.auth.tenancy import current_tenant
from datapunk_shared.config import CacheSettings, Settings
from datapunk_shared.logging import get_logger
from datapunk_shared.resource_tags import (
    ResourceTags,
    ancestors,
    routes_of_services,
    scoped,
)
from datapunk_shared.rpc.server import ServiceContext

__all__ = [
    "GENERATION_TTL_SECONDS",
    "INVALIDATIONS_PUBLISHED",
    "InvalidatingServer",
    "InvalidationPublisher",
    "WriteInvalidation",
    "node_key",
    "publish_invalidation",
    "publish_writes",
    "tree_key",
]

log = get_logger("datapunk.invalidation")

GENERATION_TTL_SECONDS = 3 * 3600
"""Counters outlive every entry (TTLs are at most an hour): when one expires and restarts
at zero, no entry stamped with its old value is still there."""

_MAX_CONNECTIONS = 16
_MAX_STREAM_TAGS = 32

INVALIDATIONS_PUBLISHED = Counter(
    "datapunk_cache_invalidation_publish_total",
    "Cache invalidations of a service's own writes, by outcome: published (ok) or not "
    "(failed: Redis unreachable or slow; the entries then expire by their TTL).",
    ["service", "outcome"],
)


def node_key(prefix: str, tag: str) -> str:
    """The counter bumped when something below ``tag`` is invalidated."""
    return f"{prefix}g:n:{tag}"


def tree_key(prefix: str, tag: str) -> str:
    """The counter bumped when ``tag`` itself is invalidated."""
    return f"{prefix}g:t:{tag}"


async def publish_invalidation(
    redis: Redis, tags: Collection[str], *, prefix: str, channel: str
) -> None:
    """Invalidate ``tags`` for every Nexus instance: bump their generations in the shared
    layer and publish them on ``channel``, in one transaction (one round trip)."""
    pipe: Any = redis.pipeline(transaction=True)
    for tag in tags:
        pipe.incr(tree_key(prefix, tag))
        pipe.expire(tree_key(prefix, tag), GENERATION_TTL_SECONDS)
        for parent in ancestors(tag):
            pipe.incr(node_key(prefix, parent))
            pipe.expire(node_key(prefix, parent), GENERATION_TTL_SECONDS)
    pipe.publish(channel, json.dumps({"tags": list(tags)}))
    await pipe.execute()


class InvalidationPublisher:
    """Publishes the invalidations of one service's writes; never raises."""

    def __init__(
        self, redis: Redis, *, service: str, prefix: str, channel: str, timeout: float
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._channel = channel
        self._timeout = timeout
        self._ok = INVALIDATIONS_PUBLISHED.labels(service, "ok")
        self._failed = INVALIDATIONS_PUBLISHED.labels(service, "failed")

    async def publish(self, tags: Collection[str]) -> bool:
        """Invalidate ``tags`` (already scoped); False when it could not be published."""
        try:
            async with asyncio.timeout(self._timeout):
                await publish_invalidation(
                    self._redis, tags, prefix=self._prefix, channel=self._channel
                )
        except Exception as exc:
            self._failed.inc()
            log.error(
                "cache invalidation not published; cached answers about these resources "
                "may be stale until their TTL",
                tags=sorted(tags),
                error=repr(exc),
            )
            return False
        self._ok.inc()
        return True


def _writer_tenant() -> str | None:
    try:
        return current_tenant()
    except Exception:
        return None


class WriteInvalidation:
    """Decides which methods are writes and wraps their handlers so that a successful
    call publishes the invalidation of the resource its request names."""

    def __init__(
        self,
        publisher: InvalidationPublisher,
        *,
        read_methods: Sequence[str],
        tenant: Callable[[], str | None] = _writer_tenant,
    ) -> None:
        self._publisher = publisher
        self._read_globs = tuple(read_methods)
        self._tenant = tenant
        self._tags = ResourceTags({})
        self._routed: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()

    @classmethod
    def for_cache(cls, publisher: InvalidationPublisher, cache: CacheSettings) -> WriteInvalidation:
        """With the read methods of Nexus's cache: its configured reads and every method
        a cache rule makes cacheable."""
        globs = [*cache.read_methods, *(glob for rule in cache.rules for glob in rule.methods)]
        return cls(publisher, read_methods=globs)

    def is_write(self, method: str) -> bool:
        return not is_public_method(method) and not any(
            fnmatchcase(method, glob) for glob in self._read_globs
        )

    def wrap(self, method: str, handler: Any) -> Any:
        """``handler`` itself for a read; for a write, one that publishes its
        invalidation after it succeeded."""
        if handler is None or not self.is_write(method):
            return handler
        self._learn_routes(method)
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._unary_unary(method, handler.unary_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._unary_stream(method, handler.unary_stream))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=self._stream_unary(method, handler.stream_unary))
        return handler._replace(stream_stream=self._stream_stream(method, handler.stream_stream))

    def _learn_routes(self, method: str) -> None:
        service = method.lstrip("/").split("/", 1)[0]
        if service in self._routed:
            return
        self._routed.add(service)
        try:
            found = descriptor_pool.Default().FindServiceByName(service)
        except KeyError:
            return  # no contract: the service's tag alone (everything of it) is used
        self._tags.add_routes(routes_of_services([found]))

    # -- publishing ---------------------------------------------------------------------

    async def _publish(self, tags: set[str]) -> None:
        tenant = self._tenant()
        if tenant is None:
            log.error("cache invalidation not published: the write's tenant is unknown")
            return
        await self._publisher.publish(sorted(scoped(tenant, tag) for tag in tags))

    def _publish_later(self, tags: set[str]) -> None:
        """Publish from a failed or cancelled stream without waiting in its unwinding."""
        if tags:
            task = asyncio.get_running_loop().create_task(self._publish(set(tags)))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _collecting(
        self, method: str, requests: AsyncIterator[Message], seen: _StreamTags
    ) -> AsyncIterator[Message]:
        tags = self._tags

        async def collect() -> AsyncIterator[Message]:
            async for message in requests:
                seen.add(tags.message_tag(method, message))
                yield message

        return collect()

    # -- the four call shapes -----------------------------------------------------------

    def _unary_unary(self, method: str, inner: Any) -> Any:
        async def behavior(request: Message, context: Any) -> Any:
            response = await inner(request, context)
            await self._publish({self._tags.message_tag(method, request)})
            return response

        return behavior

    def _unary_stream(self, method: str, inner: Any) -> Any:
        async def behavior(request: Message, context: Any) -> AsyncIterator[Any]:
            tag = self._tags.message_tag(method, request)
            try:
                async for item in _responses(inner(request, context)):
                    yield item
            except BaseException:
                self._publish_later({tag})  # what was answered before the failure stands
                raise
            await self._publish({tag})

        return behavior

    def _stream_unary(self, method: str, inner: Any) -> Any:
        async def behavior(requests: AsyncIterator[Message], context: Any) -> Any:
            seen = _StreamTags(self._tags.broad_tag(method))
            try:
                response = await inner(self._collecting(method, requests, seen), context)
            except BaseException:
                self._publish_later(seen.tags)
                raise
            if seen.tags:
                await self._publish(seen.tags)
            return response

        return behavior

    def _stream_stream(self, method: str, inner: Any) -> Any:
        async def behavior(requests: AsyncIterator[Message], context: Any) -> AsyncIterator[Any]:
            seen = _StreamTags(self._tags.broad_tag(method))
            try:
                async for item in _responses(
                    inner(self._collecting(method, requests, seen), context)
                ):
                    # This answer acknowledges writes: publish every resource the stream
                    # has named so far (a servicer may read ahead of its writes, so a tag
                    # is published again at each later answer, never only before its
                    # write landed).
                    if seen.tags:
                        seen.unread = False
                        await self._publish(seen.tags)
                    yield item
            except BaseException:
                self._publish_later(seen.tags)
                raise
            if seen.unread:
                await self._publish(seen.tags)

        return behavior


class _StreamTags:
    """The tags a client stream's messages named, at most ``_MAX_STREAM_TAGS``: past
    that, the method's broad tag (the list's, above every one of them) stands for all."""

    __slots__ = ("broad", "tags", "unread")

    def __init__(self, broad: str) -> None:
        self.broad = broad
        self.tags: set[str] = set()
        self.unread = False
        """Whether a message arrived after the last publication."""

    def add(self, tag: str) -> None:
        self.unread = True
        if self.broad in self.tags:
            return
        self.tags.add(tag)
        if len(self.tags) > _MAX_STREAM_TAGS:
            self.tags = {self.broad}


class _WrappedGenericHandler(grpc.GenericRpcHandler):
    def __init__(self, inner: Any, invalidation: WriteInvalidation) -> None:
        self._inner = inner
        self._invalidation = invalidation
        self._wrapped: dict[str, Any] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method: str = handler_call_details.method
        if method in self._wrapped:
            return self._wrapped[method]
        handler = self._invalidation.wrap(method, self._inner.service(handler_call_details))
        if handler is not None:
            self._wrapped[method] = handler
        return handler


class InvalidatingServer:
    """A server whose write handlers publish their invalidations; registration goes on
    to ``server`` (which adds its own edges around them: authentication runs first)."""

    def __init__(self, server: grpc.aio.Server, invalidation: WriteInvalidation) -> None:
        self._server = server
        self._invalidation = invalidation

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_WrappedGenericHandler(h, self._invalidation) for h in handlers)
        )

    def add_registered_method_handlers(self, service_name: str, handlers: Any) -> None:
        wrap = self._invalidation.wrap
        self._server.add_registered_method_handlers(
            service_name,
            {name: wrap(f"/{service_name}/{name}", h) for name, h in handlers.items()},
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


# Libraries choose their asyncio servicers by ``isinstance(server, grpc.aio.Server)``.
grpc.aio.Server.register(InvalidatingServer)


def _publisher_client(url: str, timeout: float) -> Redis:
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=_MAX_CONNECTIONS,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),  # one attempt: the publisher bounds it and logs
    )
    return Redis.from_pool(pool)


def publishes_invalidations(settings: Settings) -> bool:
    """Whether writes publish invalidations: only when Nexus caches answers in Redis."""
    cache = settings.nexus.cache
    return cache.backend == "redis" and bool(cache.rules)


def publish_writes(context: ServiceContext, service: str) -> WriteInvalidation | None:
    """Make the servicers ``context``'s setup registers from now on publish the
    invalidations of their writes (call it first in ``setup``). Does nothing unless
    Nexus caches answers in Redis (``nexus.cache``: backend ``redis`` with rules)."""
    settings = context.settings
    if not publishes_invalidations(settings):
        return None
    cache = settings.nexus.cache
    redis = _publisher_client(settings.engines.redis.url, cache.redis_timeout)
    context.cleanups.append(redis.aclose)
    publisher = InvalidationPublisher(
        redis,
        service=service,
        prefix=cache.key_prefix,
        channel=cache.channel,
        timeout=cache.redis_timeout,
    )
    invalidation = WriteInvalidation.for_cache(publisher, cache)
    context.server = cast(grpc.aio.Server, InvalidatingServer(context.server, invalidation))
    return invalidation


async def _responses(result: Any) -> AsyncIterator[Any]:
    """Server-streaming handlers may be async generators, plain generators or
    coroutines using ``context.write``; treat them alike."""
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    elif hasattr(result, "__iter__"):
        for item in result:
            yield item
    else:
        await result
