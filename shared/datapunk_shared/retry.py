"""Retries with exponential backoff and full jitter, bounded by a deadline, only for
errors that say a retry can succeed (UNAVAILABLE, RESOURCE_EXHAUSTED, and whatever
``retryable`` accepts). A server's RetryInfo delay is honoured as a minimum wait.

Built on tenacity (well kept, async-aware) rather than a hand-written loop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from datapunk_shared.errors import DatapunkError

__all__ = ["RetryPolicy", "is_retryable", "retry_call"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How to retry: waits grow from ``initial`` by ``multiplier`` up to ``maximum``
    seconds (each a random fraction of that, "full jitter"), for at most ``attempts``
    tries and ``deadline`` seconds in all."""

    initial: float = 0.05
    maximum: float = 2.0
    multiplier: float = 2.0
    attempts: int = 5
    deadline: float = 10.0


def is_retryable(exc: BaseException) -> bool:
    """True for Datapunk errors that are safe to retry (the server said so)."""
    return isinstance(exc, DatapunkError) and exc.retryable


async def retry_call(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy = RetryPolicy(),
    *,
    retryable: Callable[[BaseException], bool] = is_retryable,
) -> T:
    """Call ``fn`` until it succeeds, a non-retryable error occurs, or the policy is spent;
    the last error is re-raised unchanged."""
    jitter = wait_random_exponential(
        multiplier=policy.initial, exp_base=policy.multiplier, max=policy.maximum
    )

    def wait(state: RetryCallState) -> float:
        delay: float = jitter(state)
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        hinted = getattr(error, "retry_after", None)
        return max(delay, hinted) if isinstance(hinted, int | float) else delay

    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.deadline),
        wait=wait,
        retry=retry_if_exception(retryable),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await fn()
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover
