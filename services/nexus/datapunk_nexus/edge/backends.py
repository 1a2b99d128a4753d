"""Channels to the services that own the routes, and cached generic callables that pass
serialized messages through untouched (no serializer: the edge encodes once)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc

__all__ = ["Backends"]

_OPTIONS_BASE: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
]


class Backends:
    """One ``grpc.aio`` channel per owner (``lake``, ``stream``, ``nexus``); created on
    first use, closed by ``close``."""

    def __init__(self, addresses: Mapping[str, str], *, max_message_bytes: int) -> None:
        self.addresses = dict(addresses)
        self._options = [
            *_OPTIONS_BASE,
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._callables: dict[tuple[str, str], Any] = {}

    def _channel(self, owner: str) -> grpc.aio.Channel:
        channel = self._channels.get(owner)
        if channel is None:
            channel = grpc.aio.insecure_channel(self.addresses[owner], options=self._options)
            self._channels[owner] = channel
        return channel

    def callable(self, owner: str, method: str, kind: str) -> Any:
        """The generic multi-callable for ``method`` of ``kind`` (``unary_unary``,
        ``unary_stream``, ``stream_unary``, ``stream_stream``) on bytes."""
        key = (owner, method)
        found = self._callables.get(key)
        if found is None:
            factory = getattr(self._channel(owner), kind)
            found = self._callables[key] = factory(method)
        return found

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        self._callables.clear()
        for channel in channels.values():
            await channel.close()
