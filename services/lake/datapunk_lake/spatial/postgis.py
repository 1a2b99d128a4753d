"""The spatial store on PostGIS, through a psycopg 3 connection pool.

Storage: one table per layer, ``lake_spatial."<layer_id>"`` (see migration 0002 for why),
with ``id text COLLATE "C" PRIMARY KEY``, ``geom geometry(Geometry, 4326)``,
``properties jsonb``, a GiST index on ``geom`` (intersection and bounding-box queries) and
a GiST index on ``geom::geography`` (distances in metres: ``ST_DWithin`` and k-nearest
``<->``). Layer ids are checked against a strict pattern and always composed as quoted
identifiers; every value is a bound parameter.

Tenancy: each tenant's layer tables live in a schema of their own (``tenant_schema``, the
one place that maps a tenant to its tables): ``lake_spatial`` for the default tenant (where
layers were before tenancy), ``lake_spatial__<tenant>`` for the others. Layer ids, table
names and the GiST index names (``<layer_id>_geom``, ``<layer_id>_geog``, in the table's
schema) stay as they are, within PostgreSQL's 63-byte limit whatever the tenant (at most
14 + 32 bytes of schema name). The catalog ``lake.spatial_layers`` is keyed by
(tenant, layer_id) (migration 0003). A tenant's calls name only its own schema, so
another tenant's layer is simply not there: NOT_FOUND, as for any missing layer.

Writes: each batch is one transaction. A batch of points goes straight into the layer's
table with binary COPY (geometries as EWKB and the whole COPY payload built in the Lake,
while the batch before it is being written); when that meets an id that
exists already, or the batch holds lines or polygons, the batch is copied into a temporary
staging table instead, checked with ``ST_IsValidReason`` and merged with
``INSERT ... ON CONFLICT (id) DO UPDATE``. Either way the batch commits whole or not at all,
and it is acknowledged only after the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import struct
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, LiteralString, NoReturn

import psycopg
from datapunk_shared.auth.tenancy import DEFAULT_TENANT, current_tenant, is_tenant_id
from datapunk_shared.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
    engine_unavailable,
)
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from datapunk_lake.spatial.domain import (
    DEFAULT_PAGE_SIZE,
    Area,
    BoundingBox,
    Feature,
    FeatureDistance,
    FeatureInput,
    FeatureRef,
    Layer,
    LoadAck,
    Page,
    Relation,
)
from datapunk_lake.spatial.geojson import (
    GeoJSONError,
    Geometry,
    bbox_geometry,
    parse_geometry,
    parse_properties,
)
from datapunk_lake.spatial.paging import decode_token, encode_token, fingerprint

__all__ = [
    "FEATURE_SCHEMA",
    "PostgisSpatialStore",
    "PreparedBatch",
    "prepare_batch",
    "tenant_schema",
]

FEATURE_SCHEMA = "lake_spatial"
"""The schema of the default tenant's layer tables; other tenants' are named after it."""
_JSONB_VERSION = b"\x01"  # binary COPY of jsonb: a version byte, then the JSON text
# PostgreSQL's binary COPY format: a signature, flags and header extension length; per row
# the field count, then each field as its length and bytes; -1 as the trailer.
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_ROW_HEAD = struct.Struct(">hi")  # 3 fields, then the id's length
_STAGED_ROW_HEAD = struct.Struct(">hiii")  # 4 fields, the ordinal (int4), the id's length
_LENGTH = struct.Struct(">i")
_MAX_VIOLATIONS = 20
_PREPARE_STEP = 500  # features prepared between two turns of the event loop
_GEOJSON_DIGITS = 17  # enough decimal digits to give back every double as it was written
_STAGE = "spatial_stage"


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A checked batch, ready for COPY: rows of (id, EWKB, jsonb binary), and, when no
    geometry needs PostGIS's validity check, the binary COPY payload of those rows."""

    rows: list[tuple[str, bytes, bytes]]
    needs_validity_check: bool
    copy_data: bytes = b""


