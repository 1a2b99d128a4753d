"""VectorStore: the vector store's rules on top of an engine. It checks every request
against the collection's configuration (vector size, finite values, payload size and
declared types, filters) and refuses a whole batch before the engine sees any of it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datapunk_shared.errors import FieldViolation, InvalidArgument

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
    VectorEngine,
    VectorQuery,
)
from datapunk_lake.vectors.validation import (
    check_filter,
    check_payload,
    check_vector,
    normalize_payload,
)

__all__ = ["VectorStore"]


def _refuse(violations: list[FieldViolation], what: str) -> InvalidArgument:
    first = violations[0]
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return InvalidArgument(
        f"{what}: {first.field}: {first.description}{more}",
        violations=violations[:100],
        reason=first.reason,
    )


class VectorStore:
    """The vector store over one engine (embedded or server)."""

    def __init__(self, engine: VectorEngine, *, max_payload_bytes: int) -> None:
        self.engine = engine
        self.max_payload_bytes = max_payload_bytes

    async def start(self) -> None:
        await self.engine.start()

    async def close(self) -> None:
        await self.engine.close()

    # ---- collections -----------------------------------------------------------------

    async def create_collection(self, config: CollectionConfig) -> CollectionConfig:
        return await self.engine.create_collection(config)

    async def get_collection(self, name: str) -> CollectionConfig:
        return await self.engine.get_collection(name)

    async def list_collections(
        self, *, after: str, limit: int
    ) -> tuple[list[CollectionConfig], str]:
        """One page of collections in name order after ``after``; and the last name when
        more follow (else "")."""
        every = sorted(await self.engine.list_collections(), key=lambda c: c.name)
        page = [c for c in every if c.name > after][: limit + 1]
        more = len(page) > limit
        page = page[:limit]
        return page, page[-1].name if more and page else ""

    async def delete_collection(self, name: str) -> None:
        await self.engine.delete_collection(name)

    async def stats(self, name: str) -> CollectionStats:
        return await self.engine.stats(name)

    async def optimize(self, name: str) -> CollectionStats:
        return await self.engine.optimize(name)

    # ---- points ----------------------------------------------------------------------

    async def upsert(self, name: str, points: Sequence[Point], *, path: str = "points") -> int:
        config = await self.engine.get_collection(name)
        violations: list[FieldViolation] = []
        size = config.vector_size
        seen: set[PointId] = set()
        for index, point in enumerate(points):
            check_vector(point.vector, size, f"{path}[{index}].vector", violations)
            if point.id in seen:
                violations.append(
                    FieldViolation(
                        f"{path}[{index}].id",
                        f"id {point.id} appears twice in the batch",
                        "DUPLICATE_POINT_ID",
                    )
                )
            seen.add(point.id)
            if point.payload:
                normalize_payload(point.payload, config)
                check_payload(
                    point.payload,
                    point.payload_bytes,
                    config,
                    self.max_payload_bytes,
                    f"{path}[{index}].payload",
                    violations,
                )
        if violations:
            raise _refuse(violations, "the batch was refused, nothing was written")
        await self.engine.upsert(name, points)
        return len(points)

    async def retrieve(
        self, name: str, ids: Sequence[PointId], *, with_payload: bool, with_vector: bool
    ) -> list[Record]:
        return await self.engine.retrieve(
            name, ids, with_payload=with_payload, with_vector=with_vector
        )

    async def delete(self, name: str, selector: Selector, *, path: str = "points") -> None:
        await self._check_selector(name, selector, path)
        await self.engine.delete(name, selector)

    async def set_payload(
        self,
        name: str,
        selector: Selector,
        payload: dict[str, Any],
        payload_bytes: int,
        *,
        path: str = "payload",
    ) -> None:
        config = await self._check_selector(name, selector, "points")
        violations: list[FieldViolation] = []
        normalize_payload(payload, config)
        check_payload(payload, payload_bytes, config, self.max_payload_bytes, path, violations)
        if violations:
            raise _refuse(violations, "the payload was refused, nothing was written")
        await self.engine.set_payload(name, selector, payload)

    async def _check_selector(self, name: str, selector: Selector, path: str) -> CollectionConfig:
        config = await self.engine.get_collection(name)
        if selector.filter is not None:
            violations: list[FieldViolation] = []
            check_filter(selector.filter, config, f"{path}.filter", violations)
            if violations:
                raise _refuse(violations, "invalid filter")
        return config

    # ---- reads -----------------------------------------------------------------------

    async def search(
        self, name: str, queries: Sequence[VectorQuery], *, path: str = "query"
    ) -> list[list[ScoredPoint]]:
        config = await self.engine.get_collection(name)
        violations: list[FieldViolation] = []
        many = len(queries) > 1 or path.endswith("queries")
        for index, query in enumerate(queries):
            here = f"{path}[{index}]" if many else path
            check_vector(query.vector, config.vector_size, f"{here}.vector", violations)
            if query.filter is not None:
                check_filter(query.filter, config, f"{here}.filter", violations)
        if violations:
            raise _refuse(violations, "invalid search")
        return await self.engine.search(name, queries)

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
        await self._check_filter(name, filter)
        return await self.engine.scroll(
            name,
            filter=filter,
            offset=offset,
            limit=limit,
            with_payload=with_payload,
            with_vector=with_vector,
        )

    async def count(self, name: str, filter: Filter | None) -> int:
        await self._check_filter(name, filter)
        return await self.engine.count(name, filter)

    async def _check_filter(self, name: str, filter: Filter | None) -> None:
        config = await self.engine.get_collection(name)
        if filter is not None:
            violations: list[FieldViolation] = []
            check_filter(filter, config, "filter", violations)
            if violations:
                raise _refuse(violations, "invalid filter")
