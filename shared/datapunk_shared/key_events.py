"""Signing-key changes, announced to every token verifier through Redis pub/sub.

Services verify Nexus's tokens with keys fetched from its JWKS and kept for at least
``auth.jwks.min_ttl``, and remember a verified token's identity until shortly before it
expires (``datapunk_shared.auth``). Without more, a signing key an operator deletes or
retires early would keep its tokens working at a service port until those caches ran
out. So Nexus announces every change of its key ring, right after committing it, on
``auth.key_events_channel`` (``KeyEventPublisher``), and every service listens
(``KeyEventSubscriber``): it drops the removed keys and everything it remembered, and
fetches the key set again at once.

Message on the channel: JSON ``{"issuer": "<iss>", "change": "deleted", "removed":
["<kid>", ...]}``. A message only ever makes a verifier trust less (drop keys it names,
forget identities) and fetch the keys again from the configured issuer URL; nothing in
it is trusted beyond that. Forced fetches are coalesced and spaced at least
``min_interval`` apart, so a flood of messages cannot make a service hammer Nexus.

While Redis is unreachable nothing is announced or heard: the caches' lifetimes bound
how long a removed key's tokens still pass, as they would without this module. The
subscriber logs the outage, retries with a growing delay and, once subscribed again,
refreshes as if told about a change (what was published meanwhile is lost)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from prometheus_client import Counter, Gauge
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from datapunk_shared.auth.keys import KID_PATTERN
from datapunk_shared.config import Settings
from datapunk_shared.logging import get_logger
from datapunk_shared.pubsub import ChannelListener

__all__ = [
    "KEY_EVENTS_PUBLISHED",
    "KEY_EVENTS_SUBSCRIBED",
    "KeyChange",
    "KeyChangeHandler",
    "KeyEventPublisher",
    "KeyEventSubscriber",
    "key_event_publisher",
    "key_event_subscriber",
]

log = get_logger("datapunk.auth.key_events")

PUBLISH_TIMEOUT = 1.0
"""The longest a key change waits for its announcement (it is committed either way)."""

_MAX_MESSAGE_BYTES = 16 * 1024
_MAX_KIDS = 256
_MAX_PENDING_ISSUERS = 16

KEY_EVENTS_PUBLISHED = Counter(
    "datapunk_signing_key_events_published_total",
    "Signing-key changes Nexus announced to the services, by outcome: published (ok) or "
    "not (failed: Redis unreachable or slow; the services' key caches then bound how long "
    "a removed key's tokens still pass).",
    ["outcome"],
)
KEY_EVENTS_SUBSCRIBED = Gauge(
    "datapunk_signing_key_events_subscribed",
    "1 while this process listens for signing-key changes, 0 while Redis is unreachable.",
)


@dataclass(frozen=True, slots=True)
class KeyChange:
    """One change of an issuer's signing keys: ``removed`` are the key ids whose tokens
    must stop verifying now (empty for a rotation, which only adds a key)."""

    issuer: str
    change: str
    removed: tuple[str, ...] = ()

    def encode(self) -> str:
        return json.dumps(
            {"issuer": self.issuer, "change": self.change, "removed": list(self.removed)},
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, data: str | bytes) -> KeyChange:
        """The change a channel message describes; ``ValueError`` when it is not one."""
        if len(data) > _MAX_MESSAGE_BYTES:
            raise ValueError("the message is too large")
        document = json.loads(data)
        if not isinstance(document, dict):
            raise ValueError("not an object")
        issuer, change, removed = (document.get(k) for k in ("issuer", "change", "removed"))
        if not isinstance(issuer, str) or not issuer or not isinstance(change, str):
            raise ValueError("issuer and change must be strings")
        if (
            not isinstance(removed, list)
            or len(removed) > _MAX_KIDS
            or not all(isinstance(k, str) and KID_PATTERN.fullmatch(k) for k in removed)
        ):
            raise ValueError("removed must be a list of key ids")
        return cls(issuer=issuer, change=change[:32], removed=tuple(removed))


KeyChangeHandler = Callable[[str | None, frozenset[str]], Awaitable[None]]
"""``await handler(issuer, removed)``: drop the ``removed`` key ids of ``issuer`` (None:
every issuer, nothing known about what changed), forget remembered identities and fetch
the keys again (``CallerAuthenticator.keys_changed``)."""


def _publisher_client(url: str, timeout: float) -> Redis:
    return Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),  # one attempt: the publisher bounds it and logs
    )


class KeyEventPublisher:
    """Announces ``issuer``'s key changes on ``channel``; never raises."""

    def __init__(
        self, redis: Redis, channel: str, *, issuer: str, timeout: float = PUBLISH_TIMEOUT
    ) -> None:
        self._redis = redis
        self._channel = channel
        self._issuer = issuer
        self._timeout = timeout

    async def publish(self, change: str, removed: Collection[str] = ()) -> bool:
        """Announce one committed change; False when it could not be published."""
        message = KeyChange(self._issuer, change, tuple(removed))
        try:
            async with asyncio.timeout(self._timeout):
                listeners = await self._redis.publish(self._channel, message.encode())
        except Exception as exc:
            KEY_EVENTS_PUBLISHED.labels("failed").inc()
            log.error(
                "signing key change not announced; services refuse the removed keys' "
                "tokens only when their key caches expire",
                change=change,
                kids=sorted(removed),
                error=repr(exc),
            )
            return False
        KEY_EVENTS_PUBLISHED.labels("ok").inc()
        log.info(
            "signing key change announced", change=change, kids=sorted(removed), listeners=listeners
        )
        return True

    async def aclose(self) -> None:
        await self._redis.aclose()


