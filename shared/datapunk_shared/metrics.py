"""Prometheus metrics every service exports: RPC count, latency and errors by code,
plus engine reachability. Served over HTTP on the service's ``metrics_port``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

__all__ = [
    "ENGINE_ROUND_TRIP",
    "ENGINE_UP",
    "RPC_IN_FLIGHT",
    "RPC_LATENCY",
    "RPC_TOTAL",
    "start_metrics_server",
]

RPC_TOTAL = Counter(
    "datapunk_rpc_total",
    "RPCs handled, by service, method and final status code (errors are code != OK).",
    ["service", "method", "code"],
)
RPC_LATENCY = Histogram(
    "datapunk_rpc_duration_seconds",
    "Time from receiving an RPC to its final status.",
    ["service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RPC_IN_FLIGHT = Gauge("datapunk_rpc_in_flight", "RPCs being handled now.", ["service"])
ENGINE_UP = Gauge(
    "datapunk_engine_up", "1 when the last probe of the engine succeeded.", ["service", "engine"]
)
ENGINE_ROUND_TRIP = Gauge(
    "datapunk_engine_round_trip_seconds",
    "Round-trip time of the last successful probe.",
    ["service", "engine"],
)


def start_metrics_server(host: str, port: int) -> None:
    """Serve /metrics; raises OSError when the port is taken."""
    start_http_server(port, addr=host)
