"""read_ahead: the next message of a client stream is read while the caller works on the
current one, never more than one ahead, and errors arrive in stream order."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

import pytest
from datapunk_lake.vectors.streams import read_ahead


class Source:
    """An async stream of ``count`` numbers that records which it was asked for and can
    fail at ``fail_at``."""

    def __init__(self, count: int, fail_at: int | None = None) -> None:
        self.count = count
        self.fail_at = fail_at
        self.asked: list[int] = []

    async def stream(self) -> AsyncIterator[int]:
        for index in range(self.count):
            self.asked.append(index)
            await asyncio.sleep(0)  # a read that suspends, as gRPC's does
            if index == self.fail_at:
                raise ValueError(f"message {index} is bad")
            yield index


async def test_yields_every_message_in_order() -> None:
    source = Source(5)
    assert [m async for m in read_ahead(source.stream())] == [0, 1, 2, 3, 4]
    assert [m async for m in read_ahead(Source(0).stream())] == []


async def test_the_next_read_is_pending_while_the_caller_works_and_only_one() -> None:
    source = Source(4)
    seen: list[tuple[int, list[int]]] = []
    async for message in read_ahead(source.stream()):
        # The caller works without awaiting (as a batch write does).
        seen.append((message, list(source.asked)))
    assert seen == [(0, [0, 1]), (1, [0, 1, 2]), (2, [0, 1, 2, 3]), (3, [0, 1, 2, 3])]


async def test_an_error_arrives_after_the_messages_before_it() -> None:
    source = Source(5, fail_at=2)
    done: list[int] = []

    async def consume() -> None:
        async for message in read_ahead(source.stream()):
            done.append(message)

    with pytest.raises(ValueError, match="message 2 is bad"):
        await consume()
    assert done == [0, 1]


async def test_a_caller_that_stops_leaves_no_read_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = Source(5, fail_at=1)
    reader = read_ahead(source.stream())

    async def fail_on_first() -> None:
        async for _ in reader:
            raise RuntimeError("the batch failed")  # while message 1's read is pending

    with pytest.raises(RuntimeError, match="the batch failed"):
        await fail_on_first()
    await reader.aclose()
    await asyncio.sleep(0.01)
    gc.collect()
    await asyncio.sleep(0)
    assert source.asked == [0, 1]
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