def key_event_publisher(settings: Settings, issuer: str) -> KeyEventPublisher | None:
    """Nexus's publisher of ``auth.key_events_channel`` on ``[engines.redis]``; None when
    the channel is unset (key changes then reach the services through their caches)."""
    channel = settings.auth.key_events_channel
    if not channel:
        return None
    redis = _publisher_client(settings.engines.redis.url, PUBLISH_TIMEOUT)
    return KeyEventPublisher(redis, channel, issuer=issuer)


class KeyEventSubscriber:
    """Listens on ``channel`` (a ``ChannelListener``) and calls ``on_change`` for what it
    hears, in a background task between ``start()`` and ``stop()``, never failing the
    process.

    Messages heard while a change is being applied are merged into the next call, and
    calls are at least ``min_interval`` seconds apart (nothing is dropped: a message
    waits at most that long). Every (re)subscription counts as a change of unknown
    content, since messages published while not subscribed are lost."""

    def __init__(
        self,
        redis: Redis,
        channel: str,
        on_change: KeyChangeHandler,
        *,
        min_interval: float = 0.5,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        owns_redis: bool = True,
    ) -> None:
        self._redis = redis
        self._channel = channel
        self._on_change = on_change
        self._min_interval = min_interval
        self._owns_redis = owns_redis
        self._listener = ChannelListener(
            redis,
            channel,
            on_message=self.heard,
            on_subscribed=self._subscribed,
            on_lost=self._lost,
            retry_initial=retry_initial,
            retry_max=retry_max,
            name="signing-key-events-listener",
        )
        self._outage = False
        # issuer -> removed kids; the issuer None means "every issuer, unknown change".
        self._pending: dict[str | None, set[str]] = {}
        self._wake = asyncio.Event()
        self._applier: asyncio.Task[None] | None = None

    @property
    def subscribed(self) -> bool:
        return self._listener.subscribed

    def start(self) -> None:
        if self._applier is None:
            self._applier = asyncio.create_task(self._apply(), name="signing-key-events-applier")
            self._listener.start()

    async def wait_subscribed(self, timeout: float) -> bool:
        return await self._listener.wait_subscribed(timeout)

    async def stop(self) -> None:
        await self._listener.stop()
        if self._applier is not None:
            self._applier.cancel()
            await asyncio.gather(self._applier, return_exceptions=True)
            self._applier = None
        if self._owns_redis:
            with contextlib.suppress(Exception):
                await self._redis.aclose()

    # -- hearing -------------------------------------------------------------------------

    def _subscribed(self) -> None:
        # Changes published while not subscribed are lost: refresh as if told about one.
        self._outage = False
        self._queue(None, ())
        KEY_EVENTS_SUBSCRIBED.set(1)
        log.info("listening for signing key changes", channel=self._channel)

    def _lost(self, error: Exception | None, was_subscribed: bool) -> None:
        KEY_EVENTS_SUBSCRIBED.set(0)
        if error is not None and not self._outage:
            log.warning(
                "signing key changes not heard (Redis unreachable); a removed "
                "key's tokens pass until the key cache expires; retrying",
                channel=self._channel,
                error=repr(error),
            )
            self._outage = True

    def heard(self, data: object) -> None:
        """Take one message's data: a change, or anything else (every issuer refreshed)."""
        try:
            if not isinstance(data, str | bytes):
                raise ValueError("not a text message")
            change = KeyChange.decode(data)
        except (ValueError, RecursionError):
            log.warning("malformed signing key change message; refreshing every issuer")
            self._queue(None, ())
            return
        log.info("signing key change heard", change=change.change, kids=list(change.removed))
        self._queue(change.issuer, change.removed)

    def _queue(self, issuer: str | None, removed: Collection[str]) -> None:
        pending = self._pending
        if issuer not in pending and len(pending) >= _MAX_PENDING_ISSUERS:
            issuer, removed = None, ()  # bounded: an unknown change stands for them all
        kids = pending.setdefault(issuer, set())
        kids.update(removed)
        if len(kids) > _MAX_KIDS:
            del pending[issuer]
            pending.setdefault(None, set())
        self._wake.set()

    # -- applying ------------------------------------------------------------------------

    async def _apply(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, {}
            for issuer, removed in pending.items():
                try:
                    await self._on_change(issuer, frozenset(removed))
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("applying a signing key change failed")
            await asyncio.sleep(self._min_interval)


def key_event_subscriber(
    settings: Settings, on_change: KeyChangeHandler
) -> KeyEventSubscriber | None:
    """The subscriber of ``auth.key_events_channel`` on ``[engines.redis]`` calling
    ``on_change``; None when the channel is unset. Start it with ``start()``."""
    channel = settings.auth.key_events_channel
    if not channel:
        return None
    redis = Redis.from_url(
        settings.engines.redis.url,
        socket_connect_timeout=2.0,
        socket_keepalive=True,
        health_check_interval=15,  # a silently dead connection is noticed by a PING
        retry=Retry(NoBackoff(), 0),  # reconnections are the subscriber's, with backoff
    )
    return KeyEventSubscriber(redis, channel, on_change)
