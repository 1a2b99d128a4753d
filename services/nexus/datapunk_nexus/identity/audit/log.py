"""``AuditLog.record``: the edges' way into the trail, failing closed and cheap under load.

Records are committed in batches by one writer task (group commit): a record that
arrives while a batch is committing waits for the next batch, so a busy edge pays one
transaction for many calls while a lone call pays one transaction for itself.

A batch also waits up to ``linger`` for more records before it is written — so that
concurrent calls share fewer, larger commits — but only when that pays: the last batch
held at least ``linger_after_batch`` records (calls arrive together; a lone caller never
waits for company) and the process is busy: lately it used at least
``linger_when_busy`` of a core (its ``process_time`` over wall time, in windows of 50 ms
or more). Each commit costs the process a few hundred microseconds of CPU whatever its
size; when CPU is short, fewer commits mean more calls served and shorter queues, while
an idle process would only add the wait to every call.

Each caller waits for its own record's commit; a record not committed within
``write_timeout`` — PostgreSQL down, hung or refusing — makes ``record`` raise
``Unavailable`` (reason AUDIT_UNAVAILABLE), and the caller refuses its request. After a
failed batch, records are refused at once for ``retry_interval`` rather than each waiting
the full timeout.

A record whose caller gave up (timed out or was cancelled) before its batch was taken is
dropped; one whose batch was already being written may still be committed: the trail
then holds a record of a call that was refused, never a call without a record."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from datapunk_shared.config import AuditSettings
from datapunk_shared.errors import Unavailable
from datapunk_shared.logging import get_logger

from datapunk_nexus.identity.audit.events import AuditEvent, clean_event
from datapunk_nexus.identity.audit.store import audit_unavailable

__all__ = ["AuditLog", "BatchWriter"]

log = get_logger("datapunk.nexus.audit")


class BatchWriter(Protocol):
    """What commits a batch (``ChainWriter``): all of it, or raises."""

    async def append(self, events: Sequence[AuditEvent]) -> object: ...


@dataclass(slots=True)
class _Pending:
    event: AuditEvent
    done: asyncio.Future[None]
    deadline: float
    """When its caller is told the record was not committed in time (loop time)."""
    abandoned: bool = False


class AuditLog:
    """Writes audit records through a ``ChainWriter``; see the module's description."""

    def __init__(
        self,
        writer: BatchWriter,
        *,
        write_timeout: float = 2.0,
        retry_interval: float = 1.0,
        max_batch: int = 500,
        linger: float = 0.0,
        linger_after_batch: int = 1,
        linger_when_busy: float = 0.0,
        max_pending: int = 20_000,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.process_time,
    ) -> None:
        self.writer = writer
        self._write_timeout = write_timeout
        self._retry_interval = retry_interval
        self._max_batch = max_batch
        self._linger = linger
        self._linger_after_batch = linger_after_batch
        self._last_batch = 0
        self._busy = _BusyMeter(clock, cpu_clock) if linger_when_busy > 0 else None
        self._linger_when_busy = linger_when_busy
        self._max_pending = max_pending
        self._clock = clock
        self._queue: collections.deque[_Pending] = collections.deque()
        # Every record whose caller may still be waiting, oldest first: all share one
        # timeout, so the oldest has the earliest deadline and one timer watches them all.
        self._waiting: collections.deque[_Pending] = collections.deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._down_until = 0.0
        self._closed = False
        self.batches = 0
        """Transactions committed so far (for tests and benchmarks)."""

    @classmethod
    def from_settings(cls, writer: BatchWriter, settings: AuditSettings) -> AuditLog:
        return cls(
            writer,
            write_timeout=settings.write_timeout,
            retry_interval=settings.retry_interval,
            max_batch=settings.max_batch,
            linger=settings.linger,
            linger_after_batch=settings.linger_after_batch,
            linger_when_busy=settings.linger_when_busy,
            max_pending=settings.max_pending,
        )

    async def record(self, event: AuditEvent) -> None:
        """Write ``event`` and return once it is committed; ``Unavailable`` (reason
        AUDIT_UNAVAILABLE) when that cannot happen within ``write_timeout``."""
        if self._closed:
            raise audit_unavailable("the audit trail is shutting down")
        wait = self._down_until - self._clock()
        if wait > 0:
            raise audit_unavailable(
                "the audit trail could not be written a moment ago; retry later",
                retry_after=wait,
            )
        if len(self._queue) >= self._max_pending:
            raise audit_unavailable("too many audit records are waiting to be written")
        loop = asyncio.get_running_loop()
        pending = _Pending(
            clean_event(event), loop.create_future(), loop.time() + self._write_timeout
        )
        self._queue.append(pending)
        self._watch(pending, loop)
        self._wake.set()
        if self._writer is None:
            self._writer = loop.create_task(self._write_batches(), name="audit-writer")
        # The caller waits on its record's own future (a cancelled caller cancels only
        # that, never the batch); the watchdog fails it at its deadline.
        try:
            await pending.done
        except asyncio.CancelledError:
            pending.abandoned = True
            raise

    def _watch(self, pending: _Pending, loop: asyncio.AbstractEventLoop) -> None:
        """Put ``pending`` under the watchdog: one timer for all waiting records instead
        of one per record (a timer per call, and the loop's heap of them, cost more than
        the rest of ``record``)."""
        waiting = self._waiting
        while waiting and waiting[0].done.done():  # answered, mostly in order
            waiting.popleft()
        waiting.append(pending)
        if self._watchdog is None:
            self._watchdog = loop.call_at(pending.deadline, self._expire_overdue, loop)

    def _expire_overdue(self, loop: asyncio.AbstractEventLoop) -> None:
        """Tell every caller whose record is past its deadline that it was not committed
        in time (its batch may still commit it; see the module's description), then
        watch the oldest of the rest."""
        self._watchdog = None
        waiting = self._waiting
        now = loop.time()
        while waiting and (waiting[0].done.done() or waiting[0].deadline <= now):
            pending = waiting.popleft()
            if not pending.done.done():
                pending.abandoned = True
                pending.done.set_exception(
                    audit_unavailable(
                        f"the audit record was not committed within {self._write_timeout:g}s"
                    )
                )
        if waiting:
            self._watchdog = loop.call_at(waiting[0].deadline, self._expire_overdue, loop)

    async def close(self) -> None:
        """Write what is waiting, then stop the writer."""
        self._closed = True
        self._wake.set()
        if self._writer is not None:
            await self._writer
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        while self._queue and len(batch) < self._max_batch:
            pending = self._queue.popleft()
            if pending.abandoned:
                pending.done.cancel()
            else:
                batch.append(pending)
        return batch

    async def _write_batches(self) -> None:
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._should_linger():
                await asyncio.sleep(self._linger)
            batch = self._take_batch()
            if batch:
                self._last_batch = len(batch)
                await self._write(batch)

    def _should_linger(self) -> bool:
        if not self._linger or self._closed or len(self._queue) >= self._max_batch:
            return False
        if self._linger_after_batch > 1 and self._last_batch < self._linger_after_batch:
            return False
        return self._busy is None or self._busy.share() >= self._linger_when_busy

    async def _write(self, batch: list[_Pending]) -> None:
        try:
            async with asyncio.timeout(self._write_timeout):
                await self.writer.append([pending.event for pending in batch])
        except Exception as exc:  # every failure fails closed
            self._fail(batch, exc)
            return
        self.batches += 1
        for pending in batch:
            _settle(pending, None)

    def _fail(self, batch: list[_Pending], exc: Exception) -> None:
        # Driver messages may quote the data; log the error's class only.
        log.error("audit records not written", records=len(batch), error=type(exc).__name__)
        if self._retry_interval > 0:
            self._down_until = self._clock() + self._retry_interval
        # What is queued behind the batch would meet the same engine: refuse it too.
        failed = list(batch)
        while self._retry_interval > 0 and self._queue:
            failed.extend(self._take_batch())
        for pending in failed:
            _settle(pending, _unavailable_after(exc))