def _copy_rows(rows: Sequence[tuple[str, bytes, bytes]]) -> bytes:
    """``rows`` (id text, geometry EWKB, jsonb) as binary COPY rows of a layer table."""
    length, head = _LENGTH.pack, _ROW_HEAD.pack
    parts: list[bytes] = []
    for fid, ewkb, properties in rows:
        text = fid.encode()
        parts += (head(3, len(text)), text, length(len(ewkb)), ewkb)
        parts += (length(len(properties)), properties)
    return b"".join(parts)


def _staged_copy(rows: Sequence[tuple[str, bytes, bytes]]) -> bytes:
    """The binary COPY payload of ``rows`` for the staging table: each row preceded by
    its ordinal (int4)."""
    length, head = _LENGTH.pack, _STAGED_ROW_HEAD.pack
    parts = [_COPY_SIGNATURE]
    for ordinal, (fid, ewkb, properties) in enumerate(rows):
        text = fid.encode()
        parts += (head(4, 4, ordinal, len(text)), text, length(len(ewkb)), ewkb)
        parts += (length(len(properties)), properties)
    parts.append(_COPY_TRAILER)
    return b"".join(parts)


def _violation_error(violations: list[FieldViolation], what: str) -> InvalidArgument:
    first = violations[0]
    return InvalidArgument(
        f"{what}: " + "; ".join(f"{v.field}: {v.description}" for v in violations[:3]),
        violations=violations,
        reason=first.reason,
    )


def prepare_batch(
    features: Sequence[FeatureInput], max_properties_bytes: int, prefix: str = "features"
) -> PreparedBatch:
    """Check and encode a batch; raise InvalidArgument naming every bad field (up to 20)."""
    steps = _prepare_steps(features, max_properties_bytes, prefix, step=0)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            batch: PreparedBatch = done.value
            return batch


async def prepare_batch_cooperatively(
    features: Sequence[FeatureInput], max_properties_bytes: int
) -> PreparedBatch:
    """``prepare_batch``, letting the event loop run every ``_PREPARE_STEP`` features: a
    bulk load prepares a batch while the one before it is written, and that write must
    not wait for a whole batch's parsing to send its data or to be acknowledged."""
    steps = _prepare_steps(features, max_properties_bytes, "features", _PREPARE_STEP)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            batch: PreparedBatch = done.value
            return batch
        await asyncio.sleep(0)


def _prepare_steps(
    features: Sequence[FeatureInput], max_properties_bytes: int, prefix: str, step: int
) -> Generator[None, None, PreparedBatch]:
    """What ``prepare_batch`` does, yielding after every ``step`` features (never when
    ``step`` is 0); the COPY payload is built as it goes, while no geometry needs the
    validity check."""
    rows: list[tuple[str, bytes, bytes]] = []
    violations: list[FieldViolation] = []
    check = False
    payload = [_COPY_SIGNATURE]
    encoded = 0  # rows already in payload
    for index, feature in enumerate(features):
        if step and index and index % step == 0:
            if not check and not violations:
                payload.append(_copy_rows(rows[encoded:]))
                encoded = len(rows)
            yield
        try:
            geometry = parse_geometry(feature.geometry)
        except GeoJSONError as exc:
            violations.append(
                FieldViolation(f"{prefix}[{index}].geometry", exc.description, exc.reason)
            )
            geometry = None
        try:
            properties = parse_properties(feature.properties, max_properties_bytes)
        except GeoJSONError as exc:
            violations.append(
                FieldViolation(f"{prefix}[{index}].properties", exc.description, exc.reason)
            )
            continue
        if geometry is None:
            continue
        if len(violations) >= _MAX_VIOLATIONS:
            break
        check = check or geometry.needs_validity_check
        rows.append((feature.id, geometry.ewkb, _JSONB_VERSION + properties))
    if violations:
        raise _violation_error(violations[:_MAX_VIOLATIONS], "invalid features")
    if check:
        return PreparedBatch(rows, check)
    payload += (_copy_rows(rows[encoded:]), _COPY_TRAILER)
    return PreparedBatch(rows, check, b"".join(payload))


