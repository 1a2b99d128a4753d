"""The retry helper retries only what may succeed, and stops at its bounds."""

from __future__ import annotations

import time

import pytest
from datapunk_shared.errors import InvalidArgument, Unavailable
from datapunk_shared.retry import RetryPolicy, retry_call

FAST = RetryPolicy(initial=0.001, maximum=0.01, attempts=4, deadline=5)


async def test_retries_unavailable_until_success() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise Unavailable("down")
        return "ok"

    assert await retry_call(flaky, FAST) == "ok"
    assert calls == 3


async def test_does_not_retry_invalid_argument() -> None:
    calls = 0

    async def bad() -> None:
        nonlocal calls
        calls += 1
        raise InvalidArgument("no")

    with pytest.raises(InvalidArgument):
        await retry_call(bad, FAST)
    assert calls == 1


async def test_gives_up_after_attempts_with_last_error() -> None:
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise Unavailable(f"down {calls}")

    with pytest.raises(Unavailable, match="down 4"):
        await retry_call(down, FAST)


async def test_deadline_bounds_total_time() -> None:
    async def down() -> None:
        raise Unavailable("down")

    started = time.monotonic()
    policy = RetryPolicy(initial=0.05, maximum=0.05, attempts=1000, deadline=0.3)
    with pytest.raises(Unavailable):
        await retry_call(down, policy)
    assert time.monotonic() - started < 2


async def test_server_retry_after_is_a_minimum_wait() -> None:
    calls: list[float] = []

    async def hinted() -> str:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise Unavailable("busy", retry_after=0.2)
        return "ok"

    assert await retry_call(hinted, FAST) == "ok"
    assert calls[1] - calls[0] >= 0.2
