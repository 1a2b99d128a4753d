"""The embedded engine: Qdrant in-process through qdrant-edge.

The Lake owns its shards under ``VectorStoreSettings.path``::

    <path>/<collection>/collection.json   the configuration and the current generation
    <path>/<collection>/shard-<n>/        the qdrant-edge shard of generation n

One shard is open per directory. ``collection.json`` is replaced atomically, so after a
crash the Lake reopens exactly the generation it names; other generations and
half-created or half-deleted collections are removed at start.

qdrant-edge calls are synchronous and hold the GIL for their whole duration (measured:
a second thread makes no progress during them), so moving them to a thread buys no
parallelism and costs a thread hop (~0.1 ms per search here). The adapter therefore calls
them on the event loop, except ``optimize()``, which takes seconds to minutes and would
freeze the Lake: it runs in a child process (``optimize_worker``) on a copy of the shard,
while the Lake keeps serving reads and writes on the original. Writes made meanwhile are
recorded and replayed on the optimized copy before it replaces the original.

A write returns after ``EdgeShard.update`` returned, which has appended it to the
shard's write-ahead log: it survives a crash (kill -9) of the Lake.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import qdrant_edge as qe
from datapunk_shared.errors import AlreadyExists, Internal, NotFound
from datapunk_shared.logging import get_logger

from datapunk_lake.vectors.domain import (
    CollectionConfig,
    CollectionStats,
    Filter,
    Point,
    PointId,
    Record,
    ScoredPoint,
    ScrollPage,
    Selector,
    VectorQuery,
    point_id_of,
)
from datapunk_lake.vectors.edge_translate import (
    edge_config,
    edge_filter,
    edge_query,
    record_of,
    schema_type,
    scored_of,
)

__all__ = ["EmbeddedEngine", "collection_not_found"]

log = get_logger("datapunk.lake.vectors")

META = "collection.json"
_DELETED_PREFIX = ".deleted-"


def collection_not_found(name: str) -> NotFound:
    return NotFound(
        f"collection {name!r} does not exist",
        reason="COLLECTION_NOT_FOUND",
        metadata={"collection": f"collections/{name}"},
    )


@dataclass(eq=False)
class _Collection:
    config: CollectionConfig
    directory: Path
    generation: int
    shard: qe.EdgeShard
    write_lock: asyncio.Lock
    oplog: list[qe.UpdateOperation] | None = None
    optimizing: asyncio.Task[CollectionStats] | None = None
    process: asyncio.subprocess.Process | None = None
    last_write: float = 0.0
    unindexed_after_optimize: int = 0
    closed: bool = False

    def shard_dir(self, generation: int | None = None) -> Path:
        return self.directory / f"shard-{self.generation if generation is None else generation}"


def _write_meta(directory: Path, config: CollectionConfig, generation: int) -> None:
    """Replace ``collection.json`` atomically and durably."""
    data = json.dumps({"config": config.to_json(), "generation": generation}, indent=2)
    tmp = directory / (META + ".tmp")
    with tmp.open("w") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, directory / META)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _disk_bytes(directory: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


class EmbeddedEngine:
    """The VectorEngine over qdrant-edge shards in ``root``."""

    def __init__(
        self,
        root: Path,
        *,
        auto_optimize: bool = True,
        optimize_min_unindexed: int = 20_000,
        optimize_idle_seconds: float = 2.0,
    ) -> None:
        self.root = root
        self.auto_optimize = auto_optimize
        self.optimize_min_unindexed = optimize_min_unindexed
        self.optimize_idle_seconds = optimize_idle_seconds
        self._collections: dict[str, _Collection] = {}
        self._creating: set[str] = set()
        self._auto_task: asyncio.Task[None] | None = None

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for entry in sorted(self.root.iterdir()):
            if not entry.is_dir():
                continue
            meta = entry / META
            if entry.name.startswith(_DELETED_PREFIX) or not meta.is_file():
                # A deletion or a creation that a crash interrupted.
                log.info("removing incomplete collection directory", path=str(entry))
                await asyncio.to_thread(shutil.rmtree, entry, True)
                continue
            data = json.loads(meta.read_text())
            config = CollectionConfig.from_json(data["config"])
            generation = int(data["generation"])
            for stray in entry.glob("shard-*"):
                if stray.name != f"shard-{generation}":
                    await asyncio.to_thread(shutil.rmtree, stray, True)
            shard = qe.EdgeShard.load(str(entry / f"shard-{generation}"))
            self._collections[config.name] = _Collection(
                config, entry, generation, shard, asyncio.Lock()
            )
            log.info("collection loaded", collection=config.name, generation=generation)
        if self.auto_optimize:
            self._auto_task = asyncio.create_task(self._auto_optimizer())

    async def close(self) -> None:
        if self._auto_task is not None:
            self._auto_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._auto_task
        for collection in list(self._collections.values()):
            await self._shutdown(collection)
        self._collections.clear()

    async def _shutdown(self, c: _Collection) -> None:
        c.closed = True
        if c.process is not None and c.process.returncode is None:
            c.process.kill()
        if c.optimizing is not None and not c.optimizing.done():
            c.optimizing.cancel()
            with contextlib.suppress(BaseException):
                await c.optimizing
        async with c.write_lock:
            c.shard.flush()
            c.shard.close()

    def _get(self, name: str) -> _Collection:
        collection = self._collections.get(name)
        if collection is None:
            raise collection_not_found(name)
        return collection

    # ---- collections -----------------------------------------------------------------

    async def create_collection(self, config: CollectionConfig) -> CollectionConfig:
        name = config.name
        if name in self._collections or name in self._creating:
            raise AlreadyExists(
                f"collection {name!r} exists already",
                reason="COLLECTION_ALREADY_EXISTS",
                metadata={"collection": f"collections/{name}"},
            )
        config = _with_time(config)
        directory = self.root / name
        self._creating.add(name)
        try:
            if directory.exists():  # left over by a crash: no collection.json in it
                await asyncio.to_thread(shutil.rmtree, directory, True)
            directory.mkdir(parents=True)
            shard = qe.EdgeShard.create(str(directory / "shard-1"), edge_config(config))
            for spec in config.payload_fields:
                shard.update(
                    qe.UpdateOperation.create_field_index(spec.name, schema_type(spec.type))
                )
            shard.flush()
            _write_meta(directory, config, 1)
        finally:
            self._creating.discard(name)
        self._collections[name] = _Collection(config, directory, 1, shard, asyncio.Lock())
        log.info("collection created", collection=name)
        return config

    async def get_collection(self, name: str) -> CollectionConfig:
        return self._get(name).config

    async def list_collections(self) -> list[CollectionConfig]:
        return [c.config for c in self._collections.values()]

    async def delete_collection(self, name: str) -> None:
        c = self._get(name)
        del self._collections[name]
        await self._shutdown(c)
        trash = self.root / f"{_DELETED_PREFIX}{name}-{os.urandom(4).hex()}"
        os.replace(c.directory, trash)
        await asyncio.to_thread(shutil.rmtree, trash, True)
        log.info("collection deleted", collection=name)

    async def stats(self, name: str) -> CollectionStats:
        c = self._get(name)
        info = c.shard.info()
        disk = await asyncio.to_thread(_disk_bytes, c.directory)
        return CollectionStats(
            points_count=info.points_count,
            indexed_vectors_count=info.indexed_vectors_count,
            segments_count=info.segments_count,
            disk_bytes=disk,
            ram_bytes=0,
            indexed_payload_points={k: v.points for k, v in info.payload_schema.items()},
        )

    # ---- optimization ----------------------------------------------------------------

    async def optimize(self, name: str) -> CollectionStats:
        c = self._get(name)
        if c.optimizing is None or c.optimizing.done():
            c.optimizing = asyncio.create_task(self._optimize(c))
        return await asyncio.shield(c.optimizing)

    async def _optimize(self, c: _Collection) -> CollectionStats:
        started = time.monotonic()
        old_generation = c.generation
        new_generation = old_generation + 1
        source, target = c.shard_dir(old_generation), c.shard_dir(new_generation)
        async with c.write_lock:
            if c.closed:
                raise collection_not_found(c.config.name)
            c.shard.flush()
            if target.exists():
                await asyncio.to_thread(shutil.rmtree, target, True)
            await asyncio.to_thread(shutil.copytree, source, target)
            c.oplog = []
        swapped = False
        try:
            c.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "datapunk_lake.vectors.optimize_worker",
                str(target),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, stderr = await c.process.communicate()
            if c.process.returncode != 0:
                raise Internal(
                    f"optimizing collection {c.config.name!r} failed "
                    f"(exit {c.process.returncode}): {stderr.decode(errors='replace')[-500:]}"
                )
            async with c.write_lock:
                if c.closed:
                    raise collection_not_found(c.config.name)
                optimized = qe.EdgeShard.load(str(target))
                for operation in c.oplog or ():
                    optimized.update(operation)
                optimized.flush()
                _write_meta(c.directory, c.config, new_generation)
                old, c.shard, c.generation = c.shard, optimized, new_generation
                c.oplog = None
                swapped = True
                old.close()
        finally:
            c.process = None
            c.oplog = None
            if not swapped:
                await asyncio.to_thread(shutil.rmtree, target, True)
        await asyncio.to_thread(shutil.rmtree, source, True)
        info = c.shard.info()
        c.unindexed_after_optimize = info.points_count - info.indexed_vectors_count
        log.info(
            "collection optimized",
            collection=c.config.name,
            generation=new_generation,
            seconds=round(time.monotonic() - started, 2),
            points=info.points_count,
            indexed=info.indexed_vectors_count,
        )
        return await self.stats(c.config.name)

    async def _auto_optimizer(self) -> None:
        """Optimize a collection in the background once it has enough unindexed points
        and its writes have paused for ``optimize_idle_seconds``."""
        while True:
            await asyncio.sleep(max(0.2, self.optimize_idle_seconds / 2))
            now = time.monotonic()
            for c in list(self._collections.values()):
                if c.closed or (c.optimizing is not None and not c.optimizing.done()):
                    continue
                if now - c.last_write < self.optimize_idle_seconds:
                    continue
                info = c.shard.info()
                unindexed = info.points_count - info.indexed_vectors_count
                if unindexed >= c.unindexed_after_optimize + self.optimize_min_unindexed:
                    c.optimizing = asyncio.create_task(self._optimize(c))
                    c.optimizing.add_done_callback(_log_failure)

    # ---- writes ----------------------------------------------------------------------

    async def _apply(self, name: str, operation: qe.UpdateOperation) -> None:
        c = self._get(name)
        async with c.write_lock:
            if c.closed:
                raise collection_not_found(name)
            c.shard.update(operation)
            if c.oplog is not None:
                c.oplog.append(operation)
            c.last_write = time.monotonic()

    async def upsert(self, name: str, points: Sequence[Point]) -> None:
        await self._apply(
            name,
            qe.UpdateOperation.upsert_points(
                [qe.Point(p.id, p.vector, p.payload) for p in points]  # type: ignore[arg-type]
            ),
        )

    async def delete(self, name: str, selector: Selector) -> None:
        if selector.ids is not None:
            operation = qe.UpdateOperation.delete_points(list(selector.ids))
        else:
            operation = qe.UpdateOperation.delete_points_by_filter(
                edge_filter(selector.filter or Filter())
            )
        await self._apply(name, operation)

    async def set_payload(self, name: str, selector: Selector, payload: Mapping[str, Any]) -> None:
        if selector.ids is not None:
            operation = qe.UpdateOperation.set_payload(list(selector.ids), dict(payload))
        else:
            operation = qe.UpdateOperation.set_payload_by_filter(
                edge_filter(selector.filter or Filter()), dict(payload)
            )
        await self._apply(name, operation)

    # ---- reads -----------------------------------------------------------------------

    async def retrieve(
        self, name: str, ids: Sequence[PointId], *, with_payload: bool, with_vector: bool
    ) -> list[Record]:
        c = self._get(name)
        found = {
            point_id_of(r.id): record_of(r)
            for r in c.shard.retrieve(list(ids), with_payload=with_payload, with_vector=with_vector)
        }
        return [found[i] for i in ids if i in found]

    async def search(self, name: str, queries: Sequence[VectorQuery]) -> list[list[ScoredPoint]]:
        c = self._get(name)
        ef = c.config.hnsw.ef
        if len(queries) == 1:
            return [[scored_of(p) for p in c.shard.query(edge_query(queries[0], ef))]]
        batch = qe.QueryBatchRequest([edge_query(q, ef) for q in queries])
        return [[scored_of(p) for p in result] for result in c.shard.query_batch(batch)]

    async def scroll(
        self,
        name: str,
        *,
        filter: Filter | None,
        offset: PointId | None,
        limit: int,
        with_payload: bool,
        with_vector: bool,
    ) -> ScrollPage:
        c = self._get(name)
        records, next_offset = c.shard.scroll(
            qe.ScrollRequest(
                offset=offset,
                limit=limit,
                filter=edge_filter(filter)
                if filter is not None and not filter.is_empty()
                else None,
                with_payload=with_payload,
                with_vector=with_vector,
            )
        )
        return ScrollPage(
            [record_of(r) for r in records],
            None if next_offset is None else point_id_of(next_offset),
        )

    async def count(self, name: str, filter: Filter | None) -> int:
        c = self._get(name)
        flt = edge_filter(filter) if filter is not None and not filter.is_empty() else None
        return c.shard.count(qe.CountRequest(exact=True, filter=flt))


def _with_time(config: CollectionConfig) -> CollectionConfig:
    from dataclasses import replace

    return replace(config, create_time=config.create_time or datetime.now(UTC))


def _log_failure(task: asyncio.Task[CollectionStats]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        log.error("background optimization failed", error=str(error))
