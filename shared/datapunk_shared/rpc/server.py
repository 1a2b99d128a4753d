"""The runtime every Datapunk service shares: a ``grpc.aio`` server with health,
reflection, the Datapunk interceptor (and tracing when configured), a Prometheus
endpoint, engine health monitoring, and graceful shutdown on SIGTERM/SIGINT:
NOT_SERVING first, then in-flight calls get ``shutdown_grace`` seconds to finish."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from psycopg_pool import AsyncConnectionPool

from datapunk_shared.auth.interceptor import CallerAuthenticator
from datapunk_shared.auth.verifiers import build_verifier
from datapunk_shared.config import ServiceSettings, Settings, load_settings
from datapunk_shared.db import apply_migrations, create_pool, load_migrations
from datapunk_shared.errors import ConfigError
from datapunk_shared.health import HealthMonitor, Prerequisite, ServingState
from datapunk_shared.key_events import KeyChangeHandler, key_event_subscriber
from datapunk_shared.logging import configure_logging, get_logger
from datapunk_shared.metrics import start_metrics_server
from datapunk_shared.probes import build_probes
from datapunk_shared.rpc.interceptor import DatapunkServerInterceptor, InstrumentedServer
from datapunk_shared.rpc.status_messages import add_status_service
from datapunk_shared.status import StatusProvider
from datapunk_shared.tracing import server_tracing_interceptor

__all__ = [
    "PortInUse",
    "ServiceContext",
    "ServiceSpec",
    "create_server",
    "main_for",
    "open_postgres",
    "serve",
]

log = get_logger("datapunk.server")

EXIT_CONFIG = 2
EXIT_PORT_IN_USE = 3


class PortInUse(Exception):
    """The service's gRPC or metrics port is taken by another process."""


@dataclass
class ServiceContext:
    """What a service's ``setup`` gets to register its servicers and prerequisites."""

    settings: Settings
    service_settings: ServiceSettings
    server: grpc.aio.Server
    monitor_prerequisites: list[Prerequisite] = field(default_factory=list)
    service_names: list[str] = field(default_factory=list)
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    key_change_handlers: list[KeyChangeHandler] = field(default_factory=list)
    """What else must hear of signing-key changes (``datapunk_shared.key_events``) besides
    the service port's caller authenticator, such as Nexus's edges."""

    async def keys_changed(self, issuer: str | None, removed: frozenset[str]) -> None:
        """Tell every handler; one failing does not keep the others (the service port's
        among them) from hearing of the change."""
        for handler in list(self.key_change_handlers):
            try:
                await handler(issuer, removed)
            except Exception:
                log.exception("a signing key change handler failed", issuer=issuer)


async def open_postgres(context: ServiceContext, service: str) -> AsyncConnectionPool:
    """The service's PostgreSQL pool, closed at shutdown. The service's migrations
    (package ``datapunk_<service>.migrations``) become a readiness prerequisite: they run
    once PostgreSQL is reachable, and the service serves only after they succeeded."""
    pool = create_pool(context.settings.engines.postgres, name=service)
    await pool.open(wait=False)
    context.cleanups.append(pool.close)
    migrations = load_migrations(f"datapunk_{service}.migrations")

    async def migrate() -> None:
        async with pool.connection(timeout=context.service_settings.probe_timeout) as conn:
            await apply_migrations(conn, service, migrations)

    context.monitor_prerequisites.append(Prerequisite("schema migrations", "postgres", migrate))
    return pool


@dataclass(frozen=True)
class ServiceSpec:
    """One service: its name, the engines it needs, its StatusService modules, and a
    ``setup`` hook that adds its servicers."""

    name: str
    engines: Sequence[str]
    status_pb2: Any
    status_pb2_grpc: Any
    setup: Callable[[ServiceContext], Awaitable[None]] | None = None

    def settings_of(self, settings: Settings) -> ServiceSettings:
        service_settings: ServiceSettings = getattr(settings, self.name)
        return service_settings


