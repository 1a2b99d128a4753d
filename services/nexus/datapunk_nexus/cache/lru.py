"""The local cache layer: an LRU bounded by entry count and by bytes, with expiry and an
index from tags to keys so that an invalidation drops exactly the matching entries.

Hand-written (on ``OrderedDict``) rather than cachetools: cachetools' LRU bounds one
measure only (count or size, not both) and has no tag index, which is most of this."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from datapunk_nexus.cache.tags import ancestors

__all__ = ["LocalLru"]

_ENTRY_OVERHEAD = 200
"""Rough bytes per entry beyond the payload (key, tuple, dict slots), for the bound."""


@dataclass(slots=True)
class _Entry:
    tag: str
    value: bytes
    expires: float

    @property
    def size(self) -> int:
        return len(self.value) + _ENTRY_OVERHEAD


class LocalLru:
    def __init__(self, *, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._by_tag: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= time.monotonic():
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry.value

    def put(self, key: str, tag: str, value: bytes, ttl: float) -> None:
        if key in self._entries:
            self._remove(key)
        entry = _Entry(tag, value, time.monotonic() + ttl)
        if entry.size > self.max_bytes:
            return
        self._entries[key] = entry
        self._by_tag.setdefault(tag, set()).add(key)
        self.bytes += entry.size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._remove(next(iter(self._entries)))

    def invalidate(self, tag: str) -> int:
        """Drop the entries tagged ``tag``, below it or above it; returns how many."""
        keys: set[str] = set()
        for exact in (tag, *ancestors(tag)):
            keys |= self._by_tag.get(exact, set())
        below = tag + "/"
        for entry_tag, tagged in self._by_tag.items():
            if entry_tag.startswith(below):
                keys |= tagged
        for key in keys:
            self._remove(key)
        return len(keys)

    def clear(self) -> None:
        self._entries.clear()
        self._by_tag.clear()
        self.bytes = 0

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.size
        tagged = self._by_tag[entry.tag]
        tagged.discard(key)
        if not tagged:
            del self._by_tag[entry.tag]
