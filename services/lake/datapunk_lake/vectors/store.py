"""VectorStore: the vector store's rules on top of an engine. It checks every request
against the collection's configuration (vector size, finite values, payload size and
declared types, filters) and refuses a whole batch before the engine sees any of it.

Tenancy: the store takes and returns logical collection ids; the engine sees only
physical names, ``datapunk_shared.auth.tenancy``'s ``<id>`` for the default tenant and
``_<tenant>__<id>`` for the others (``_physical`` below is the one place that maps them).
A collection's payload indexes live inside its engine collection, so they follow it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from datapunk_shared.auth.tenancy import TenantNamespace, current_namespace
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
    float_fields,
    normalize_payload,
    suspect_vectors,
)

__all__ = ["COLLECTION_ID", "MAX_PHYSICAL_NAME", "VectorStore"]

COLLECTION_ID = re.compile(r"[a-z](?:[a-z0-9_-]{0,48}[a-z0-9])?")
"""A collection id, as the contract's pattern has it."""

MAX_PHYSICAL_NAME = 237
"""The longest engine collection name: Qdrant allows 255 characters, and the embedded
engine's trash directory (``.deleted-<name>-<8 hex>``) must stay within a file name's 255
bytes."""


def _physical(name: str, field: str = "name") -> tuple[TenantNamespace, str]:
    """The calling tenant's namespace and the engine's name of its collection ``name``."""
    namespace = current_namespace()
    physical = namespace.physical(
        name, pattern=COLLECTION_ID, max_length=MAX_PHYSICAL_NAME, field=field
    )
    return namespace, physical


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
        namespace, physical = _physical(config.name, "collection_id")
        with namespace.logical_errors():
            created = await self.engine.create_collection(replace(config, name=physical))
        return replace(created, name=config.name)

    async def get_collection(self, name: str) -> CollectionConfig:
        namespace, physical = _physical(name)
        with namespace.logical_errors():
            config = await self.engine.get_collection(physical)
        return replace(config, name=name)

    async def list_collections(
        self, *, after: str, limit: int
    ) -> tuple[list[CollectionConfig], str]:
        """One page of the calling tenant's collections in name order after ``after``;
        and the last name when more follow (else "")."""
        namespace = current_namespace()
        with namespace.logical_errors():
            everyone = await self.engine.list_collections()
        mine = []
        for config in everyone:
            name = namespace.logical(config.name)
            if name is not None and name > after:
                mine.append(replace(config, name=name))
        page = sorted(mine, key=lambda c: c.name)[: limit + 1]
        more = len(page) > limit
        page = page[:limit]
        return page, page[-1].name if more and page else ""

    async def delete_collection(self, name: str) -> None:
        namespace, physical = _physical(name)
        with namespace.logical_errors():
            await self.engine.delete_collection(physical)

    async def stats(self, name: str) -> CollectionStats:
        namespace, physical = _physical(name)
        with namespace.logical_errors():
            return await self.engine.stats(physical)

    async def optimize(self, name: str) -> CollectionStats:
        namespace, physical = _physical(name)
        with namespace.logical_errors():
            return await self.engine.optimize(physical)

    # ---- points ----------------------------------------------------------------------

    async def upsert(self, name: str, points: Sequence[Point], *, path: str = "points") -> int:
        namespace, physical = _physical(name, "collection")
        with namespace.logical_errors():
            config = await self.engine.get_collection(physical)
            violations: list[FieldViolation] = []
            size = config.vector_size
            suspects = suspect_vectors([p.vector for p in points], size)
            floats = float_fields(config)
            seen: set[PointId] = set()
            for index, point in enumerate(points):
                if index in suspects:
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
                    normalize_payload(point.payload, config, floats)
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
            await self.engine.upsert(physical, points)
        return len(points)

    async def retrieve(
        self, name: str, ids: Sequence[PointId], *, with_payload: bool, with_vector: bool
    ) -> list[Record]:
        namespace, physical = _physical(name, "collection")
        with namespace.logical_errors():
            return await self.engine.retrieve(
                physical, ids, with_payload=with_payload, with_vector=with_vector
            )

    async def delete(self, name: str, selector: Selector, *, path: str = "points") -> None:
        namespace, physical = _physical(name, "collection")
        with namespace.logical_errors():
            await self._check_selector(physical, selector, path)
            await self.engine.delete(physical, selector)

    async def set_payload(
        self,
        name: str,
        selector: Selector,
        payload: dict[str, Any],
        payload_bytes: int,
        *,
        path: str = "payload",
    ) -> None:
        namespace, physical = _physical(name, "collection")
        with namespace.logical_errors():
            config = await self._check_selector(physical, selector, "points")
            violations: list[FieldViolation] = []
            normalize_payload(payload, config)
            check_payload(payload, payload_bytes, config, self.max_payload_bytes, path, violations)
            if violations:
                raise _refuse(violations, "the payload was refused, nothing was written")
            await self.engine.set_payload(physical, selector, payload)

    async def _check_selector(
        self, physical: str, selector: Selector, path: str
    ) -> CollectionConfig:
        config = await self.engine.get_collection(physical)
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
        namespace, physical = _physical(name, "collection")
        with namespace.logical_errors():
            config = await self.engine.get_collection(physical)
            violations: list[FieldViolation] = []
            many = len(queries) > 1 or path.endswith("queries")
            for index, query in enumerate(queries):
                here = f"{path}[{index}]" if many else path
                check_vector(query.vector, config.vector_size, f"{here}.vector", violations)
                if query.filter is not None:
                    check_filter(query.filter, config, f"{here}.filter", violations)
            if violations:
                raise _refuse(violations, "invalid search")
            return await self.engine.search(physical, queries)

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
        namespace, physical = _physical(name, "collection")
        with namespace.logical_errors():
            await self._check_filter(physical, filter)
            return await self.engine.scroll(
                physical,
                filter=filter,
                offset=offset,
                limit=limit,
                with_payload=with_payload,
                with_vector=with_vector,
            )

    async def count(self, name: str, filter: Filter | None) -> int:
        namespace, physical = _physical(name, "collection")
        with namespace.logical_errors():
            await self._check_filter(physical, filter)
            return await self.engine.count(physical, filter)

    async def _check_filter(self, physical: str, filter: Filter | None) -> None:
        config = await self.engine.get_collection(physical)
        if filter is not None:
            violations: list[FieldViolation] = []
            check_filter(filter, config, "filter", violations)
            if violations:
                raise _refuse(violations, "invalid filter")
