"""The server engine: a Qdrant server through qdrant-client (``vectors.engine = "server"``).

The Lake's configuration of each collection (declared fields, default search ef,
description, creation time) is kept in the collection's own metadata, so the server is
the only state. Writes use ``wait=true``: they return once the server applied them.
Connection failures become UNAVAILABLE with a retry hint; nothing is acknowledged that
the server did not confirm."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from datapunk_shared.errors import AlreadyExists, DatapunkError, Internal, engine_unavailable
from qdrant_client import AsyncQdrantClient
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

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
)
from datapunk_lake.vectors.embedded import collection_not_found
from datapunk_lake.vectors.server_translate import (
    collection_params,
    config_from_info,
    point_struct,
    query_request,
    record_of,
    schema_type,
    scored_of,
    selector,
    server_filter,
    stats_of,
)

__all__ = ["ServerEngine", "map_error"]

T = TypeVar("T")


def map_error(exc: BaseException, collection: str | None = None) -> DatapunkError:
    """The Datapunk error for a qdrant-client exception."""
    if isinstance(exc, DatapunkError):
        return exc
    if isinstance(exc, ResponseHandlingException | httpx.TransportError | ConnectionError):
        return engine_unavailable("qdrant", f"the Qdrant server cannot be reached: {exc}")
    if isinstance(exc, UnexpectedResponse):
        if exc.status_code == 404 and collection is not None:
            return collection_not_found(collection)
        if exc.status_code == 409 and collection is not None:
            return AlreadyExists(
                f"collection {collection!r} exists already",
                reason="COLLECTION_ALREADY_EXISTS",
                metadata={"collection": f"collections/{collection}"},
            )
        if exc.status_code in (502, 503, 504):
            return engine_unavailable("qdrant", f"the Qdrant server answered {exc.status_code}")
    return Internal(f"unexpected answer from the Qdrant server: {exc}")


class ServerEngine:
    """The VectorEngine over a Qdrant server."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 30.0) -> None:
        self.url = url
        self._client = AsyncQdrantClient(url=url, api_key=api_key, timeout=int(timeout))
        self._configs: dict[str, CollectionConfig] = {}

    async def _call(self, awaitable: Awaitable[T], collection: str | None = None) -> T:
        try:
            return await awaitable
        except Exception as exc:
            raise map_error(exc, collection) from exc

    async def start(self) -> None:
        """Nothing to open: the client connects lazily, so a server that is down at start
        does not keep the Lake from starting (its calls answer UNAVAILABLE)."""

    async def close(self) -> None:
        await self._client.close()

    async def create_collection(self, config: CollectionConfig) -> CollectionConfig:
        config = replace(config, create_time=config.create_time or datetime.now(UTC))
        name = config.name
        if await self._call(self._client.collection_exists(name)):
            raise map_error(UnexpectedResponse(409, "Conflict", b"", httpx.Headers()), name)
        await self._call(self._client.create_collection(**collection_params(config)), name)
        for spec in config.payload_fields:
            await self._call(
                self._client.create_payload_index(
                    name, spec.name, field_schema=schema_type(spec.type), wait=True
                ),
                name,
            )
        self._configs[name] = config
        return config

    async def get_collection(self, name: str) -> CollectionConfig:
        cached = self._configs.get(name)
        if cached is not None:
            return cached
        info = await self._call(self._client.get_collection(name), name)
        try:
            config = config_from_info(name, info)
        except ValueError:
            raise collection_not_found(name) from None
        self._configs[name] = config
        return config

    async def list_collections(self) -> list[CollectionConfig]:
        response = await self._call(self._client.get_collections())
        configs = []
        for description in response.collections:
            try:
                configs.append(await self.get_collection(description.name))
            except DatapunkError:
                continue  # not a Lake collection, or deleted meanwhile
        return configs

    async def delete_collection(self, name: str) -> None:
        await self.get_collection(name)
        self._configs.pop(name, None)
        await self._call(self._client.delete_collection(name), name)

    async def stats(self, name: str) -> CollectionStats:
        return stats_of(await self._call(self._client.get_collection(name), name))

    async def optimize(self, name: str) -> CollectionStats:
        """A Qdrant server optimizes in the background by itself; report where it is."""
        return await self.stats(name)

    async def upsert(self, name: str, points: Sequence[Point]) -> None:
        await self._call(
            self._client.upsert(name, [point_struct(p) for p in points], wait=True), name
        )

    async def retrieve(
        self, name: str, ids: Sequence[PointId], *, with_payload: bool, with_vector: bool
    ) -> list[Record]:
        records = await self._call(
            self._client.retrieve(
                name, list(ids), with_payload=with_payload, with_vectors=with_vector
            ),
            name,
        )
        found = {r.id: r for r in (record_of(x) for x in records)}
        return [found[i] for i in ids if i in found]

    async def delete(self, name: str, selector_: Selector) -> None:
        await self._call(
            self._client.delete(name, points_selector=selector(selector_), wait=True), name
        )

    async def set_payload(self, name: str, selector_: Selector, payload: Mapping[str, Any]) -> None:
        await self._call(
            self._client.set_payload(name, dict(payload), points=selector(selector_), wait=True),
            name,
        )

    async def search(self, name: str, queries: Sequence[VectorQuery]) -> list[list[ScoredPoint]]:
        config = await self.get_collection(name)
        requests = [query_request(q, config.hnsw.ef) for q in queries]
        responses = await self._call(self._client.query_batch_points(name, requests), name)
        return [[scored_of(p) for p in response.points] for response in responses]

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
        records, next_offset = await self._call(
            self._client.scroll(
                name,
                scroll_filter=server_filter(filter) if filter and not filter.is_empty() else None,
                limit=limit,
                offset=offset,
                with_payload=with_payload,
                with_vectors=with_vector,
            ),
            name,
        )
        return ScrollPage(
            [record_of(r) for r in records],
            None
            if next_offset is None
            else (next_offset if isinstance(next_offset, int) else str(next_offset)),
        )

    async def count(self, name: str, filter: Filter | None) -> int:
        result = await self._call(
            self._client.count(
                name,
                count_filter=server_filter(filter) if filter and not filter.is_empty() else None,
                exact=True,
            ),
            name,
        )
        return result.count
