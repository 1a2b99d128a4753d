"""API-key verification cost: which hash to store key secrets under, and what a whole
authentication costs with the chosen one.

1. **The hash alone**, in process, no I/O: verifying one presented secret against its
   stored hash with HMAC-SHA-256 under a pepper (``SecretHasher``, the chosen one) and
   with argon2id (argon2-cffi) at OWASP's minimum (19 MiB, t=2, p=1; the parameters the
   OAuth client secrets use) and at argon2-cffi's default, RFC 9106's low-memory profile
   (64 MiB, t=3, p=4). Per call: p50/p99 wall time; per core: verifications per CPU
   second of this process (argon2id with p=4 runs 4 threads, so its CPU time exceeds its
   wall time).
2. **A whole authentication** against the real PostgreSQL (``engines.postgres.url``, the
   Nexus's migrations applied; keys of a throw-away tenant, deleted afterwards), one call
   in flight: ``ApiKeyAuthenticator.authenticate`` on a cache miss (parse, checksum, keyed
   hash, a primary-key lookup, constant-time compare) and on a cache hit, beside the
   peer: the same primary-key SELECT over one raw psycopg connection. Rounds alternate
   which side goes first; p50 differences are taken per round, the median reported.

Bars: HMAC p99 <= 1% of argon2id (OWASP) p50 (slowness buys nothing for a 256-bit
random secret, and the keyed hash must be cheap enough not to matter); cache-miss p50 <=
raw SELECT p50 + 150 us (what a pool checkout, the parse, the keyed hash and building the
identity may add to the one lookup); cache-hit p50 <= 0.1 x raw SELECT p50.

``python -m bench.run api_keys`` or ``python bench/api_keys.py [--quick]``."""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/api_keys.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from argon2 import PasswordHasher
from datapunk_nexus.identity.api_keys import build_api_keys
from datapunk_nexus.identity.api_keys.hashing import SecretHasher
from datapunk_nexus.identity.api_keys.key_format import new_key_id, new_secret
from datapunk_shared.auth.identity import Identity
from datapunk_shared.config import ApiKeySettings, load_settings
from datapunk_shared.db import apply_migrations, load_migrations
from psycopg_pool import AsyncConnectionPool

from bench.common import Bar, Result, main_with_quick, summarize_latencies

NAME = "api_keys"
DESCRIPTION = "API-key verification: HMAC-SHA-256 vs argon2id, and authenticate vs a raw lookup"

PEPPER = b"bench-pepper-" + bytes(range(32))
# label -> (time_cost, memory_cost in KiB, parallelism)
ARGON2_PROFILES = {
    "argon2id OWASP (19 MiB, t=2, p=1)": (2, 19456, 1),
    "argon2id RFC 9106 (64 MiB, t=3, p=4)": (3, 65536, 4),
}


def _measure(verify: Callable[[], object], calls: int) -> dict[str, float]:
    """Per-call wall times and verifications per CPU second of ``verify``."""
    for _ in range(min(calls, 3)):
        verify()  # warm up
    seconds: list[float] = []
    cpu_start = time.process_time()
    for _ in range(calls):
        started = time.perf_counter()
        verify()
        seconds.append(time.perf_counter() - started)
    cpu = time.process_time() - cpu_start
    summary = summarize_latencies(seconds)
    summary["per_core_per_s"] = calls / cpu if cpu > 0 else float("nan")
    summary["calls"] = calls
    return summary


def measure_hashes(quick: bool) -> dict[str, dict[str, float]]:
    key_id, secret = new_key_id(), new_secret()
    hasher = SecretHasher(PEPPER)
    stored = hasher.digest(key_id, secret)

    def hmac_verify() -> bool:
        return SecretHasher.same(hasher.digest(key_id, secret), stored)

    assert hmac_verify()
    results = {"HMAC-SHA-256 + pepper": _measure(hmac_verify, 20_000 if quick else 100_000)}
    for label, (time_cost, memory_cost, parallelism) in ARGON2_PROFILES.items():
        argon2 = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism
        )
        encoded = argon2.hash(secret)

        def argon2_verify(argon2: PasswordHasher = argon2, encoded: str = encoded) -> bool:
            return argon2.verify(encoded, secret)

        heavy = memory_cost > 20_000
        calls = (6 if heavy else 10) if quick else (20 if heavy else 40)
        results[label] = _measure(argon2_verify, calls)
    return results


async def _timed(call: Callable[[], Awaitable[object]], calls: int) -> list[float]:
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        seconds.append(time.perf_counter() - started)
    return seconds


