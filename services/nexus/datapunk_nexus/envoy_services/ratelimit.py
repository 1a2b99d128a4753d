"""``envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit``: Envoy's global rate
limit filter asks Nexus, and Nexus answers with the same rules and counters its own
entries use (``RequestGate.check_rate``), so a caller has one budget whichever way in.

Envoy sends descriptors built by ``envoy/generate.py`` (``edge_rate_limits``): entries
``rpc`` (the gRPC path), ``remote_address``, and ``principal``/``tenant`` from the
ext_authz dynamic metadata. Their entries together describe the call; Nexus decides once
per hit and answers every descriptor with the overall code. Concurrency is not bounded
here: Envoy's circuit breakers do that in front of each cluster."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from datapunk_shared.errors import FieldViolation, InvalidArgument, ResourceExhausted
from datapunk_shared.rpc.server import ServiceContext
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import duration_pb2

from datapunk_nexus.policy import CallInfo, RequestGate, rejection_headers

__all__ = ["DOMAIN", "RateLimitService", "add_rate_limit_service", "call_of"]

DOMAIN = "datapunk"
_MAX_HITS = 64
"""Envoy may count one request as several hits (``hits_addend``); more than this in one
request is refused as malformed rather than looped over."""

_KEYS = {"rpc": "method", "remote_address": "client_ip", "principal": "principal"}


def call_of(request: rls_pb2.RateLimitRequest) -> CallInfo:
    """The call the request's descriptors describe."""
    if request.domain != DOMAIN:
        raise InvalidArgument(
            f"unknown rate limit domain {request.domain[:64]!r}; Nexus serves {DOMAIN!r}",
            violations=[FieldViolation("domain", f"must be {DOMAIN!r}", "UNKNOWN_DOMAIN")],
            reason="UNKNOWN_DOMAIN",
        )
    found: dict[str, str] = {}
    for descriptor in request.descriptors:
        for entry in descriptor.entries:
            name = _KEYS.get(entry.key)
            if name is not None:
                found.setdefault(name, entry.value)
            elif entry.key == "tenant":
                found.setdefault("tenant", entry.value)
    return CallInfo(
        method=found.get("method", ""),
        client_ip=found.get("client_ip", ""),
        principal=found.get("principal") or None,
        tenant=found.get("tenant") or None,
    )


def _header_values(headers: Mapping[str, str]) -> list[base_pb2.HeaderValue]:
    return [base_pb2.HeaderValue(key=key.lower(), value=value) for key, value in headers.items()]


class RateLimitService:
    """Answers Envoy's ``ShouldRateLimit`` from the Nexus request gate (registered by
    method name; the generated base class would only add UNIMPLEMENTED defaults)."""

    def __init__(self, gate: RequestGate) -> None:
        self._gate = gate

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: Any
    ) -> rls_pb2.RateLimitResponse:
        call = call_of(request)
        hits = max(1, request.hits_addend)
        if hits > _MAX_HITS:
            raise InvalidArgument(
                f"hits_addend may be at most {_MAX_HITS}",
                violations=[FieldViolation("hits_addend", f"at most {_MAX_HITS}", "TOO_MANY")],
            )
        ok = rls_pb2.RateLimitResponse.Code.OK
        try:
            headers: Mapping[str, str] = {}
            for _ in range(hits):
                headers = await self._gate.check_rate(call)
        except ResourceExhausted as refused:
            code = rls_pb2.RateLimitResponse.Code.OVER_LIMIT
            reset = duration_pb2.Duration()
            reset.FromNanoseconds(int((refused.retry_after or 0) * 1e9))
            status = rls_pb2.RateLimitResponse.DescriptorStatus(
                code=code, limit_remaining=0, duration_until_reset=reset
            )
            return rls_pb2.RateLimitResponse(
                overall_code=code,
                statuses=[status for _ in request.descriptors],
                response_headers_to_add=_header_values(rejection_headers(refused)),
            )
        status = rls_pb2.RateLimitResponse.DescriptorStatus(code=ok)
        remaining = headers.get("RateLimit-Remaining")
        if remaining is not None:
            status.limit_remaining = int(remaining)
        return rls_pb2.RateLimitResponse(
            overall_code=ok,
            statuses=[status for _ in request.descriptors],
            response_headers_to_add=_header_values(headers),
        )


def add_rate_limit_service(context: ServiceContext, gate: RequestGate) -> None:
    """Serve ``ShouldRateLimit`` on the Nexus gRPC server (with health and reflection)."""
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(RateLimitService(gate), context.server)
    context.service_names.append(rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"].full_name)