def _query_geometry(text: str, field: str) -> bytes:
    try:
        return parse_geometry(text).ewkb
    except GeoJSONError as exc:
        violation = FieldViolation(field, exc.description, exc.reason)
        raise _violation_error([violation], field) from None


def tenant_schema(tenant: str) -> str:
    """The schema that holds ``tenant``'s layer tables (a well-formed tenant id, which
    contains no ``_``, so no two tenants share a schema)."""
    if tenant == DEFAULT_TENANT:
        return FEATURE_SCHEMA
    if not is_tenant_id(tenant):
        raise ValueError(f"not a tenant id: {tenant!r}")
    return f"{FEATURE_SCHEMA}__{tenant}"


def _calling_tenant() -> tuple[str, str]:
    """The calling tenant and the schema of its layer tables."""
    tenant = current_tenant()
    return tenant, tenant_schema(tenant)


def _layer_name(layer_id: str) -> str:
    return f"layers/{layer_id}"


def _layer_not_found(layer_id: str) -> NotFound:
    return NotFound(
        f"layer {_layer_name(layer_id)} does not exist",
        reason="LAYER_NOT_FOUND",
        metadata={"layer": _layer_name(layer_id)},
    )


def _feature_not_found(layer_id: str, feature_id: str) -> NotFound:
    name = f"{_layer_name(layer_id)}/features/{feature_id}"
    return NotFound(
        f"feature {name} does not exist",
        reason="FEATURE_NOT_FOUND",
        metadata={"layer": _layer_name(layer_id), "feature": name},
    )


def _unavailable(exc: BaseException) -> Unavailable:
    return engine_unavailable(
        "postgres",
        f"PostgreSQL is unavailable: {type(exc).__name__}; nothing was written by this call "
        "unless it was acknowledged",
    )


@contextlib.contextmanager
def _engine_errors(layer_id: str | None = None) -> Iterator[None]:
    """Map psycopg errors to the error vocabulary. An unknown table is the layer's table
    when ``layer_id`` is given, the store's catalog (migrations not applied yet) otherwise."""
    try:
        yield
    except (pg_errors.UndefinedTable, pg_errors.InvalidSchemaName):
        # InvalidSchemaName: the tenant has no layer at all yet.
        if layer_id is not None:
            raise _layer_not_found(layer_id) from None
        raise engine_unavailable(
            "postgres",
            "the spatial store's schema is not ready yet (migrations pending)",
            reason="SCHEMA_NOT_READY",
        ) from None
    except pg_errors.DataError as exc:
        # Values the Lake let through but PostgreSQL refused (e.g. a lone UTF-16
        # surrogate in properties): the client's input, not an engine failure.
        message = exc.diag.message_primary or str(exc)
        raise InvalidArgument(
            f"PostgreSQL refused the data: {message}", reason="REJECTED_BY_ENGINE"
        ) from None
    except (psycopg.OperationalError, PoolTimeout, OSError) as exc:
        raise _unavailable(exc) from exc


@functools.lru_cache(maxsize=4096)
def _sql(
    template: LiteralString, layer_id: str, other: str = "", schema: str = FEATURE_SCHEMA
) -> sql.Composed:
    """``template`` with ``{t}`` (and ``{u}``) bound to the tables of layers ``layer_id``
    (and ``other``) in ``schema``, cached per layer."""
    names: dict[str, Any] = {
        "t": sql.Identifier(schema, layer_id),
        "geom_index": sql.Identifier(f"{layer_id}_geom"),
        "geog_index": sql.Identifier(f"{layer_id}_geog"),
    }
    if other:
        names["u"] = sql.Identifier(schema, other)
    return sql.SQL(template).format(**names)


@functools.lru_cache(maxsize=4096)
def _query(template: LiteralString, layer_id: str, schema: str) -> bytes:
    """``_sql`` rendered once to the bytes psycopg sends, for the statements every read
    runs: psycopg renders a composed statement again on every execution."""
    return _sql(template, layer_id, schema=schema).as_bytes(None)


_FEATURE_COLUMNS = "id, ST_AsGeoJSON(geom, 17), properties::text"

