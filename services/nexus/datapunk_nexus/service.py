"""The Nexus service: what it needs and what it serves."""

from __future__ import annotations

from datapunk.nexus.v1 import status_pb2, status_pb2_grpc
from datapunk_shared.rpc.server import ServiceContext, ServiceSpec, open_postgres
from datapunk_shared.secrets import build_secret_provider, close_secret_provider

from datapunk_nexus.backends import Backends, backend_addresses
from datapunk_nexus.cache.servicer import add_cache_service
from datapunk_nexus.edge import start_rest_edge
from datapunk_nexus.entry import add_grpc_entry
from datapunk_nexus.envoy_listener import start_envoy_listener
from datapunk_nexus.envoy_services.authz import AuthorizationService, add_authorization_service
from datapunk_nexus.envoy_services.ratelimit import RateLimitService, add_rate_limit_service
from datapunk_nexus.identity.oauth import oauth_http_routes
from datapunk_nexus.identity.setup import build_access_control
from datapunk_nexus.policy_factory import build_policies

__all__ = ["SPEC"]


async def _setup(context: ServiceContext) -> None:
    settings = context.settings
    pool = await open_postgres(context, "nexus")
    secrets = build_secret_provider(settings.secrets)

    async def close_secrets() -> None:
        await close_secret_provider(secrets)

    context.cleanups.append(close_secrets)
    access = await build_access_control(context, pool, secrets)
    # One gate and one cache for both entries, so limits and cached answers are the same
    # whichever entry a call comes through.
    gate, cache = await build_policies(
        settings, settings.engines.redis.url, cleanups=context.cleanups
    )
    # One channel per backend for both entries; closed last (cleanups run in reverse),
    # after both entries have stopped.
    backends = Backends(
        backend_addresses(settings), max_message_bytes=settings.nexus.max_message_bytes
    )
    context.cleanups.append(backends.close)
    add_cache_service(context, cache)
    add_rate_limit_service(context, gate)
    add_authorization_service(context, access.guard)
    # Envoy itself calls the same two services on their own mutual-TLS port (when
    # configured): it holds a client certificate, not a service token.
    await start_envoy_listener(
        context,
        settings.nexus.envoy_services,
        secrets,
        authorization=AuthorizationService(access.guard),
        rate_limit=RateLimitService(gate),
        audit=access.audit,
    )
    await add_grpc_entry(context, gate=gate, cache=cache, backends=backends, guard=access.guard)
    edge = await start_rest_edge(
        context, gate=gate, cache=cache, backends=backends, guard=access.guard
    )
    if edge is not None and settings.nexus.auth.oauth.enabled:
        edge.add_plain_routes(oauth_http_routes(access.oauth))


SPEC = ServiceSpec(
    name="nexus",
    engines=("postgres", "redis"),
    status_pb2=status_pb2,
    status_pb2_grpc=status_pb2_grpc,
    setup=_setup,
)