async def measure_authentication(quick: bool) -> dict[str, Any]:
    url = load_settings().engines.postgres.url
    tenant = f"bench-{uuid.uuid4().hex[:12]}"
    pool = AsyncConnectionPool(url, min_size=1, max_size=2, open=False)
    await pool.open(wait=True, timeout=15)
    raw = await psycopg.AsyncConnection.connect(url, autocommit=True)
    try:
        async with pool.connection() as conn:
            await apply_migrations(conn, "nexus", load_migrations("datapunk_nexus.migrations"))
        miss = build_api_keys(ApiKeySettings(cache_seconds=0), pool, PEPPER)
        hit = build_api_keys(ApiKeySettings(cache_seconds=300), pool, PEPPER)
        creator = Identity(subject="user:bench", tenant=tenant, kind="user")
        keys = [(await miss.manager.create(creator, name=f"bench {i}")).key for i in range(50)]
        ids = [key[4:16] for key in keys]
        position = 0

        def next_index() -> int:
            nonlocal position
            position = (position + 1) % len(keys)
            return position

        async def raw_select() -> None:
            cursor = await raw.execute(
                "SELECT id, tenant, name, roles, scopes, created_by, create_time, expire_time,"
                " revoke_time, rotate_time, last_used_time, secret_hash, previous_secret_hash,"
                " previous_secret_expire_time FROM nexus.api_keys WHERE id = %s",
                (ids[next_index()],),
                prepare=True,
            )
            await cursor.fetchone()

        async def cache_miss() -> None:
            await miss.authenticator.authenticate(keys[next_index()])

        async def cache_hit() -> None:
            await hit.authenticator.authenticate(keys[next_index()])

        # Fill the cache, record every key's first use (so that no last-used write runs
        # while measuring), warm PostgreSQL and the prepared statements.
        for key in keys:
            await hit.authenticator.authenticate(key)
            await miss.authenticator.authenticate(key)
            await raw_select()
        await hit.authenticator.close()
        await miss.authenticator.close()

        calls = 300 if quick else 2000
        rounds = 3
        sides: dict[str, list[float]] = {"raw": [], "miss": [], "hit": []}
        miss_over_raw, hit_ratio = [], []
        for round_index in range(rounds):
            order = [("raw", raw_select), ("miss", cache_miss), ("hit", cache_hit)]
            if round_index % 2:
                order.reverse()
            this_round: dict[str, list[float]] = {}
            for name, call in order:
                this_round[name] = await _timed(call, calls)
                sides[name] += this_round[name]
            raw_p50 = statistics.median(this_round["raw"])
            miss_over_raw.append(statistics.median(this_round["miss"]) - raw_p50)
            hit_ratio.append(statistics.median(this_round["hit"]) / raw_p50)
        await miss.authenticator.close()
        await hit.authenticator.close()
        return {
            "calls_per_round": calls,
            "rounds": rounds,
            "raw": summarize_latencies(sides["raw"]),
            "miss": summarize_latencies(sides["miss"]),
            "hit": summarize_latencies(sides["hit"]),
            "miss_minus_raw_p50_us": statistics.median(miss_over_raw) * 1e6,
            "hit_over_raw_p50": statistics.median(hit_ratio),
        }
    finally:
        async with pool.connection() as conn:
            await conn.execute("DELETE FROM nexus.api_keys WHERE tenant = %s", (tenant,))
        await raw.close()
        await pool.close()


def run(quick: bool = False) -> Result:
    started = datetime.now(UTC)
    hashes = measure_hashes(quick)
    auth = asyncio.run(measure_authentication(quick))
    hmac_row = hashes["HMAC-SHA-256 + pepper"]
    owasp = hashes["argon2id OWASP (19 MiB, t=2, p=1)"]
    rows: list[list[Any]] = [
        [f"verify: {label}", m["p50_us"], m["p99_us"], m["per_core_per_s"]]
        for label, m in hashes.items()
    ]
    rows += [
        [
            "authenticate, cache miss (PostgreSQL)",
            auth["miss"]["p50_us"],
            auth["miss"]["p99_us"],
            "",
        ],
        ["authenticate, cache hit", auth["hit"]["p50_us"], auth["hit"]["p99_us"], ""],
        ["peer: raw psycopg SELECT by id", auth["raw"]["p50_us"], auth["raw"]["p99_us"], ""],
    ]
    bars = [
        Bar(
            "HMAC verify p99 / argon2id (OWASP) verify p50",
            hmac_row["p99_us"] / owasp["p50_us"],
            0.01,
            "<=",
        ),
        Bar(
            "authenticate cache-miss p50 - raw SELECT p50",
            auth["miss_minus_raw_p50_us"],
            150.0,
            "<=",
            " us",
        ),
        Bar("authenticate cache-hit p50 / raw SELECT p50", auth["hit_over_raw_p50"], 0.1, "<="),
    ]
    notes = [
        f"argon2id (OWASP) costs {owasp['p50_us'] / hmac_row['p50_us']:,.0f}x the keyed hash "
        "per verification; a 256-bit random secret gains nothing from a slow hash",
        f"one call in flight, {auth['rounds']} rounds of {auth['calls_per_round']} calls, "
        "order alternating; the cache-miss difference is the median of per-round p50 "
        "differences",
        f"started {started.isoformat(timespec='seconds')}",
    ]
    return Result(
        name=NAME,
        description=DESCRIPTION,
        columns=["path", "p50 us", "p99 us", "verifications/s/core"],
        rows=rows,
        bars=bars,
        details={"hashes": hashes, "authentication": auth},
        notes=notes,
    )


def main(argv: list[str] | None = None) -> int:
    return main_with_quick(run, DESCRIPTION, "fewer calls", argv)


if __name__ == "__main__":
    sys.exit(main())
