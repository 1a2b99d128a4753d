"""Prometheus metrics every service exports: RPC count, latency and errors by code,
plus engine reachability. Served over HTTP on the service's ``metrics_port``.

The RPC metrics are recorded on every call, so they are plain numbers a collector turns
into Prometheus samples when ``/metrics`` is scraped, instead of ``prometheus_client``
children (each of which takes a lock per update): a call adds to a few integers."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import REGISTRY, Gauge, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = [
    "ENGINE_ROUND_TRIP",
    "ENGINE_UP",
    "LATENCY_BUCKETS",
    "MethodStats",
    "ServiceStats",
    "rpc_stats",
    "start_metrics_server",
]

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    float("inf"),
)
"""Upper bounds (seconds) of ``datapunk_rpc_duration_seconds``."""
_BUCKET_LABELS = [floatToGoString(bound) for bound in LATENCY_BUCKETS]  # type: ignore[no-untyped-call]

ENGINE_UP = Gauge(
    "datapunk_engine_up", "1 when the last probe of the engine succeeded.", ["service", "engine"]
)
ENGINE_ROUND_TRIP = Gauge(
    "datapunk_engine_round_trip_seconds",
    "Round-trip time of the last successful probe.",
    ["service", "engine"],
)


class MethodStats:
    """One method's calls: how many ended with each code, and their latency histogram."""

    __slots__ = ("buckets", "codes", "seconds")

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.buckets = [0] * len(LATENCY_BUCKETS)
        """Calls per latency bucket, not cumulative (the collector adds them up)."""
        self.seconds = 0.0

    def record(self, code: str, elapsed: float) -> None:
        """One finished call (recorded on the event loop's thread, no lock needed)."""
        codes = self.codes
        codes[code] = codes.get(code, 0) + 1
        self.buckets[bisect_left(LATENCY_BUCKETS, elapsed)] += 1
        self.seconds += elapsed


class ServiceStats:
    """A service's RPC metrics: calls in flight and ``MethodStats`` per method."""

    __slots__ = ("in_flight", "methods", "service")

    def __init__(self, service: str) -> None:
        self.service = service
        self.in_flight = 0
        self.methods: dict[str, MethodStats] = {}

    def method(self, method: str) -> MethodStats:
        stats = self.methods.get(method)
        if stats is None:
            stats = self.methods[method] = MethodStats()
        return stats


_SERVICES: dict[str, ServiceStats] = {}


def rpc_stats(service: str) -> ServiceStats:
    """The RPC metrics of ``service`` (one object per service name in the process)."""
    stats = _SERVICES.get(service)
    if stats is None:
        stats = _SERVICES[service] = ServiceStats(service)
    return stats


class _RpcCollector(Collector):
    """Exports every ``ServiceStats`` as ``datapunk_rpc_total`` (by service, method and
    final status code; errors are code != OK), ``datapunk_rpc_duration_seconds`` and
    ``datapunk_rpc_in_flight``."""

    def collect(self) -> Iterator[Metric]:
        total = CounterMetricFamily(
            "datapunk_rpc",
            "RPCs handled, by service, method and final status code (errors are code != OK).",
            labels=["service", "method", "code"],
        )
        latency = HistogramMetricFamily(
            "datapunk_rpc_duration_seconds",
            "Time from receiving an RPC to its final status.",
            labels=["service", "method"],
        )
        in_flight = GaugeMetricFamily(
            "datapunk_rpc_in_flight", "RPCs being handled now.", labels=["service"]
        )
        # Copies first: the event loop may add a method or a code while this runs.
        for service, stats in list(_SERVICES.items()):
            in_flight.add_metric([service], stats.in_flight)
            for method, calls in list(stats.methods.items()):
                for code, count in list(calls.codes.items()):
                    total.add_metric([service, method, code], count)
                counts, running, buckets = list(calls.buckets), 0, []
                for label, count in zip(_BUCKET_LABELS, counts, strict=True):
                    running += count
                    buckets.append((label, running))
                latency.add_metric([service, method], buckets, calls.seconds)
        yield total
        yield latency
        yield in_flight


REGISTRY.register(_RpcCollector())


def start_metrics_server(host: str, port: int) -> None:
    """Serve /metrics; raises OSError when the port is taken."""
    start_http_server(port, addr=host)
