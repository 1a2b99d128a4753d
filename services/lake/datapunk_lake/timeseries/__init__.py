"""The Lake's time-series store on QuestDB: ``datapunk.lake.v1.TimeSeriesService``.

Modules: ``domain`` (types and the engine interface), ``validation`` (row batches against
a schema), ``sql`` (parameterised QuestDB SQL), ``frames`` (batches as DataFrames for ILP),
``paging`` (page tokens), ``questdb`` (the engine adapter), ``store`` (TSStore, the rules),
``servicer`` (protobuf in and out)."""

from __future__ import annotations

from datapunk.lake.v1 import timeseries_pb2_grpc
from datapunk_shared.rpc.server import ServiceContext

from datapunk_lake.timeseries.questdb import QuestDBEngine
from datapunk_lake.timeseries.servicer import SERVICE_NAME, TimeSeriesServicer
from datapunk_lake.timeseries.store import TSStore

__all__ = ["SERVICE_NAME", "TSStore", "register"]


async def register(context: ServiceContext) -> TSStore:
    """Build the store on the configured QuestDB, serve it, and close it on shutdown."""
    engine = QuestDBEngine(context.settings.engines.questdb, context.settings.lake.timeseries)
    await engine.open()
    store = TSStore(engine, context.settings.lake.timeseries)
    timeseries_pb2_grpc.add_TimeSeriesServiceServicer_to_server(  # type: ignore[no-untyped-call]
        TimeSeriesServicer(store), context.server
    )
    context.service_names.append(SERVICE_NAME)
    context.cleanups.append(engine.close)
    return store
