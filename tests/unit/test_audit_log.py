"""AuditLog's batching and failing closed, as pure logic over a scripted batch writer
(tests/integration/test_audit_trail.py proves the same against PostgreSQL): records that
arrive during a commit share the next one, nobody returns before their own commit, and a
writer that fails or hangs makes record raise Unavailable AUDIT_UNAVAILABLE in bounded
time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest
from datapunk_nexus.identity.audit.events import AuditEvent, Outcome
from datapunk_nexus.identity.audit.log import AuditLog
from datapunk_shared.errors import Unavailable


class ScriptedWriter:
    """Commits a batch when ``gate`` is set; raises ``error`` when one is given."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.error: Exception | None = None
        self.started = asyncio.Event()

    async def append(self, events: Sequence[AuditEvent]) -> object:
        self.started.set()
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        self.batches.append([event.request_id for event in events])
        return None


def _event(request_id: str) -> AuditEvent:
    return AuditEvent(action="data.read", outcome=Outcome.ALLOW, request_id=request_id)


async def _unavailable(awaitable: object) -> Unavailable:
    with pytest.raises(Unavailable) as caught:
        await awaitable  # type: ignore[misc]
    assert caught.value.reason == "AUDIT_UNAVAILABLE"
    return caught.value


async def test_records_that_arrive_during_a_commit_share_the_next_one() -> None:
    writer = ScriptedWriter()
    audit = AuditLog(writer, write_timeout=5)
    writer.gate.clear()
    first = asyncio.create_task(audit.record(_event("first")))
    await writer.started.wait()
    rest = [asyncio.create_task(audit.record(_event(f"r{i}"))) for i in range(10)]
    await asyncio.sleep(0.01)
    assert not first.done()  # nobody returns before their record is committed
    writer.gate.set()
    await asyncio.gather(first, *rest)
    assert writer.batches == [["first"], [f"r{i}" for i in range(10)]]
    assert audit.batches == 2
    await audit.close()


async def test_batches_hold_at_most_max_batch_records() -> None:
    writer = ScriptedWriter()
    audit = AuditLog(writer, write_timeout=5, max_batch=4)
    writer.gate.clear()
    blocker = asyncio.create_task(audit.record(_event("b")))
    await writer.started.wait()
    tasks = [asyncio.create_task(audit.record(_event(str(i)))) for i in range(10)]
    await asyncio.sleep(0.01)
    writer.gate.set()
    await asyncio.gather(blocker, *tasks)
    assert [len(batch) for batch in writer.batches] == [1, 4, 4, 2]
    await audit.close()


async def test_a_failing_writer_fails_its_batch_and_the_queue_closed() -> None:
    writer = ScriptedWriter()
    audit = AuditLog(writer, write_timeout=5, retry_interval=30)
    writer.gate.clear()
    writer.error = OSError("connection refused by 10.0.0.1 for user secret-user")
    first = asyncio.create_task(audit.record(_event("a")))
    await writer.started.wait()
    queued = asyncio.create_task(audit.record(_event("b")))
    await asyncio.sleep(0.01)
    writer.gate.set()
    for task in (first, queued):
        error = await _unavailable(task)
        assert "secret-user" not in error.message  # driver messages are never passed on
        assert error.metadata == {"engine": "postgres"}
    # Within the retry interval, records are refused at once, with retry information.
    started = time.perf_counter()
    error = await _unavailable(audit.record(_event("c")))
    assert time.perf_counter() - started < 0.05
    assert error.retry_after is not None
    assert 0 < error.retry_after <= 30
    assert writer.batches == []
    await audit.close()


async def test_a_hanging_writer_fails_closed_within_the_write_timeout() -> None:
    writer = ScriptedWriter()
    writer.gate.clear()  # never commits
    audit = AuditLog(writer, write_timeout=0.1, retry_interval=0)
    started = time.perf_counter()
    await _unavailable(audit.record(_event("x")))
    assert time.perf_counter() - started < 1.0
    writer.gate.set()
    await audit.record(_event("y"))  # retry_interval 0: the next record tries again
    await audit.close()


async def test_each_waiting_record_fails_at_its_own_deadline() -> None:
    """One watchdog serves every waiting record: records that arrived at different
    times behind a hung commit each fail ``write_timeout`` after their own arrival, not
    all at the first one's deadline, and a record answered in time is left alone."""
    writer = ScriptedWriter()
    writer.gate.clear()  # the first batch hangs
    audit = AuditLog(writer, write_timeout=0.3, retry_interval=0)
    loop = asyncio.get_running_loop()
    failed_at: dict[str, float] = {}

    async def record(name: str) -> None:
        started = loop.time()
        await _unavailable(audit.record(_event(name)))
        failed_at[name] = loop.time() - started

    early = asyncio.create_task(record("early"))
    await asyncio.sleep(0.15)
    late = asyncio.create_task(record("late"))
    await early
    assert not late.done()  # its own deadline is 0.15 s later
    await late
    assert all(0.25 <= waited < 0.6 for waited in failed_at.values()), failed_at
    writer.gate.set()
    await audit.record(_event("answered"))  # the watchdog does not touch it
    await asyncio.sleep(0.4)
    await audit.close()