def create_server(
    address: str,
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    edges: DatapunkServerInterceptor | None = None,
    max_message_bytes: int = 16 * 1024 * 1024,
    maximum_concurrent_rpcs: int | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server bound to ``address``; returns it and the bound port. With
    ``edges``, every handler registered on it is wrapped with the Datapunk edges.
    ``maximum_concurrent_rpcs`` is grpc.aio's own limit (RESOURCE_EXHAUSTED beyond it);
    the services bound concurrency per route instead (Nexus's gate), the benchmarks use
    it as a reference.

    SO_REUSEPORT is off so that a second process cannot silently share the port."""
    server: grpc.aio.Server = grpc.aio.server(
        interceptors=list(interceptors),
        maximum_concurrent_rpcs=maximum_concurrent_rpcs,
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
    )
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise PortInUse(f"cannot listen on {address}: {exc}") from None
    if port == 0:
        raise PortInUse(f"cannot listen on {address}: the port is in use")
    if edges is not None:
        server = cast(grpc.aio.Server, InstrumentedServer(server, edges))
    return server, port


async def serve(
    spec: ServiceSpec, settings: Settings, *, ready: asyncio.Event | None = None
) -> None:
    """Run the service until SIGTERM or SIGINT, then shut down gracefully."""
    own = spec.settings_of(settings)
    interceptors: list[Any] = []
    tracing = server_tracing_interceptor(spec.name, settings.tracing)
    if tracing is not None:
        interceptors.append(tracing)
    # Every call but health, reflection and status must carry a token Nexus signed for
    # this service (docs/identity.md); its keys come from Nexus's JWKS when first needed.
    verifier = build_verifier(settings.auth, service=spec.name)
    authenticator = CallerAuthenticator(verifier)
    edges = DatapunkServerInterceptor(
        spec.name,
        access_log=settings.log.access_log,
        slow_call_seconds=settings.log.slow_call_ms / 1000,
        authenticator=authenticator,
    )
    server, port = create_server(
        f"{own.host}:{own.port}",
        interceptors=interceptors,
        edges=edges,
        max_message_bytes=own.max_message_bytes,
    )
    try:
        start_metrics_server(own.host, own.metrics_port)
    except OSError as exc:
        raise PortInUse(f"cannot serve metrics on {own.host}:{own.metrics_port}: {exc}") from None

    context = ServiceContext(settings=settings, service_settings=own, server=server)
    context.cleanups.append(verifier.aclose)
    # Nexus announces deleted and retired signing keys on Redis: their tokens are then
    # refused here at once instead of when the key cache expires.
    context.key_change_handlers.append(authenticator.keys_changed)
    key_events = key_event_subscriber(settings, context.keys_changed)
    if key_events is not None:
        key_events.start()
        context.cleanups.append(key_events.stop)
    if spec.setup is not None:
        try:
            await spec.setup(context)
        except BaseException:
            # What setup opened so far (pools still connecting, background tasks) is
            # closed now: left to asyncio.run's final cancellation, a pool retrying its
            # connections kept the refusing process from ever exiting.
            await _run_cleanups(context.cleanups)
            raise

    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)

    async def publish(state: ServingState) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if state is ServingState.SERVING
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ["", *context.service_names]:
            await health.set(name, status)

    monitor = HealthMonitor(
        spec.name,
        build_probes(settings.engines, spec.engines),
        interval=own.probe_interval,
        timeout=own.probe_timeout,
        prerequisites=context.monitor_prerequisites,
        on_change=publish,
    )
    provider = StatusProvider(spec.name, monitor, default_timeout=own.probe_timeout)
    context.service_names.append(
        add_status_service(server, spec.status_pb2, spec.status_pb2_grpc, provider)
    )
    await publish(ServingState.NOT_SERVING)
    reflection.enable_server_reflection(
        [
            *context.service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    # Everything set up so far (modules, descriptors, pools, caches) lives as long as the
    # process: move it out of the collector's reach, so that a full collection walks only
    # what calls allocate (one took ~240 ms on Nexus's start-up heap, a p99 spike).
    gc.collect()
    gc.freeze()
    await server.start()
    log.info(
        "listening",
        address=f"{own.host}:{port}",
        metrics_port=own.metrics_port,
        engines=list(spec.engines),
    )
    await monitor.start()
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("shutting down", grace_seconds=own.shutdown_grace)
        await monitor.drain()
        await health.enter_graceful_shutdown()
        await server.stop(own.shutdown_grace)
        await _run_cleanups(context.cleanups)
        log.info("stopped")


async def _run_cleanups(cleanups: list[Callable[[], Awaitable[None]]]) -> None:
    """Run ``cleanups`` newest first; one failing does not keep the others from running."""
    for cleanup in reversed(cleanups):
        try:
            await cleanup()
        except Exception:
            log.exception("a cleanup failed")


def main_for(spec: ServiceSpec) -> Callable[[], None]:
    """The console-script entry point of a service."""

    def main() -> None:
        try:
            settings = load_settings()
        except ConfigError as exc:
            print(f"datapunk-{spec.name}: {exc.message}", file=sys.stderr)
            raise SystemExit(EXIT_CONFIG) from None
        configure_logging(spec.name, level=settings.log.level, json_format=settings.log.json_format)
        try:
            asyncio.run(serve(spec, settings))
        except PortInUse as exc:
            log.error("port in use", error=str(exc))
            print(f"datapunk-{spec.name}: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_PORT_IN_USE) from None
        except ConfigError as exc:
            # Found while setting up (a secret or file the configuration names), after
            # the settings themselves loaded: the same refusal, not a traceback.
            log.error("invalid configuration", error=exc.message)
            print(f"datapunk-{spec.name}: {exc.message}", file=sys.stderr)
            raise SystemExit(EXIT_CONFIG) from None

    return main
