"""The deadline of a forwarded call: the time the caller has left, or, when the caller set
none, the configured one for the method (by full method, then service), or for unary calls
the entry's default. Streams without a configured deadline get none: bulk loads may run
for as long as their client keeps them open."""

from __future__ import annotations

from collections.abc import Mapping

from datapunk_nexus.entry.routes import CallKind, Route

__all__ = ["DeadlinePolicy"]


class DeadlinePolicy:
    def __init__(self, default_unary: float | None, configured: Mapping[str, float]) -> None:
        self._default_unary = default_unary
        self._configured = dict(configured)

    def fallback(self, route: Route) -> float | None:
        """The timeout of a call of ``route`` whose caller set no deadline."""
        for key in (route.method, route.method.lstrip("/"), route.service):
            if key in self._configured:
                return self._configured[key]
        return self._default_unary if route.kind is CallKind.UNARY_UNARY else None

    @staticmethod
    def timeout(remaining: float | None, fallback: float | None) -> float | None:
        """The outgoing timeout: what the caller has left wins over any fallback."""
        return remaining if remaining is not None else fallback
