"""Listens on the invalidation channel and drops matching entries of the local LRU.

The local LRU may only be used while this instance is subscribed: an invalidation
published while it is not would be missed. So the LRU is bypassed until the
subscription is confirmed, emptied at every (re)subscription, and bypassed again as soon
as the connection fails."""

from __future__ import annotations

import json
from collections.abc import Callable

from datapunk_shared.logging import get_logger
from datapunk_shared.pubsub import ChannelListener
from redis.asyncio import Redis

__all__ = ["InvalidationSubscriber"]

log = get_logger("datapunk.nexus.cache")


class InvalidationSubscriber:
    def __init__(
        self,
        redis: Redis,
        channel: str,
        *,
        on_tags: Callable[[list[str]], None],
        on_subscribed: Callable[[], None],
        on_state: Callable[[bool], None],
        retry_interval: float = 1.0,
    ) -> None:
        self._on_tags = on_tags
        self._on_subscribed = on_subscribed
        self._on_state = on_state
        self._listener = ChannelListener(
            redis,
            channel,
            on_message=self._handle,
            on_subscribed=self._subscribed,
            on_lost=self._lost,
            retry_initial=retry_interval,
            retry_max=retry_interval,
            name="cache-invalidation-subscriber",
        )

    @property
    def subscribed(self) -> bool:
        return self._listener.subscribed

    def start(self) -> None:
        self._listener.start()

    async def wait_subscribed(self, timeout: float) -> bool:
        return await self._listener.wait_subscribed(timeout)

    async def stop(self) -> None:
        await self._listener.stop()

    def _subscribed(self) -> None:
        # Also after the client reconnected on its own: whatever was published meanwhile
        # is lost, so start from an empty local LRU.
        self._on_subscribed()
        self._on_state(True)

    def _lost(self, error: Exception | None, was_subscribed: bool) -> None:
        if error is not None and was_subscribed:
            log.warning("cache invalidations: subscription lost", error=repr(error))
        self._on_state(False)

    def _handle(self, data: object) -> None:
        try:
            tags = json.loads(data)["tags"] if isinstance(data, bytes | str) else None
        except (ValueError, KeyError, TypeError):
            tags = None
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            # Unknown scope: drop everything rather than risk a stale answer.
            log.warning("cache invalidations: malformed message; local cache emptied")
            self._on_subscribed()
            return
        self._on_tags(tags)
