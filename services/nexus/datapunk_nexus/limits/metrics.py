"""Prometheus metrics of the rate limits and load shedding."""

from __future__ import annotations

from prometheus_client import Counter

__all__ = ["RATE_LIMIT_DECISIONS"]

RATE_LIMIT_DECISIONS = Counter(
    "datapunk_rate_limit_decisions_total",
    "Admission decisions of Nexus's request gate, by outcome: allowed, limited (over a "
    "rate limit), shed (over a concurrency bound), redis_error_open / redis_error_closed / "
    "redis_error_local (Redis could not decide; see rate_limits.on_redis_error). "
    "``rule`` names the limit that refused the call.",
    ["outcome", "rule"],
)
