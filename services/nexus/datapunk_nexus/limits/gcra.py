"""The generic cell rate algorithm (GCRA): one number per bucket, the theoretical
arrival time (TAT) of the next call. A call is allowed when booking it would put the TAT
no further than ``burst`` emission intervals ahead of now. The same arithmetic runs in
this process (``MemoryGcra``) and inside Redis (``GCRA_LUA``), in integer microseconds."""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["GCRA_LUA", "BucketState", "Decision", "MemoryGcra", "decide"]


@dataclass(frozen=True, slots=True)
class BucketState:
    """What one bucket said about a call."""

    allowed: bool
    remaining: int
    """Calls still allowed right now after this one."""
    retry_after_us: int
    """When denied: how long until one call would be allowed."""
    reset_after_us: int
    """How long until the bucket is full (the TAT is now) again."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict over every bucket of a call: allowed only when all allow it, and then
    all of them count it; a denied call is counted in none."""

    allowed: bool
    states: tuple[BucketState, ...]


def decide(
    now_us: int, tats: list[int | None], params: list[tuple[int, int]]
) -> tuple[Decision, list[int]]:
    """Decide over buckets with the given TATs and (emission interval, burst offset);
    returns the decision and the TATs to store."""
    states: list[BucketState] = []
    new_tats: list[int] = []
    allowed = True
    for stored, (interval, offset) in zip(tats, params, strict=True):
        tat = now_us if stored is None or stored < now_us else stored
        new_tat = tat + interval
        diff = now_us - (new_tat - offset)
        if diff < 0:
            allowed = False
            states.append(BucketState(False, 0, -diff, tat - now_us))
            new_tats.append(tat)
        else:
            states.append(BucketState(True, diff // interval, 0, new_tat - now_us))
            new_tats.append(new_tat)
    if not allowed:  # a refused call is counted in no bucket
        new_tats = [now_us if t is None or t < now_us else t for t in tats]
    return Decision(allowed, tuple(states)), new_tats


class MemoryGcra:
    """GCRA buckets in this process (one Nexus instance). Buckets whose TAT has passed
    hold no information and are swept once the table grows, so memory stays bounded by
    the callers active within one burst window."""

    def __init__(self, *, sweep_at: int = 100_000) -> None:
        self._tats: dict[str, int] = {}
        self._sweep_at = sweep_at

    def __len__(self) -> int:
        return len(self._tats)

    def decide(self, keys: list[str], params: list[tuple[int, int]]) -> Decision:
        now_us = time.monotonic_ns() // 1000
        decision, new_tats = decide(now_us, [self._tats.get(key) for key in keys], params)
        if decision.allowed:
            if len(self._tats) >= self._sweep_at:
                self._sweep(now_us)
            for key, tat in zip(keys, new_tats, strict=True):
                self._tats[key] = tat
        return decision

    def _sweep(self, now_us: int) -> None:
        self._tats = {key: tat for key, tat in self._tats.items() if tat > now_us}


# KEYS: one per bucket. ARGV: emission interval and burst offset (microseconds) per
# bucket. The clock is the Redis server's, so every Nexus instance agrees on it; TIME in
# a script is allowed since Redis replicates scripts by their effects. Returns
# {allowed, then remaining, retry_after_us, reset_after_us per bucket}.
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local stored = redis.call('MGET', unpack(KEYS))
local out = {1}
local new_tats = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local offset = tonumber(ARGV[2 * i])
  local tat = tonumber(stored[i])
  if tat == nil or tat < now then tat = now end
  local new_tat = tat + interval
  local diff = now - (new_tat - offset)
  if diff < 0 then
    out[1] = 0
    table.insert(out, 0)
    table.insert(out, -diff)
    table.insert(out, tat - now)
  else
    table.insert(out, math.floor(diff / interval))
    table.insert(out, 0)
    table.insert(out, new_tat - now)
  end
  new_tats[i] = new_tat
end
if out[1] == 1 then
  for i = 1, #KEYS do
    local ttl_ms = math.ceil((new_tats[i] - now) / 1000)
    if ttl_ms < 1 then ttl_ms = 1 end
    redis.call('SET', KEYS[i], string.format('%.0f', new_tats[i]), 'PX', ttl_ms)
  end
end
return out
"""
