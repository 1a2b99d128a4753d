"""Verified tokens, remembered: a caller presents the same token on many calls, and an
ES256 verification costs far more than a dictionary lookup. Bounded in size, and no
token is remembered longer than ``seconds`` or past its own expiry."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from datapunk_shared.auth.identity import Identity

__all__ = ["RememberedTokens"]


class RememberedTokens:
    """``verify(token)`` through a bounded, time-limited memory of earlier answers."""

    def __init__(
        self,
        verify: Callable[[str], Awaitable[Identity]],
        *,
        size: int = 4096,
        seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._verify = verify
        self._size = size
        self._seconds = seconds
        self._clock = clock
        self._known: OrderedDict[str, tuple[Identity, float]] = OrderedDict()
        self._generation = 0

    async def identity(self, token: str) -> Identity:
        now = self._clock()
        known = self._known.get(token)
        if known is not None:
            identity, until = known
            if now < until:
                return identity
            del self._known[token]
        generation = self._generation
        identity = await self._verify(token)
        if generation != self._generation:
            return identity  # verified with keys from before a ``clear``: not kept
        until = now + self._seconds
        if identity.expires_at is not None:
            until = min(until, identity.expires_at)
        self._known[token] = (identity, until)
        if len(self._known) > self._size:
            self._known.popitem(last=False)
        return identity

    def forget(self, token: str) -> None:
        self._known.pop(token, None)

    def clear(self) -> None:
        """Forget every token (the issuer's keys changed); a verification running now
        is not remembered either."""
        self._known.clear()
        self._generation += 1