_CREATE_TABLE: LiteralString = """
CREATE TABLE {t} (
    id         text COLLATE "C" PRIMARY KEY,
    geom       geometry(Geometry, 4326) NOT NULL,
    properties jsonb NOT NULL DEFAULT '{{}}'::jsonb
               CHECK (jsonb_typeof(properties) = 'object')
);
CREATE INDEX {geom_index} ON {t} USING gist (geom);
CREATE INDEX {geog_index} ON {t} USING gist ((geom::geography));
"""

_GET = "SELECT " + _FEATURE_COLUMNS + " FROM {t} WHERE id = %s"
_LIST = "SELECT " + _FEATURE_COLUMNS + " FROM {t} WHERE id > %s ORDER BY id LIMIT %s"
_DELETE = "DELETE FROM {t} WHERE id = %s"
_COUNT = "SELECT count(*) FROM {t}"
_COPY = "COPY {t} (id, geom, properties) FROM STDIN (FORMAT BINARY)"
_MERGE = """
INSERT INTO {t} AS f (id, geom, properties)
SELECT DISTINCT ON (id) id, geom, properties FROM pg_temp.spatial_stage ORDER BY id, ord DESC
ON CONFLICT (id) DO UPDATE SET geom = EXCLUDED.geom, properties = EXCLUDED.properties
"""
# Radius: ST_DWithin on geography is rewritten by PostGIS into an index condition on the
# geography GiST index; results are ordered by distance, then id (the page key). The first
# page has no page key to compare with: its own statement spares PostgreSQL the filter
# (and the planning of it, since these statements are planned per call).
_WITHIN_FIRST = """
SELECT id, ST_AsGeoJSON(geom, 17), properties::text,
       ST_Distance(geom::geography, ST_GeomFromEWKB(%(c)s)::geography) AS d
FROM {t}
WHERE ST_DWithin(geom::geography, ST_GeomFromEWKB(%(c)s)::geography, %(r)s)
ORDER BY d, id
LIMIT %(n)s
"""
_WITHIN = """
SELECT id, ST_AsGeoJSON(geom, 17), properties::text, d FROM (
    SELECT id, geom, properties,
           ST_Distance(geom::geography, ST_GeomFromEWKB(%(c)s)::geography) AS d
    FROM {t}
    WHERE ST_DWithin(geom::geography, ST_GeomFromEWKB(%(c)s)::geography, %(r)s)
) s
WHERE d > %(d)s OR (d = %(d)s AND id > %(id)s)
ORDER BY d, id
LIMIT %(n)s
"""
# k nearest: an ordered scan of the geography GiST index (<-> on geography is the
# great-circle distance in metres) for the k nearest, in the inner query (ordering it by
# anything more than <-> would lose the index scan); the outer query orders them by
# (distance, id) and keeps the page after the (distance, id) of the previous page (the
# first page: all of them).
_NEAREST_FIRST = """
SELECT id, ST_AsGeoJSON(geom, 17), properties::text, d FROM (
    SELECT id, geom, properties,
           geom::geography <-> ST_GeomFromEWKB(%(c)s)::geography AS d
    FROM {t}
    ORDER BY geom::geography <-> ST_GeomFromEWKB(%(c)s)::geography
    LIMIT %(k)s
) s
ORDER BY d, id
LIMIT %(n)s
"""
_NEAREST = """
SELECT id, ST_AsGeoJSON(geom, 17), properties::text, d FROM (
    SELECT id, geom, properties,
           geom::geography <-> ST_GeomFromEWKB(%(c)s)::geography AS d
    FROM {t}
    ORDER BY geom::geography <-> ST_GeomFromEWKB(%(c)s)::geography
    LIMIT %(k)s
) s
WHERE d > %(d)s OR (d = %(d)s AND id > %(id)s)
ORDER BY d, id
LIMIT %(n)s
"""
_INTERSECTS = (
    "SELECT "
    + _FEATURE_COLUMNS
    + " FROM {t} WHERE ST_Intersects(geom, ST_GeomFromEWKB(%s)) AND id > %s ORDER BY id LIMIT %s"
)
_WITHIN_AREA = (
    "SELECT "
    + _FEATURE_COLUMNS
    + " FROM {t} WHERE ST_Within(geom, ST_GeomFromEWKB(%s)) AND id > %s ORDER BY id LIMIT %s"
)
_DISTANCE = """
SELECT a IS NULL, b IS NULL, ST_Distance(a::geography, b::geography) FROM (
    SELECT (SELECT geom FROM {t} WHERE id = %s) AS a, (SELECT geom FROM {u} WHERE id = %s) AS b
) s
"""


