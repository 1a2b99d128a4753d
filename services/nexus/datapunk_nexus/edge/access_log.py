"""The REST edge's access log: one line per request, written off the request's path.

A line is kept until the loop would otherwise wait: right after the next request's
backend call has been sent (``flush_soon``), or after ``delay`` seconds, whichever comes
first, so writing it delays neither the answer it describes nor the next one. Each line
carries its request id itself (the context variable belongs to whichever request runs
when the lines are written)."""

from __future__ import annotations

import asyncio
from typing import Any

from datapunk_shared.logging import get_logger

__all__ = ["AccessLog"]

log = get_logger("datapunk.nexus.edge")


class AccessLog:
    """Pending access log lines of one edge (``flush`` writes them all)."""

    def __init__(self, *, delay: float = 0.002) -> None:
        self._delay = delay
        self._pending: list[dict[str, Any]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._soon = False

    def record(self, **fields: Any) -> None:
        """Keep one line (``request_id`` among its fields) to write shortly."""
        self._pending.append(fields)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._delay, self.flush)

    def flush_soon(self) -> None:
        """Write the pending lines once the loop has run what is ready now (a backend
        call just made is then on its way)."""
        if self._pending and not self._soon:
            self._soon = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write every pending line now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._soon = False
        pending, self._pending = self._pending, []
        for fields in pending:
            log.info("http", **fields)
