"""Listening on one Redis pub/sub channel for as long as a process runs.

A background task subscribes, hands every message's data to its owner, and when the
connection fails tells its owner, waits and subscribes again, never failing the process.
Owners learn of every (re)subscription (``on_subscribed``): whatever was published while
they were not subscribed is lost, so each owner decides what to assume then (the cache
empties its local layer, token verifiers refetch their keys)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from redis.asyncio import Redis

__all__ = ["ChannelListener"]


class ChannelListener:
    """Subscribes ``redis`` to ``channel`` between ``start()`` and ``stop()``.

    ``on_message(data)`` gets each message's data; ``on_subscribed()`` runs at each
    confirmed (re)subscription; ``on_lost(error, was_subscribed)`` runs when the
    connection fails (``error``) or the listener stops (None). Retries start after
    ``retry_initial`` seconds and double up to ``retry_max``; a subscription resets them."""

    def __init__(
        self,
        redis: Redis,
        channel: str,
        *,
        on_message: Callable[[object], None],
        on_subscribed: Callable[[], None],
        on_lost: Callable[[Exception | None, bool], None],
        retry_initial: float = 1.0,
        retry_max: float = 1.0,
        name: str = "pubsub-listener",
    ) -> None:
        self._redis = redis
        self._channel = channel
        self._on_message = on_message
        self._on_subscribed = on_subscribed
        self._on_lost = on_lost
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._name = name
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def subscribed(self) -> bool:
        return self._ready.is_set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._name)

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
        self._lost(None)

    def _lost(self, error: Exception | None) -> None:
        was_subscribed = self._ready.is_set()
        self._ready.clear()
        self._on_lost(error, was_subscribed)

    async def _run(self) -> None:
        delay = self._retry_initial
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    while True:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is None:
                            continue
                        kind = message.get("type")
                        if kind == "subscribe":
                            # Also after redis-py reconnected on its own.
                            delay = self._retry_initial
                            self._on_subscribed()
                            self._ready.set()
                        elif kind == "message":
                            self._on_message(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._lost(exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max)
