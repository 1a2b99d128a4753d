"""GCRA arithmetic and the in-process buckets: bursts, steady rate, all-or-nothing."""

from __future__ import annotations

from datapunk_nexus.limits.gcra import MemoryGcra, decide

SECOND = 1_000_000
# 10 calls per second, bursts of 3.
PARAMS = (SECOND // 10, 3 * SECOND // 10)


def test_burst_then_denied_with_retry_after() -> None:
    tats: list[int | None] = [None]
    remaining = []
    now = 50 * SECOND
    for _ in range(3):
        decision, new = decide(now, tats, [PARAMS])
        assert decision.allowed
        remaining.append(decision.states[0].remaining)
        tats = [new[0]]
    assert remaining == [2, 1, 0]
    decision, new = decide(now, tats, [PARAMS])
    assert not decision.allowed
    assert decision.states[0].retry_after_us == SECOND // 10
    assert decision.states[0].reset_after_us == 3 * SECOND // 10
    assert new == tats  # a denied call books nothing


def test_steady_rate_is_allowed_after_the_emission_interval() -> None:
    now = 50 * SECOND
    tats: list[int | None] = [None]
    for _ in range(3):
        _, new = decide(now, tats, [PARAMS])
        tats = [new[0]]
    later = now + SECOND // 10
    decision, _ = decide(later, tats, [PARAMS])
    assert decision.allowed
    assert decision.states[0].remaining == 0


def test_quiet_bucket_refills_to_burst() -> None:
    now = 50 * SECOND
    decision, new = decide(now, [None], [PARAMS])
    decision, _ = decide(now + 10 * SECOND, [new[0]], [PARAMS])
    assert decision.states[0].remaining == 2


def test_several_buckets_all_or_nothing() -> None:
    now = 50 * SECOND
    tight = (SECOND, SECOND)  # 1 per second, burst 1
    decision, new = decide(now, [None, None], [PARAMS, tight])
    assert decision.allowed
    decision, again = decide(now, list[int | None](new), [PARAMS, tight])
    assert not decision.allowed
    assert decision.states[0].allowed
    assert not decision.states[1].allowed
    assert again[0] == new[0], "the loose bucket must not be charged for a refused call"


def test_memory_gcra_denies_over_burst_and_sweeps() -> None:
    gcra = MemoryGcra(sweep_at=10)
    results = [gcra.decide(["k"], [PARAMS]).allowed for _ in range(5)]
    assert results == [True, True, True, False, False]
    for i in range(50):
        gcra.decide([f"one-off-{i}"], [(1, 1)])  # 1 us buckets: stale almost at once
    assert len(gcra) <= 12
