"""The Lake's vector store against raw qdrant-edge, on the same data in the same run.

Data: N clustered vectors (numpy; 100k x 128 in a full run, 20k in --quick) with a
keyword payload ``cat`` (10 values) that has a payload index on both sides. Both sides
use the same collection configuration (HNSW m=16, ef_construct=100, full-scan threshold
1000 kB, cosine).

* **raw** - qdrant-edge in this process: ``EdgeShard.update(upsert_points(...))`` in
  batches of 1000 built from numpy rows, ``optimize()``, ``query()``.
* **lake** - ``datapunk-lake`` as a separate process on loopback (embedded engine, shards
  in a temporary directory): ``ImportPoints`` (bidi stream, batches of 1000, acknowledged
  per batch), ``OptimizeCollection`` (a child process), ``SearchPoints`` one call in
  flight, called by **ghz** (Go, a client we did not write; the same requests in proto3
  JSON, sent in turn) and by a synchronous Python stub; every call carries what Nexus
  sends (its service token and the client it acts for).
* **floor** - a bare ``grpc.aio`` server (``bench/bare_server.py``: no interceptors, no
  work) answering the same ghz calls with a recorded Lake answer: what gRPC alone costs a
  call of this shape.

The table also has CPU time: the benchmark process's for raw, the Lake process's (all its
threads) for the Lake, per point or per search; less disturbed by the machine's other
work than wall time. Each side loads half the points, then the other half, in the order
raw, lake, lake, raw. Recall@10 is computed against exact search (numpy). The search ef
is the smallest of 64/128/256 at which raw qdrant-edge reaches recall 0.95; the Lake
searches with the same ef. Each search round measures raw, the Lake through the stub,
the Lake through ghz and the floor, in that order or the reverse one, alternately; each
p50 difference is the median over rounds.

Why the p50 bar is taken with ghz: it is about what the Lake adds to a search, and a
Python gRPC client spends ~0.3-0.5 ms of its own per call on this machine (a bare
grpc.aio server answers ghz at p50 ~0.30 ms, a Python grpc.aio client at ~0.77 ms), a
cost of the client, not of the Lake. The Python stub's rows stay in the table.

Bars (issue 3): Lake streaming upsert >= 0.7 x raw; Lake recall@10 >= 0.95; Lake p50
(ghz) <= raw p50 + 0.3 ms; Lake filtered QPS (cat = one value, 10% of points) >= 0.5 x Lake
unfiltered QPS.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import qdrant_edge as qe
from datapunk.lake.v1 import vectors_pb2 as pb
from datapunk.lake.v1 import vectors_pb2_grpc
from google.protobuf import struct_pb2

from bench.bare_server import running_bare_server
from bench.common import (
    Authed,
    Bar,
    Result,
    closed_engines,
    main_with_quick,
    process_cpu_seconds,
    running_lake,
    service_metadata,
    summarize_latencies,
)
from bench.load import run_ghz

__all__ = ["DESCRIPTION", "NAME", "run"]

NAME = "vectors"
DESCRIPTION = "vector store through the Lake (gRPC) vs raw qdrant-edge: upsert, search, filter"

pb_grpc: Any = vectors_pb2_grpc
DIM = 128
CATEGORIES = 10
BATCH = 1000
K = 10
EFS = (64, 128, 256)
FULL_SCAN_KB = 1000
ROUNDS = 3


def _data(n: int, queries: int, seed: int = 7) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(16, n // 1000), DIM)).astype(np.float32)
    data = centers[rng.integers(0, len(centers), n)] + 0.35 * rng.normal(size=(n, DIM))
    picks = rng.integers(0, n, queries)
    query = data[picks] + 0.2 * rng.normal(size=(queries, DIM))
    return data.astype(np.float32), query.astype(np.float32)


def _truth(data: np.ndarray[Any, Any], queries: np.ndarray[Any, Any]) -> list[set[int]]:
    normed = data / np.linalg.norm(data, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    truth: list[set[int]] = []
    for start in range(0, len(q), 64):
        scores = q[start : start + 64] @ normed.T
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        truth.extend({int(i) for i in row} for row in top)
    return truth


def _recall(found: Sequence[Sequence[int]], truth: Sequence[set[int]]) -> float:
    hits = sum(len(set(f[:K]) & t) for f, t in zip(found, truth, strict=True))
    return hits / (K * len(truth))


def _cat(i: int) -> str:
    return f"c{i % CATEGORIES}"


# ---- raw qdrant-edge -----------------------------------------------------------------


class Raw:
    def __init__(self, directory: Path) -> None:
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=DIM, distance=qe.Distance.Cosine),
            hnsw_config=qe.HnswIndexConfig(
                m=16, ef_construct=100, full_scan_threshold=FULL_SCAN_KB
            ),
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=FULL_SCAN_KB),
        )
        self.shard = qe.EdgeShard.create(str(directory), config)
        self.shard.update(
            qe.UpdateOperation.create_field_index("cat", qe.PayloadSchemaType.Keyword)
        )

    def upsert(self, data: np.ndarray[Any, Any], first: int) -> float:
        """Write ``data`` as points ``first``, ``first + 1``, ...; the seconds it took."""
        started = time.perf_counter()
        for offset in range(first, first + len(data), BATCH):
            rows = data[offset - first : offset - first + BATCH].tolist()
            points = [
                qe.Point(offset + i, row, {"cat": _cat(offset + i)}) for i, row in enumerate(rows)
            ]
            self.shard.update(qe.UpdateOperation.upsert_points(points))
        return time.perf_counter() - started

    def search(
        self, queries: Sequence[list[float]], ef: int, flt: qe.Filter | None = None
    ) -> tuple[list[list[int]], list[float]]:
        found: list[list[int]] = []
        latencies: list[float] = []
        params = qe.SearchParams(hnsw_ef=ef)
        for q in queries:
            started = time.perf_counter()
            points = self.shard.query(
                qe.QueryRequest(limit=K, query=qe.Query.Nearest(q), params=params, filter=flt)
            )
            latencies.append(time.perf_counter() - started)
            found.append([int(p.id) for p in points])
        return found, latencies


# ---- the Lake ------------------------------------------------------------------------


async def _lake_import(
    address: str, collection: str, data: np.ndarray[Any, Any], first: int
) -> float:
    """Load ``data`` as points ``first``, ... in one ImportPoints stream; the seconds from
    its start to the last acknowledgement."""
    payloads = []
    for i in range(CATEGORIES):
        payload = struct_pb2.Struct()
        payload.fields["cat"].string_value = _cat(i)
        payloads.append(payload)

    async def batches() -> AsyncIterator[pb.ImportPointsRequest]:
        for offset in range(first, first + len(data), BATCH):
            rows = data[offset - first : offset - first + BATCH].tolist()
            points = [
                pb.Point(
                    id=pb.PointId(num=offset + i),
                    vector=row,
                    payload=payloads[(offset + i) % CATEGORIES],
                )
                for i, row in enumerate(rows)
            ]
            yield pb.ImportPointsRequest(collection=collection, sequence=offset, points=points)

    options = [("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = Authed(pb_grpc.VectorServiceStub(channel), service_metadata())
        started = time.perf_counter()
        total = 0
        async for ack in stub.ImportPoints(batches()):
            total = ack.total_upserted
        elapsed = time.perf_counter() - started
    assert total == len(data), f"acknowledged {total} of {len(data)}"
    return elapsed


def _lake_search(
    stub: Any, collection: str, queries: Sequence[list[float]], ef: int, flt: pb.Filter | None
) -> tuple[list[list[int]], list[float]]:
    found: list[list[int]] = []
    latencies: list[float] = []
    for q in queries:
        request = pb.SearchPointsRequest(
            collection=collection, query=pb.VectorQuery(vector=q, limit=K, hnsw_ef=ef, filter=flt)
        )
        started = time.perf_counter()
        response = stub.SearchPoints(request)
        latencies.append(time.perf_counter() - started)
        found.append([p.id.num for p in response.points])
    return found, latencies


def _lake_pid() -> int:
    """The pid of the ``datapunk-lake`` this process started (for its CPU time)."""
    mine = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if parent == mine and b"datapunk-lake" in command:
            return int(entry.name)
    raise RuntimeError("the Lake this benchmark started is not among its children")


def _lake_floor(stub: Any, collection: str, calls: int) -> list[float]:
    """Latencies of ``GetCollection``: the same client, channel, metadata and server
    edges as a search, no engine work. The part of the search p50 above raw qdrant-edge
    that this accounts for is the gRPC hop and the shared server edges, not the vector
    store (reported, no bar)."""
    request = pb.GetCollectionRequest(name=collection)
    latencies: list[float] = []
    for _ in range(calls):
        started = time.perf_counter()
        stub.GetCollection(request)
        latencies.append(time.perf_counter() - started)
    return latencies


SEARCH_METHOD = "datapunk.lake.v1.VectorService/SearchPoints"
GHZ_WARM = 20


def _ghz_search(
    port: int, collection: str, queries: Sequence[list[float]], ef: int, metadata: Any
) -> list[float]:
    """Latencies of ``SearchPoints`` called by ghz (Go, a client we did not write), one
    call in flight, each query once in order after ``GHZ_WARM`` warm-up calls: the same
    requests as ``_lake_search`` sends (proto3 JSON; float32 values written as the exact
    decimals of their doubles, so ghz sends the same floats)."""
    requests = [
        {"collection": collection, "query": {"vector": q, "limit": K, "hnswEf": ef}}
        for q in [*queries[:GHZ_WARM], *queries]
    ]
    done = run_ghz(
        port,
        SEARCH_METHOD,
        concurrency=1,
        total=len(requests),
        skip_first=GHZ_WARM,
        metadata=metadata,
        data=requests,
    )
    if done.errors or len(done.latencies) != len(queries):
        raise RuntimeError(f"ghz search on port {port}: {done.ok} OK, {done.errors} failed")
    return list(done.latencies)


# ---- the run -------------------------------------------------------------------------


def _qps(latencies: Sequence[float]) -> float:
    return len(latencies) / sum(latencies)


def run(quick: bool = False) -> Result:
    n = 20_000 if quick else 100_000
    nq = 100 if quick else 300
    data, queries_np = _data(n, nq)
    queries = queries_np.tolist()
    truth = _truth(data, queries_np)
    work = Path(tempfile.mkdtemp(prefix="bench-vectors-"))
    notes: list[str] = []
    details: dict[str, Any] = {"points": n, "dim": DIM, "queries": nq, "batch": BATCH}
    raw = Raw(work / "raw")
    collection = "collections/bench"
    # The Lake also probes PostgreSQL and QuestDB; the vector store does not need them.
    lake_settings = {
        "DATAPUNK_LAKE__VECTORS__AUTO_OPTIMIZE": "false",
        **closed_engines("postgres", "questdb"),
    }
    try:
        with (
            running_lake(work, lake_settings, vectors=work / "lake") as address,
            grpc.insecure_channel(address) as channel,
        ):
            stub = Authed(pb_grpc.VectorServiceStub(channel), service_metadata())
            stub.CreateCollection(
                pb.CreateCollectionRequest(
                    collection_id="bench",
                    collection=pb.Collection(
                        vector_size=DIM,
                        distance=pb.DISTANCE_COSINE,
                        hnsw=pb.HnswConfig(
                            m=16, ef_construct=100, full_scan_threshold_kb=FULL_SCAN_KB
                        ),
                        payload_fields=[
                            pb.PayloadField(name="cat", type=pb.PAYLOAD_FIELD_TYPE_KEYWORD)
                        ],
                    ),
                )
            )
            # Each side loads half the points, in the order raw, lake, lake, raw, so load
            # from other work drifting during the run weighs on both sides alike.
            lake_pid = _lake_pid()
            half = n // 2
            seconds = {"raw": 0.0, "lake": 0.0}
            raw_upsert_cpu = client_upsert_cpu = lake_upsert_cpu = 0.0
            for side, first, count in (
                ("raw", 0, half),
                ("lake", 0, half),
                ("lake", half, n - half),
                ("raw", half, n - half),
            ):
                part = data[first : first + count]
                cpu, server = time.process_time(), process_cpu_seconds(lake_pid)
                if side == "raw":
                    seconds["raw"] += raw.upsert(part, first)
                    raw_upsert_cpu += time.process_time() - cpu
                else:
                    seconds["lake"] += asyncio.run(_lake_import(address, collection, part, first))
                    client_upsert_cpu += time.process_time() - cpu
                    lake_upsert_cpu += process_cpu_seconds(lake_pid) - server
            raw_rate, lake_rate = n / seconds["raw"], n / seconds["lake"]
            details["upsert_points_per_s"] = {"raw": raw_rate, "lake": lake_rate}
            details["upsert_cpu_us_per_point"] = {
                "raw": raw_upsert_cpu / n * 1e6,
                "lake_server": lake_upsert_cpu / n * 1e6,
                "lake_client": client_upsert_cpu / n * 1e6,
            }

            started = time.perf_counter()
            raw.shard.optimize()
            raw_optimize = time.perf_counter() - started
            started = time.perf_counter()
            stats = stub.OptimizeCollection(
                pb.OptimizeCollectionRequest(name=collection), timeout=1800
            ).stats
            lake_optimize = time.perf_counter() - started
            details["optimize_seconds"] = {"raw": raw_optimize, "lake": lake_optimize}
            details["lake_stats"] = {
                "points": stats.points_count,
                "indexed": stats.indexed_vectors_count,
                "segments": stats.segments_count,
                "disk_bytes": stats.disk_bytes,
            }

            # Pick ef on the raw engine.
            ef = EFS[-1]
            recalls: dict[int, float] = {}
            for candidate in EFS:
                found, _ = raw.search(queries, candidate)
                recalls[candidate] = _recall(found, truth)
                if recalls[candidate] >= 0.95:
                    ef = candidate
                    break
            details["raw_recall_by_ef"] = recalls
            details["ef"] = ef

            raw_filter = qe.Filter(must=[qe.FieldCondition("cat", match=qe.MatchValue("c3"))])
            lake_filter = pb.Filter(
                must=[
                    pb.Condition(field=pb.FieldCondition(key="cat", match=pb.Match(keyword="c3")))
                ]
            )
            # Warm both sides alike: every query once, unfiltered and filtered. (The raw
            # shard has already answered the whole query set while ef was picked; the
            # Lake's shard was reopened after its optimization, so without this its first
            # round pays the page faults of a cold HNSW graph.)
            _lake_search(stub, collection, queries, ef, None)
            _lake_search(stub, collection, queries, ef, lake_filter)
            raw.search(queries, ef, raw_filter)
            floor: list[float] = []
            samples: dict[str, list[float]] = {
                k: [] for k in ("raw", "lake", "ghz", "bare", "raw_f", "lake_f")
            }
            diffs: list[float] = []
            ghz_diffs: list[float] = []
            bare_diffs: list[float] = []
            lake_recall = raw_recall = 0.0
            raw_search_cpu = lake_search_cpu = ghz_search_cpu = 0.0
            metadata = service_metadata()
            lake_port = int(address.rpartition(":")[2])
            # The bare server answers every call with the Lake's answer to the first query.
            recorded = stub.SearchPoints(
                pb.SearchPointsRequest(
                    collection=collection,
                    query=pb.VectorQuery(vector=queries[0], limit=K, hnsw_ef=ef),
                )
            ).SerializeToString()
            details["recorded_search_response_bytes"] = len(recorded)
            with running_bare_server(
                "/" + SEARCH_METHOD, recorded, work, module=pb.__name__
            ) as bare_port:
                for rnd in range(ROUNDS):
                    sides = ("raw", "lake", "ghz", "bare")
                    got: dict[str, list[float]] = {}
                    for side in sides if rnd % 2 == 0 else tuple(reversed(sides)):
                        cpu, server = time.process_time(), process_cpu_seconds(lake_pid)
                        if side == "raw":
                            found, got[side] = raw.search(queries, ef)
                            raw_search_cpu += time.process_time() - cpu
                            raw_recall = _recall(found, truth)
                        elif side == "lake":
                            found, got[side] = _lake_search(stub, collection, queries, ef, None)
                            lake_search_cpu += process_cpu_seconds(lake_pid) - server
                            lake_recall = _recall(found, truth)
                        elif side == "ghz":
                            got[side] = _ghz_search(lake_port, collection, queries, ef, metadata)
                            ghz_search_cpu += process_cpu_seconds(lake_pid) - server
                        else:
                            got[side] = _ghz_search(bare_port, collection, queries, ef, metadata)
                    _, raw_f = raw.search(queries, ef, raw_filter)
                    _, lake_f = _lake_search(stub, collection, queries, ef, lake_filter)
                    floor += _lake_floor(stub, collection, nq)
                    for side in sides:
                        samples[side] += got[side]
                    samples["raw_f"] += raw_f
                    samples["lake_f"] += lake_f
                    raw_p50 = statistics.median(got["raw"])
                    diffs.append(statistics.median(got["lake"]) - raw_p50)
                    ghz_diffs.append(statistics.median(got["ghz"]) - raw_p50)
                    bare_diffs.append(statistics.median(got["bare"]) - raw_p50)
    finally:
        raw.shard.close()
        shutil.rmtree(work, ignore_errors=True)

    lat = {k: summarize_latencies(v) for k, v in samples.items()}
    qps = {k: _qps(v) for k, v in samples.items()}
    p50_diff_ms = statistics.median(ghz_diffs) * 1000
    python_diff_ms = statistics.median(diffs) * 1000
    bare_diff_ms = statistics.median(bare_diffs) * 1000
    floor_p50_ms = statistics.median(floor) * 1000
    searches = ROUNDS * nq
    cpu_us = {
        "raw_upsert": raw_upsert_cpu / n * 1e6,
        "lake_upsert": lake_upsert_cpu / n * 1e6,
        "raw_search": raw_search_cpu / searches * 1e6,
        "lake_search": lake_search_cpu / searches * 1e6,
        "lake_search_ghz": ghz_search_cpu / (ROUNDS * (nq + GHZ_WARM)) * 1e6,
    }
    rows: list[list[Any]] = [
        ["upsert points/s (stream)", raw_rate, lake_rate, lake_rate / raw_rate],
        ["upsert CPU us/point (lake: server)", cpu_us["raw_upsert"], cpu_us["lake_upsert"],
         cpu_us["lake_upsert"] / cpu_us["raw_upsert"]],
        ["optimize s", raw_optimize, lake_optimize, lake_optimize / raw_optimize],
        [f"search recall@{K} (ef {ef})", raw_recall, lake_recall, lake_recall / raw_recall],
        ["search p50 ms, ghz -> lake", lat["raw"]["p50_us"] / 1000, lat["ghz"]["p50_us"] / 1000,
         lat["ghz"]["p50_us"] / lat["raw"]["p50_us"]],
        ["search p99 ms, ghz -> lake", lat["raw"]["p99_us"] / 1000, lat["ghz"]["p99_us"] / 1000,
         lat["ghz"]["p99_us"] / lat["raw"]["p99_us"]],
        ["search p50 - raw p50 ms, ghz -> lake", "-", p50_diff_ms, "-"],
        ["search p50 ms, ghz -> bare grpc.aio (floor)", lat["raw"]["p50_us"] / 1000,
         lat["bare"]["p50_us"] / 1000, lat["bare"]["p50_us"] / lat["raw"]["p50_us"]],
        ["search p50 - raw p50 ms, ghz -> bare (floor)", "-", bare_diff_ms, "-"],
        ["search p50 ms, python grpc -> lake", lat["raw"]["p50_us"] / 1000,
         lat["lake"]["p50_us"] / 1000, lat["lake"]["p50_us"] / lat["raw"]["p50_us"]],
        ["search p99 ms, python grpc -> lake", lat["raw"]["p99_us"] / 1000,
         lat["lake"]["p99_us"] / 1000, lat["lake"]["p99_us"] / lat["raw"]["p99_us"]],
        ["search p50 - raw p50 ms, python grpc -> lake", "-", python_diff_ms, "-"],
        ["search QPS (1 in flight, python grpc)", qps["raw"], qps["lake"],
         qps["lake"] / qps["raw"]],
        ["search CPU us/call (lake: server, python grpc)", cpu_us["raw_search"],
         cpu_us["lake_search"], cpu_us["lake_search"] / cpu_us["raw_search"]],
        ["search CPU us/call (lake: server, ghz)", cpu_us["raw_search"],
         cpu_us["lake_search_ghz"], cpu_us["lake_search_ghz"] / cpu_us["raw_search"]],
        ["filtered p50 ms", lat["raw_f"]["p50_us"] / 1000, lat["lake_f"]["p50_us"] / 1000,
         lat["lake_f"]["p50_us"] / lat["raw_f"]["p50_us"]],
        ["filtered QPS", qps["raw_f"], qps["lake_f"], qps["lake_f"] / qps["raw_f"]],
        ["filtered / unfiltered QPS", qps["raw_f"] / qps["raw"], qps["lake_f"] / qps["lake"], 1.0],
        ["unary floor p50 ms (GetCollection)", "-", floor_p50_ms, "-"],
    ]  # fmt: skip
    details.update(
        {
            "latency_us": lat,
            "qps": qps,
            "p50_diff_ms_by_round": {
                "ghz": [d * 1000 for d in ghz_diffs],
                "python": [d * 1000 for d in diffs],
                "bare_floor": [d * 1000 for d in bare_diffs],
            },
            "unary_floor_latency_us": summarize_latencies(floor),
            "search_cpu_us_per_call": {
                "raw": cpu_us["raw_search"],
                "lake_server": cpu_us["lake_search"],
                "lake_server_ghz": cpu_us["lake_search_ghz"],
            },
        }
    )
    bars = [
        Bar("lake/raw streaming upsert", lake_rate / raw_rate, 0.7, ">=", "x"),
        Bar(f"lake recall@{K}", lake_recall, 0.95, ">="),
        Bar("lake p50 (ghz) - raw p50", p50_diff_ms, 0.3, "<=", " ms"),
        Bar("lake filtered/unfiltered QPS", qps["lake_f"] / qps["lake"], 0.5, ">=", "x"),
    ]
    notes += [
        "the p50 bar is taken with ghz (Go, a client we did not write) calling the Lake: the "
        "Lake's own cost; the python grpc rows carry the Python client's per-call cost too",
        "floor: a bare grpc.aio server answering the same ghz calls with a recorded Lake "
        "answer: what gRPC alone costs a call of this shape",
    ]
    if quick:
        notes.append(f"quick run: {n} points, {nq} queries; the issue's bars assume 100k")
    return Result(
        name=NAME,
        description=DESCRIPTION,
        columns=["measure", "raw", "lake", "lake/raw"],
        rows=rows,
        bars=bars,
        details=details,
        notes=notes,
    )


def main(argv: list[str] | None = None) -> int:
    return main_with_quick(run, DESCRIPTION, "20k points instead of 100k", argv)


if __name__ == "__main__":
    sys.exit(main())