class _BusyMeter:
    """The share of a core the process used lately: CPU time over wall time, measured
    over windows of at least ``window`` seconds (shorter ones would be all noise) and
    smoothed over the last few of them."""

    def __init__(
        self,
        clock: Callable[[], float],
        cpu_clock: Callable[[], float],
        window: float = 0.05,
        weight: float = 0.5,
    ) -> None:
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._window = window
        self._weight = weight
        self._since = clock()
        self._cpu_since = cpu_clock()
        self._share: float | None = None

    def share(self) -> float:
        now = self._clock()
        elapsed = now - self._since
        if elapsed >= self._window:
            cpu = self._cpu_clock()
            latest = (cpu - self._cpu_since) / elapsed
            previous = latest if self._share is None else self._share
            self._share = previous + (latest - previous) * self._weight
            self._since, self._cpu_since = now, cpu
        return self._share or 0.0


def _settle(pending: _Pending, error: Unavailable | None) -> None:
    """Tell the caller how its record fared; a caller that is gone is told nothing (an
    exception nobody retrieves would be reported as lost)."""
    if pending.done.done():
        return
    if pending.abandoned:
        pending.done.cancel()
    elif error is not None:
        pending.done.set_exception(error)
    else:
        pending.done.set_result(None)


def _unavailable_after(exc: Exception) -> Unavailable:
    if isinstance(exc, Unavailable):
        return Unavailable(
            exc.message, retry_after=exc.retry_after, reason=exc.reason, metadata=exc.metadata
        )
    if isinstance(exc, TimeoutError):
        return audit_unavailable("the audit trail did not commit in time; retry later")
    return audit_unavailable(
        f"the audit trail cannot be written now ({type(exc).__name__}); retry later"
    )
