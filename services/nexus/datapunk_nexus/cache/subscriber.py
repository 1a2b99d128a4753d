"""Listens on the invalidation channel and drops matching entries of the local LRU.

The local LRU may only be used while this instance is subscribed: an invalidation
published while it is not would be missed. So the LRU is bypassed until the
subscription is confirmed, emptied at every (re)subscription, and bypassed again as soon
as the connection fails."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from datapunk_shared.logging import get_logger
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
        self._redis = redis
        self._channel = channel
        self._on_tags = on_tags
        self._on_subscribed = on_subscribed
        self._on_state = on_state
        self._retry_interval = retry_interval
        self.subscribed = False
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cache-invalidation-subscriber")

    async def wait_subscribed(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._set_unsubscribed()

    async def _run(self) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    while True:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is not None:
                            self._handle(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.subscribed:
                    log.warning("cache invalidations: subscription lost", error=repr(exc))
                self._set_unsubscribed()
            await asyncio.sleep(self._retry_interval)

    def _set_unsubscribed(self) -> None:
        self.subscribed = False
        self._ready.clear()
        self._on_state(False)

    def _handle(self, message: dict[str, object]) -> None:
        kind = message.get("type")
        if kind == "subscribe":
            # Also sent after the client reconnected on its own: whatever was published
            # meanwhile is lost, so start from an empty local LRU.
            self._on_subscribed()
            self.subscribed = True
            self._ready.set()
            self._on_state(True)
        elif kind == "message":
            data = message.get("data")
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
