"""One long-lived channel to each service the entry forwards to."""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from datapunk_shared.config import Settings

__all__ = ["Backends", "backend_addresses"]

OWNERS = ("lake", "stream", "nexus")


def backend_addresses(settings: Settings) -> dict[str, str]:
    """``host:port`` of each owner: the entry's override, else the service's own settings."""
    overrides = settings.nexus.grpc_entry.backends
    addresses: dict[str, str] = {}
    for owner in OWNERS:
        own = getattr(settings, owner)
        addresses[owner] = overrides.get(owner) or f"{own.host}:{own.port}"  # type: ignore[call-overload]
    return addresses


class Backends:
    """Channels are opened lazily by gRPC (the first call connects) and reconnect by
    themselves; a backend that is down fails calls at once instead of queueing them."""

    def __init__(self, addresses: Mapping[str, str], *, max_message_bytes: int) -> None:
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.primary_user_agent", "datapunk-nexus-entry"),
            # Notice a backend that came back within a second or two, not minutes.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        self.addresses = dict(addresses)
        self._channels = {
            owner: grpc.aio.insecure_channel(address, options=options)
            for owner, address in self.addresses.items()
        }

    @property
    def owners(self) -> frozenset[str]:
        return frozenset(self._channels)

    def channel(self, owner: str) -> grpc.aio.Channel:
        return self._channels[owner]

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
