"""Prometheus metrics of the response cache. The hit ratio is
``sum(datapunk_cache_hits_total) / (sum(datapunk_cache_hits_total) +
datapunk_cache_misses_total)``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = [
    "CACHE_BYTES",
    "CACHE_ENTRIES",
    "CACHE_ERRORS",
    "CACHE_HITS",
    "CACHE_INVALIDATIONS",
    "CACHE_MISSES",
]

CACHE_HITS = Counter(
    "datapunk_cache_hits_total",
    "Cacheable reads answered from the cache, by layer (local LRU or shared Redis).",
    ["layer"],
)
CACHE_MISSES = Counter("datapunk_cache_misses_total", "Cacheable reads the cache could not answer.")
CACHE_ENTRIES = Gauge("datapunk_cache_entries", "Entries in this instance's local LRU.")
CACHE_BYTES = Gauge(
    "datapunk_cache_bytes", "Bytes held by this instance's local LRU (payloads plus overhead)."
)
CACHE_INVALIDATIONS = Counter(
    "datapunk_cache_invalidations_total",
    "Resource tags invalidated, by source: a write through this instance (write), the "
    "InvalidateCache RPC (rpc) or a message from the invalidation channel (channel).",
    ["source"],
)
CACHE_ERRORS = Counter(
    "datapunk_cache_errors_total",
    "Failed operations on the shared (Redis) layer; a failed read counts as a miss.",
    ["operation"],
)