async def test_a_record_whose_caller_went_away_before_its_batch_is_not_written() -> None:
    writer = ScriptedWriter()
    audit = AuditLog(writer, write_timeout=5)
    writer.gate.clear()
    blocker = asyncio.create_task(audit.record(_event("blocker")))
    await writer.started.wait()
    gone = asyncio.create_task(audit.record(_event("gone")))
    kept = asyncio.create_task(audit.record(_event("kept")))
    await asyncio.sleep(0.01)
    gone.cancel()  # its client disconnected while the record waited for a batch
    await asyncio.sleep(0)
    writer.gate.set()
    await asyncio.gather(blocker, kept)
    assert writer.batches == [["blocker"], ["kept"]]
    await audit.close()


async def test_a_caller_that_timed_out_is_not_told_twice() -> None:
    """The caller gave up (write timeout) while its batch was still being written; when
    the batch fails later, nothing is left behind for nobody to retrieve."""
    writer = ScriptedWriter()
    writer.gate.clear()
    audit = AuditLog(writer, write_timeout=0.05, retry_interval=0)
    await _unavailable(audit.record(_event("x")))
    writer.error = OSError("down")
    writer.gate.set()
    await asyncio.sleep(0.1)
    writer.error = None
    await audit.record(_event("y"))
    await audit.close()


async def test_too_many_waiting_records_are_refused_at_once() -> None:
    writer = ScriptedWriter()
    audit = AuditLog(writer, write_timeout=5, max_pending=2)
    writer.gate.clear()
    blocker = asyncio.create_task(audit.record(_event("b")))
    await writer.started.wait()
    waiting = [asyncio.create_task(audit.record(_event(str(i)))) for i in range(2)]
    await asyncio.sleep(0)
    await _unavailable(audit.record(_event("over")))
    writer.gate.set()
    await asyncio.gather(blocker, *waiting)
    await audit.close()


async def test_close_writes_what_waits_and_then_refuses() -> None:
    writer = ScriptedWriter()
    audit = AuditLog(writer, write_timeout=5)
    writer.gate.clear()
    tasks = [asyncio.create_task(audit.record(_event(str(i)))) for i in range(3)]
    await writer.started.wait()
    closing = asyncio.create_task(audit.close())
    writer.gate.set()
    await asyncio.gather(*tasks, closing)
    assert sum(len(batch) for batch in writer.batches) == 3
    await _unavailable(audit.record(_event("late")))


async def test_linger_gathers_records_that_arrive_close_together() -> None:
    """With ``linger``, a batch waits that long for more records even when no commit is
    under way (the default, 0, relies on the commit in flight alone)."""
    writer = ScriptedWriter()
    audit = AuditLog(writer, write_timeout=5, linger=0.2)
    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(audit.record(_event(str(i)))))
        await asyncio.sleep(0.005)
    await asyncio.gather(*tasks)
    assert writer.batches == [[str(i) for i in range(5)]]
    await audit.close()


async def _batches_after_a_shared_one(audit: AuditLog, writer: ScriptedWriter) -> list[str]:
    """Make a batch of two records (calls arriving together: the commit before them is
    held so that they pile up behind it), then send three records 10 ms apart; returns
    the last batch."""
    writer.started.clear()
    writer.gate.clear()
    first = asyncio.create_task(audit.record(_event("a")))
    await writer.started.wait()
    together = [asyncio.create_task(audit.record(_event(name))) for name in ("b", "c")]
    await asyncio.sleep(0)
    writer.gate.set()
    await asyncio.gather(first, *together)
    assert writer.batches[-2:] == [["a"], ["b", "c"]]
    tasks = []
    for name in ("d", "e", "f"):
        tasks.append(asyncio.create_task(audit.record(_event(name))))
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    return writer.batches[-1]


async def test_linger_only_once_calls_arrive_together() -> None:
    """With ``linger_after_batch``, a lone caller is written at once (no linger), while
    after a batch of several records the next batch waits ``linger`` for company."""
    writer = ScriptedWriter()
    audit = AuditLog(writer, write_timeout=5, linger=0.2, linger_after_batch=2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(3):  # one at a time: batches of one, none lingers
        await audit.record(_event(f"lone{i}"))
    assert loop.time() - started < 0.15
    assert writer.batches == [["lone0"], ["lone1"], ["lone2"]]

    # After a batch of two records, the next one lingers and gathers the late ones.
    assert await _batches_after_a_shared_one(audit, writer) == ["d", "e", "f"]
    await audit.close()


class _FakeCpu:
    """A process CPU clock that runs at ``share`` of the wall clock."""

    def __init__(self, share: float) -> None:
        self.share = share
        self._wall = time.monotonic

    def __call__(self) -> float:
        return self._wall() * self.share


async def _late_batch_at_cpu_share(share: float) -> list[str]:
    """The batch the late records of ``_batches_after_a_shared_one`` went into, in a
    process using ``share`` of a core (busy from 0.7)."""
    writer = ScriptedWriter()
    audit = AuditLog(
        writer,
        write_timeout=5,
        linger=0.2,
        linger_after_batch=2,
        linger_when_busy=0.7,
        cpu_clock=_FakeCpu(share),
    )
    await asyncio.sleep(0.06)  # one measuring window of the busy meter
    try:
        return await _batches_after_a_shared_one(audit, writer)
    finally:
        await audit.close()


async def test_linger_only_while_the_process_is_busy() -> None:
    """With ``linger_when_busy``, a process with CPU to spare writes at once even when
    calls arrive together (the wait would only add to every call), while a busy one
    lingers and gathers them."""
    assert await _late_batch_at_cpu_share(0.1) == ["f"]
    assert await _late_batch_at_cpu_share(1.0) == ["d", "e", "f"]
