"""Wires the vector store into the Lake: builds the engine the settings name, the store
and the servicer, and registers them with the server."""

from __future__ import annotations

from datapunk.lake.v1 import vectors_pb2, vectors_pb2_grpc
from datapunk_shared.config import LakeSettings
from datapunk_shared.rpc.server import ServiceContext

from datapunk_lake.vectors.domain import VectorEngine
from datapunk_lake.vectors.servicer import VectorServicer
from datapunk_lake.vectors.store import VectorStore

__all__ = ["SERVICE_NAME", "build_store", "register"]

SERVICE_NAME: str = vectors_pb2.DESCRIPTOR.services_by_name["VectorService"].full_name


def build_store(settings: LakeSettings) -> VectorStore:
    """The vector store over the engine ``settings.vectors.engine`` names."""
    own = settings.vectors
    engine: VectorEngine
    if own.engine == "server":
        from datapunk_lake.vectors.server import ServerEngine

        engine = ServerEngine(own.url, api_key=own.api_key or None, timeout=own.timeout)
    else:
        from datapunk_lake.vectors.embedded import EmbeddedEngine

        engine = EmbeddedEngine(
            own.path,
            auto_optimize=own.auto_optimize,
            optimize_min_unindexed=own.optimize_min_unindexed,
            optimize_idle_seconds=own.optimize_idle_seconds,
        )
    return VectorStore(engine, max_payload_bytes=settings.max_payload_bytes)


async def register(context: ServiceContext) -> VectorStore:
    """Start the vector store and serve datapunk.lake.v1.VectorService."""
    settings = context.settings.lake
    store = build_store(settings)
    await store.start()
    context.cleanups.append(store.close)
    vectors_pb2_grpc.add_VectorServiceServicer_to_server(  # type: ignore[no-untyped-call]
        VectorServicer(store), context.server
    )
    context.service_names.append(SERVICE_NAME)
    return store
