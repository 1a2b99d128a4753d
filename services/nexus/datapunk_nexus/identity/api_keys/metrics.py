"""Prometheus metrics of API-key authentication: a rising count of refusals is how a
guessing attempt shows up on the dashboard (the edge's rate limits slow it down)."""

from __future__ import annotations

from prometheus_client import Counter

__all__ = ["API_KEY_AUTHENTICATIONS"]

API_KEY_AUTHENTICATIONS = Counter(
    "datapunk_api_key_authentications_total",
    "API keys presented, by outcome: ok, or the refusal reason (INVALID_API_KEY, "
    "API_KEY_REVOKED, API_KEY_EXPIRED).",
    ["outcome"],
)
