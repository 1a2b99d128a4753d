"""Conversion between the status report (domain) and ``datapunk.common.v1`` messages,
plus the StatusService servicer all three services share: their ``GetStatus``
contracts differ only in package."""

from __future__ import annotations

from datetime import UTC
from types import ModuleType
from typing import Any

from datapunk.common.v1 import status_pb2 as common_pb2
from google.protobuf import duration_pb2, timestamp_pb2

from datapunk_shared.health import ServingState
from datapunk_shared.probes import ProbeResult
from datapunk_shared.status import EngineReport, StatusProvider, StatusReport

__all__ = ["add_status_service", "report_from_proto", "report_to_proto"]

_STATE_TO_PROTO = {
    ServingState.SERVING: common_pb2.SERVING_STATE_SERVING,
    ServingState.NOT_SERVING: common_pb2.SERVING_STATE_NOT_SERVING,
    ServingState.DRAINING: common_pb2.SERVING_STATE_DRAINING,
}
_STATE_FROM_PROTO = {value: key for key, value in _STATE_TO_PROTO.items()}


def _duration(seconds: float) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromNanoseconds(round(seconds * 1e9))
    return message


# Probe results change every few seconds while status is read far more often: keep the
# converted messages of the latest results (reports are frozen, so they are safe keys).
_ENGINE_CACHE: dict[EngineReport, common_pb2.EngineStatus] = {}
_ENGINE_CACHE_LIMIT = 256


def _engine_to_proto(report: EngineReport) -> common_pb2.EngineStatus:
    cached = _ENGINE_CACHE.get(report)
    if cached is None:
        if len(_ENGINE_CACHE) >= _ENGINE_CACHE_LIMIT:
            _ENGINE_CACHE.clear()
        cached = _ENGINE_CACHE[report] = _convert_engine(report)
    return cached


def _convert_engine(report: EngineReport) -> common_pb2.EngineStatus:
    probe = report.probe
    message = common_pb2.EngineStatus(
        name=probe.name,
        endpoint=probe.endpoint,
        reachable=probe.reachable,
        error=probe.error,
        required=report.required,
    )
    if probe.round_trip is not None:
        message.round_trip.CopyFrom(_duration(probe.round_trip))
    message.checked_at.FromDatetime(probe.checked_at)
    return message


# Everything in a report but the uptime changes only when a probe finishes, and status
# is read far more often: keep the message of the latest reports without the uptime.
_STATIC_CACHE: dict[tuple[object, ...], common_pb2.ServiceStatus] = {}
_STATIC_CACHE_LIMIT = 64


def _static_status(report: StatusReport) -> common_pb2.ServiceStatus:
    """``report`` as a message, but for its uptime (shared: copy it, never change it)."""
    key = (
        report.service,
        report.version,
        report.instance_id,
        report.start_time,
        report.state,
        report.engines,
    )
    cached = _STATIC_CACHE.get(key)
    if cached is None:
        if len(_STATIC_CACHE) >= _STATIC_CACHE_LIMIT:
            _STATIC_CACHE.clear()
        start = timestamp_pb2.Timestamp()
        start.FromDatetime(report.start_time)
        cached = _STATIC_CACHE[key] = common_pb2.ServiceStatus(
            service=report.service,
            version=report.version,
            instance_id=report.instance_id,
            start_time=start,
            state=_STATE_TO_PROTO[report.state],
            engines=[_engine_to_proto(engine) for engine in report.engines],
        )
    return cached


def _fill_status(message: common_pb2.ServiceStatus, report: StatusReport) -> None:
    message.CopyFrom(_static_status(report))
    message.uptime.FromNanoseconds(round(report.uptime * 1e9))


def report_to_proto(report: StatusReport) -> common_pb2.ServiceStatus:
    message = common_pb2.ServiceStatus()
    _fill_status(message, report)
    return message


def report_from_proto(message: common_pb2.ServiceStatus) -> StatusReport:
    engines = tuple(
        EngineReport(
            probe=ProbeResult(
                name=e.name,
                endpoint=e.endpoint,
                reachable=e.reachable,
                round_trip=e.round_trip.ToNanoseconds() / 1e9 if e.HasField("round_trip") else None,
                error=e.error,
                checked_at=e.checked_at.ToDatetime(tzinfo=UTC),
            ),
            required=e.required,
        )
        for e in message.engines
    )
    return StatusReport(
        service=message.service,
        version=message.version,
        instance_id=message.instance_id,
        start_time=message.start_time.ToDatetime(tzinfo=UTC),
        uptime=message.uptime.ToNanoseconds() / 1e9,
        state=_STATE_FROM_PROTO.get(message.state, ServingState.NOT_SERVING),
        engines=engines,
    )


def add_status_service(
    server: Any, pb2: ModuleType, pb2_grpc: ModuleType, provider: StatusProvider
) -> str:
    """Register ``<package>.StatusService`` backed by ``provider``; returns its full name."""

    class StatusServicer(pb2_grpc.StatusServiceServicer):  # type: ignore[name-defined,misc]
        async def GetStatus(self, request: Any, context: Any) -> Any:
            timeout = (
                request.probe_timeout.ToNanoseconds() / 1e9
                if request.HasField("probe_timeout")
                else None
            )
            report = await provider.report(
                refresh=request.refresh, probe_timeout=timeout, engines=list(request.engines)
            )
            response = pb2.GetStatusResponse()
            _fill_status(response.status, report)
            return response

    pb2_grpc.add_StatusServiceServicer_to_server(StatusServicer(), server)
    full_name: str = pb2.DESCRIPTOR.services_by_name["StatusService"].full_name
    return full_name
