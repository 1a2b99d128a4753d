"""Where Nexus's two entries (the REST edge and the gRPC entry) send calls: one address
per owning service and one long-lived channel to each, shared by both entries so they
agree on where a method goes and how the channel behaves."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from datapunk_shared.config import ServiceSettings, Settings

__all__ = ["OWNERS", "Backends", "backend_addresses"]

OWNERS = ("lake", "stream", "nexus")


def _dialable(own: ServiceSettings) -> str:
    """A service's own address as a client dials it (a wildcard bind is dialled locally)."""
    host = own.host
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    return f"{host}:{own.port}"


def backend_addresses(settings: Settings) -> dict[str, str]:
    """``host:port`` of each owner: ``[nexus] backends`` when it names one (a sidecar in
    front of it, another host), else the service's own configured address."""
    overrides = settings.nexus.backends
    return {owner: overrides.get(owner) or _dialable(getattr(settings, owner)) for owner in OWNERS}  # type: ignore[call-overload]


class Backends:
    """One ``grpc.aio`` channel per owner. gRPC connects on the first call and reconnects
    by itself; a backend that is down fails calls at once instead of queueing them."""

    def __init__(self, addresses: Mapping[str, str], *, max_message_bytes: int) -> None:
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.primary_user_agent", "datapunk-nexus"),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.http2.max_pings_without_data", 0),
            # Notice a backend that came back within a second or two, not minutes.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        self.addresses = dict(addresses)
        self._channels = {
            owner: grpc.aio.insecure_channel(address, options=options)
            for owner, address in self.addresses.items()
        }
        self._callables: dict[tuple[str, str], Any] = {}

    @property
    def owners(self) -> frozenset[str]:
        return frozenset(self._channels)

    def channel(self, owner: str) -> grpc.aio.Channel:
        return self._channels[owner]

    def callable(self, owner: str, method: str, kind: str) -> Any:
        """The generic multi-callable for ``method`` of ``kind`` (``unary_unary``,
        ``unary_stream``, ``stream_unary``, ``stream_stream``) on bytes: no serializers,
        the entries pass serialized messages through untouched."""
        key = (owner, method)
        found = self._callables.get(key)
        if found is None:
            found = self._callables[key] = getattr(self._channels[owner], kind)(method)
        return found

    async def close(self) -> None:
        self._callables.clear()
        for channel in self._channels.values():
            await channel.close()
