"""OpenTelemetry tracing. Inactive (no interceptor, no cost) unless an exporter is
configured: ``otlp`` sends spans to a collector, ``console`` prints them (for debugging)."""

from __future__ import annotations

from typing import Any

from datapunk_shared.config import TracingSettings

__all__ = ["server_tracing_interceptor"]


def server_tracing_interceptor(service: str, settings: TracingSettings) -> Any | None:
    """A grpc.aio server interceptor that records a span per RPC, or None when off."""
    if settings.exporter == "none":
        return None
    # Imported lazily so that a process without tracing loads none of the SDK.
    from opentelemetry import trace
    from opentelemetry.instrumentation.grpc import aio_server_interceptor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
        SpanExporter,
    )
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": f"datapunk-{service}"}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    exporter: SpanExporter
    if settings.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=True)
        provider.add_span_processor(BatchSpanProcessor(exporter))
    else:
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    # The instrumentation package ships no type hints.
    return aio_server_interceptor(tracer_provider=provider)  # type: ignore[no-untyped-call]