class PostgisSpatialStore:
    """:class:`~datapunk_lake.spatial.domain.SpatialStore` on PostGIS."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        max_page_size: int,
        max_properties_bytes: int,
        pool_timeout: float,
    ) -> None:
        self._pool = pool
        self._max_page_size = max_page_size
        self._max_properties_bytes = max_properties_bytes
        self._pool_timeout = pool_timeout

    async def close(self) -> None:
        """The pool belongs to the Lake, which closes it."""

    def _page_size(self, requested: int) -> int:
        return min(requested or DEFAULT_PAGE_SIZE, self._max_page_size)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with self._pool.connection(timeout=self._pool_timeout) as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _read_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection in autocommit mode while it is lent to a read: a single SELECT
        needs no BEGIN/COMMIT, which saves the COMMIT round trip the pool would make when
        it takes the connection back. The pool's own mode is restored before that."""
        async with (
            self._pool.connection(timeout=self._pool_timeout) as conn,
            _autocommit(conn),
        ):
            yield conn

    # -- layers ------------------------------------------------------------------------

    async def create_layer(self, layer_id: str, description: str) -> Layer:
        tenant, schema = _calling_tenant()
        with _engine_errors():
            await self._create_schema(schema)
            async with self._connection() as conn, conn.transaction():
                cursor = await conn.execute(
                    "INSERT INTO lake.spatial_layers (tenant, layer_id, description)"
                    " VALUES (%s, %s, %s)"
                    " ON CONFLICT (tenant, layer_id) DO NOTHING RETURNING create_time",
                    (tenant, layer_id, description),
                )
                row = await cursor.fetchone()
                if row is None:
                    raise _already_exists(layer_id)
                try:
                    await conn.execute(_sql(_CREATE_TABLE, layer_id, schema=schema))
                except pg_errors.DuplicateTable:
                    raise _already_exists(layer_id) from None
        return Layer(layer_id, description, row[0], 0)

    async def _create_schema(self, schema: str) -> None:
        """Create a tenant's schema when its first layer comes, in a transaction of its
        own: two first layers of one tenant at once race for it, and the loser's
        unique violation (the schema exists now) is no error."""
        async with self._connection() as conn:
            try:
                async with conn.transaction():
                    await conn.execute(
                        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
                    )
            except (pg_errors.UniqueViolation, pg_errors.DuplicateSchema):
                pass

    async def get_layer(self, layer_id: str) -> Layer:
        tenant, schema = _calling_tenant()
        with _engine_errors():
            async with self._read_connection() as conn:
                cursor = await conn.execute(
                    "SELECT description, create_time FROM lake.spatial_layers"
                    " WHERE tenant = %s AND layer_id = %s",
                    (tenant, layer_id),
                )
                row = await cursor.fetchone()
                if row is None:
                    raise _layer_not_found(layer_id)
                with _engine_errors(layer_id):
                    statement = _sql(_COUNT, layer_id, schema=schema)
                    count = await (await conn.execute(statement)).fetchone()
        return Layer(layer_id, row[0], row[1], int(count[0]) if count else 0)

    async def list_layers(self, page_size: int, page_token: str) -> Page[Layer]:
        tenant, _ = _calling_tenant()
        size = self._page_size(page_size)
        query = fingerprint("layers")
        position = decode_token(page_token, query, (str,))
        after = position[0] if position else ""
        with _engine_errors():
            async with self._read_connection() as conn:
                cursor = await conn.execute(
                    "SELECT layer_id, description, create_time FROM lake.spatial_layers"
                    " WHERE tenant = %s AND layer_id > %s ORDER BY layer_id LIMIT %s",
                    (tenant, after, size + 1),
                )
                rows = await cursor.fetchall()
        layers = [Layer(r[0], r[1], r[2]) for r in rows[:size]]
        token = encode_token(query, [layers[-1].layer_id]) if len(rows) > size else ""
        return Page(layers, token)

    async def delete_layer(self, layer_id: str) -> None:
        tenant, schema = _calling_tenant()
        with _engine_errors():
            async with self._connection() as conn, conn.transaction():
                cursor = await conn.execute(
                    "DELETE FROM lake.spatial_layers WHERE tenant = %s AND layer_id = %s",
                    (tenant, layer_id),
                )
                if cursor.rowcount == 0:
                    raise _layer_not_found(layer_id)
                await conn.execute(_sql("DROP TABLE IF EXISTS {t}", layer_id, schema=schema))

    # -- writes ------------------------------------------------------------------------

    async def upsert_features(self, layer_id: str, features: Sequence[FeatureInput]) -> int:
        _, schema = _calling_tenant()
        batch = prepare_batch(features, self._max_properties_bytes)
        with _engine_errors(layer_id):
            async with self._connection() as conn:
                return await _write_batch(conn, layer_id, schema, batch, "features")

    async def load_features(
        self, layer_id: str, batches: AsyncIterator[Sequence[FeatureInput]]
    ) -> AsyncIterator[LoadAck]:
        """Batches are parsed one ahead of the batch being written (a queue of one), so
        the Lake's parsing overlaps PostgreSQL's writing, and a bad batch surfaces only
        after every batch before it was written and acknowledged."""
        _, schema = _calling_tenant()
        queue: asyncio.Queue[PreparedBatch | BaseException | None] = asyncio.Queue(maxsize=1)

        async def produce() -> None:
            try:
                index = 0
                async for features in batches:
                    try:
                        prepared = await prepare_batch_cooperatively(
                            features, self._max_properties_bytes
                        )
                    except InvalidArgument as exc:
                        exc.metadata["batch_index"] = str(index)
                        raise
                    await queue.put(prepared)
                    index += 1
                await queue.put(None)
            except Exception as exc:  # delivered in order, after the batches before it
                await queue.put(exc)

        producer = asyncio.create_task(produce())
        total = 0
        try:
            with _engine_errors(layer_id):
                async with self._connection() as conn:
                    index = 0
                    while True:
                        item = await queue.get()
                        if item is None:
                            break
                        if isinstance(item, BaseException):
                            raise item
                        try:
                            written = await _write_batch(conn, layer_id, schema, item, "features")
                        except InvalidArgument as exc:
                            exc.metadata["batch_index"] = str(index)
                            raise
                        total += written
                        yield LoadAck(index, written, total)
                        index += 1
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer

    async def delete_feature(self, layer_id: str, feature_id: str) -> None:
        _, schema = _calling_tenant()
        with _engine_errors(layer_id):
            async with self._connection() as conn:
                cursor = await conn.execute(_sql(_DELETE, layer_id, schema=schema), (feature_id,))
        if cursor.rowcount == 0:
            raise _feature_not_found(layer_id, feature_id)

    # -- reads -------------------------------------------------------------------------

    async def get_feature(self, layer_id: str, feature_id: str) -> Feature:
        _, schema = _calling_tenant()
        rows = await self._fetch(layer_id, _query(_GET, layer_id, schema), (feature_id,))
        if not rows:
            raise _feature_not_found(layer_id, feature_id)
        return Feature(*rows[0])

    async def list_features(self, layer_id: str, page_size: int, page_token: str) -> Page[Feature]:
        _, schema = _calling_tenant()
        size = self._page_size(page_size)
        position = decode_token(page_token, fingerprint("features", layer_id), (str,))
        after = position[0] if position else ""
        statement = _query(_LIST, layer_id, schema)
        rows = await self._fetch(layer_id, statement, (after, size + 1))
        features = [Feature(*row) for row in rows[:size]]
        token = ""
        if len(rows) > size:
            token = encode_token(fingerprint("features", layer_id), [features[-1].id])
        return Page(features, token)

    async def search_within_distance(
        self,
        layer_id: str,
        geometry: str,
        distance_meters: float,
        page_size: int,
        page_token: str,
    ) -> Page[FeatureDistance]:
        _, schema = _calling_tenant()
        center = _query_geometry(geometry, "geometry")
        size = self._page_size(page_size)

        def query() -> str:
            return fingerprint("within", layer_id, center.hex(), distance_meters)

        params: dict[str, Any] = {"c": center, "r": distance_meters, "n": size + 1}
        template = _WITHIN_FIRST
        if page_token:
            after_d, after_id = decode_token(page_token, query(), (float, str)) or (-1.0, "")
            params.update(d=after_d, id=after_id)
            template = _WITHIN
        rows = await self._fetch(layer_id, _query(template, layer_id, schema), params)
        return _distance_page(rows, size, query, None)

    async def search_nearest(
        self, layer_id: str, geometry: str, limit: int, page_size: int, page_token: str
    ) -> Page[FeatureDistance]:
        _, schema = _calling_tenant()
        center = _query_geometry(geometry, "geometry")

        def query() -> str:
            return fingerprint("nearest", layer_id, center.hex(), limit)

        position = decode_token(page_token, query(), (float, str, int)) if page_token else None
        returned = position[2] if position else 0
        size = min(self._page_size(page_size or limit), limit - returned)
        if size <= 0:
            return Page([], "")
        params: dict[str, Any] = {"c": center, "k": limit, "n": size + 1}
        template = _NEAREST_FIRST
        if position:
            params.update(d=position[0], id=position[1])
            template = _NEAREST
        rows = await self._fetch(layer_id, _query(template, layer_id, schema), params)
        return _distance_page(rows, size, query, returned, more=returned + size < limit)

    async def search_intersecting(
        self, layer_id: str, area: Area, relation: Relation, page_size: int, page_token: str
    ) -> Page[Feature]:
        _, schema = _calling_tenant()
        if isinstance(area, BoundingBox):
            shape: Geometry = bbox_geometry(area.west, area.south, area.east, area.north)
            ewkb = shape.ewkb
        else:
            ewkb = _query_geometry(area, "geometry")
        size = self._page_size(page_size)

        def query() -> str:
            return fingerprint("intersecting", layer_id, ewkb.hex(), relation.value)

        position = decode_token(page_token, query(), (str,)) if page_token else None
        after = position[0] if position else ""
        template = _INTERSECTS if relation is Relation.INTERSECTS else _WITHIN_AREA
        statement = _query(template, layer_id, schema)
        rows = await self._fetch(layer_id, statement, (ewkb, after, size + 1))
        features = [Feature(*row) for row in rows[:size]]
        token = encode_token(query(), [features[-1].id]) if len(rows) > size else ""
        return Page(features, token)

    async def compute_distance(self, first: FeatureRef, second: FeatureRef) -> float:
        _, schema = _calling_tenant()
        statement = _sql(_DISTANCE, first.layer_id, second.layer_id, schema)
        try:
            rows = await self._fetch(
                first.layer_id, statement, (first.feature_id, second.feature_id)
            )
        except NotFound:
            # Which of the two layers is missing?
            await self.get_layer(first.layer_id)
            await self.get_layer(second.layer_id)
            raise
        first_missing, second_missing, distance = rows[0]
        if first_missing:
            raise _feature_not_found(first.layer_id, first.feature_id)
        if second_missing:
            raise _feature_not_found(second.layer_id, second.feature_id)
        return float(distance)

    async def _fetch(
        self, layer_id: str, statement: bytes | sql.Composed, params: Any
    ) -> list[Any]:
        """The rows of one read, on a connection lent in autocommit mode (what
        ``_read_connection`` does, written out: every query pays for this path, and
        three nested context managers cost more than the lines they save)."""
        with _engine_errors(layer_id):
            conn = await self._pool.getconn(timeout=self._pool_timeout)
            try:
                await conn.set_autocommit(True)
                cursor = await conn.execute(statement, params)
                return await cursor.fetchall()
            finally:
                try:
                    if not conn.closed:
                        await conn.set_autocommit(False)
                finally:
                    await self._pool.putconn(conn)


