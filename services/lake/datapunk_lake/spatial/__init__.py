"""The Lake's spatial store: ``datapunk.lake.v1.SpatialService`` on PostGIS.

Modules: :mod:`.domain` (types and the store interface), :mod:`.geojson` (GeoJSON to
EWKB, with precise errors), :mod:`.paging` (stable page tokens), :mod:`.postgis` (the
engine adapter), :mod:`.servicer` (protobuf <-> domain)."""

from __future__ import annotations

from typing import Any

from datapunk.lake.v1 import spatial_pb2, spatial_pb2_grpc
from datapunk_shared.rpc.server import ServiceContext
from psycopg_pool import AsyncConnectionPool

from datapunk_lake.spatial.postgis import PostgisSpatialStore
from datapunk_lake.spatial.servicer import SpatialServicer

__all__ = ["SERVICE_NAME", "register"]

SERVICE_NAME: str = spatial_pb2.DESCRIPTOR.services_by_name["SpatialService"].full_name
_grpc: Any = spatial_pb2_grpc


def register(context: ServiceContext, pool: AsyncConnectionPool) -> PostgisSpatialStore:
    """Serve the SpatialService on ``context.server`` over the Lake's PostgreSQL ``pool``
    (the Lake opens and closes the pool and applies the schema migrations)."""
    lake = context.settings.lake
    store = PostgisSpatialStore(
        pool,
        max_page_size=lake.spatial.max_page_size,
        max_properties_bytes=lake.max_payload_bytes,
        pool_timeout=lake.spatial.pool_timeout,
    )
    _grpc.add_SpatialServiceServicer_to_server(SpatialServicer(store), context.server)
    context.service_names.append(SERVICE_NAME)
    context.cleanups.append(store.close)
    return store
