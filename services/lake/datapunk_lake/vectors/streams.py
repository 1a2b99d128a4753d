"""Reading a client stream one message ahead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

__all__ = ["read_ahead"]

T = TypeVar("T")


async def read_ahead(messages: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    """Yield ``messages``, with the read of the next one already pending while the caller
    works on the current one.

    A bulk load decodes and writes each batch on the event loop; without a pending read
    gRPC grants the client no more flow-control window for the stream, so the next batch
    only starts to arrive once the current one is written. With one read ahead it arrives
    meanwhile. At most one message is held beyond the caller's, so back-pressure stays:
    a slow writer still slows the client. An error of the read (a message breaking the
    contract, a cancelled call) surfaces when the caller asks for that message, after
    the batches before it have been written and acknowledged, as without read-ahead."""
    iterator = aiter(messages)
    pending: asyncio.Future[T] = asyncio.ensure_future(anext(iterator))
    try:
        while True:
            try:
                message = await pending
            except StopAsyncIteration:
                return
            pending = asyncio.ensure_future(anext(iterator))
            await asyncio.sleep(0)  # let the read start before the caller blocks the loop
            yield message
    finally:
        if not pending.done():
            pending.cancel()
        # Nobody awaits an abandoned read: take its outcome so asyncio does not report it.
        pending.add_done_callback(_consume)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