@contextlib.asynccontextmanager
async def _autocommit(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
    """``conn`` in autocommit mode for the block, then back in the pool's mode. A
    connection that broke meanwhile is left as it is: the pool discards it."""
    await conn.set_autocommit(True)
    try:
        yield
    finally:
        if not conn.closed:
            await conn.set_autocommit(False)


def _already_exists(layer_id: str) -> AlreadyExists:
    return AlreadyExists(
        f"layer {_layer_name(layer_id)} exists already",
        reason="LAYER_ALREADY_EXISTS",
        metadata={"layer": _layer_name(layer_id)},
    )


def _distance_page(
    rows: list[Any],
    size: int,
    query: Callable[[], str],
    returned: int | None,
    *,
    more: bool = True,
) -> Page[FeatureDistance]:
    """A page of (id, geometry, properties, distance) rows. ``query`` gives the query's
    fingerprint (computed only when a token is made); ``returned`` (k-nearest only)
    counts the results of earlier pages and goes into the token; ``more`` is False when
    no page may follow whatever the rows say."""
    items = [FeatureDistance(Feature(r[0], r[1], r[2]), float(r[3])) for r in rows[:size]]
    token = ""
    if more and len(rows) > size and items:
        last = items[-1]
        position: list[Any] = [last.distance_meters, last.feature.id]
        if returned is not None:
            position.append(returned + len(items))
        token = encode_token(query(), position)
    return Page(items, token)


async def _write_batch(
    conn: psycopg.AsyncConnection[Any],
    layer_id: str,
    schema: str,
    batch: PreparedBatch,
    prefix: str,
) -> int:
    """Write ``batch`` in one transaction; return the number of distinct ids written.

    A batch that needs no validity check goes first as one COPY in autocommit mode: a
    statement outside a transaction block is a transaction of its own, all rows or none,
    committed (and, with synchronous_commit, flushed) before PostgreSQL answers; that
    saves the BEGIN and COMMIT round trips, during which PostgreSQL would wait. When
    the COPY meets an id that exists already or repeats in the batch, nothing was
    written, and the batch is merged instead."""
    if not batch.needs_validity_check:
        try:
            async with _autocommit(conn):
                await _copy(conn, _sql(_COPY, layer_id, schema=schema), batch.copy_data)
            return len(batch.rows)
        except pg_errors.UniqueViolation:
            pass
    async with conn.transaction():
        await conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS spatial_stage ("
            ' ord integer, id text COLLATE "C", geom geometry, properties jsonb'
            ") ON COMMIT DELETE ROWS"
        )
        await _copy(
            conn,
            sql.SQL("COPY pg_temp.spatial_stage FROM STDIN (FORMAT BINARY)"),
            _staged_copy(batch.rows),
        )
        if batch.needs_validity_check:
            cursor = await conn.execute(
                "SELECT ord, ST_IsValidReason(geom) FROM pg_temp.spatial_stage"
                " WHERE NOT ST_IsValid(geom) ORDER BY ord LIMIT %s",
                (_MAX_VIOLATIONS,),
            )
            invalid = await cursor.fetchall()
            if invalid:
                _raise_invalid_geometries(invalid, prefix)
        cursor = await conn.execute(_sql(_MERGE, layer_id, schema=schema))
        return cursor.rowcount


def _raise_invalid_geometries(invalid: list[Any], prefix: str) -> NoReturn:
    violations = [
        FieldViolation(
            f"{prefix}[{ordinal}].geometry", f"invalid geometry: {reason}", "INVALID_GEOMETRY"
        )
        for ordinal, reason in invalid
    ]
    raise _violation_error(violations, "invalid geometries")


async def _copy(
    conn: psycopg.AsyncConnection[Any], statement: sql.Composed | sql.SQL, data: bytes
) -> None:
    """COPY ``data`` (a whole binary COPY payload, see ``_binary_copy``) with ``statement``."""
    async with conn.cursor().copy(statement) as copy:
        await copy.write(data)
