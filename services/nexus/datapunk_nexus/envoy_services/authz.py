"""``envoy.service.auth.v3.Authorization/Check``: Envoy's ext_authz filter at the edge asks
Nexus about every request, and Nexus answers with the same ``AccessGuard`` its own entries
use — the same authentication, permissions and audit records.

Envoy's JSON transcoder runs first (envoy/generate.py), so the request's ``:path`` is the
gRPC method and its body (sent with ``with_request_body``, packed as bytes) is the
gRPC-framed request message. An allowed request goes on with the caller's credentials
replaced by Nexus's service token for the owning service and the caller's identity
(``x-datapunk-on-behalf-of``), exactly what Nexus's own entries send; the principal and
tenant go back as dynamic metadata for the rate limit descriptors. A refusal is answered
by Envoy with the HTTP status of its gRPC code and the JSON ``google.rpc.Status`` body the
REST edge uses.

Check sees only the first message of a client stream, where Nexus's own entries check
every message. A stream whose later messages may name other resources (StreamWriteRows:
"batches of one stream may target several series") therefore needs the action on every
resource of the first one's type; only streams the owning service holds to the resource
of their first message (``ONE_RESOURCE_STREAMS``) are decided on that resource alone."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from datapunk_shared.errors import DatapunkError, InvalidArgument
from datapunk_shared.rpc.server import ServiceContext
from datapunk_shared.rpc.status_codes import status_from_error
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2

from datapunk_nexus.contracts import owner_of_package
from datapunk_nexus.edge.status import answer_for_error
from datapunk_nexus.identity.enforce import STRIPPED, AccessGuard, Caller
from datapunk_nexus.identity.policy import Requirement
from datapunk_nexus.policy import rejection_headers

__all__ = [
    "ONE_RESOURCE_STREAMS",
    "AuthorizationService",
    "add_authorization_service",
    "grpc_message",
]

_GRPC_FRAME_HEADER = 5

ONE_RESOURCE_STREAMS = frozenset(
    {
        # The Lake refuses a batch naming another collection or layer than the first.
        "/datapunk.lake.v1.VectorService/ImportPoints",
        "/datapunk.lake.v1.SpatialService/LoadFeatures",
    }
)
"""Client streams whose every message is about the resource of the first; any other
client stream is decided on every resource of that type (a new one too, until it is
listed here)."""


def grpc_message(body: bytes) -> bytes:
    """The first message of a gRPC-framed body (1 byte compressed flag, 4 bytes length);
    INVALID_ARGUMENT when it is compressed, cut short or not a frame."""
    if len(body) < _GRPC_FRAME_HEADER:
        raise InvalidArgument("the request body is not a gRPC message", reason="MALFORMED_MESSAGE")
    compressed, length = body[0], int.from_bytes(body[1:5], "big")
    payload = body[_GRPC_FRAME_HEADER : _GRPC_FRAME_HEADER + length]
    if compressed or len(payload) != length:
        raise InvalidArgument(
            "the request message is compressed or larger than the authorizer sees",
            reason="MALFORMED_MESSAGE",
        )
    return payload


def _on_every_resource_of_its_type(requirement: Requirement) -> Requirement:
    """``write`` on ``series/a`` becomes ``write`` on ``series/*``."""
    kind, slash, _ = requirement.resource.partition("/")
    if not requirement.action or not slash:
        return requirement
    return replace(requirement, resource=f"{kind}/*", also=())


def _denied(error: DatapunkError) -> external_auth_pb2.CheckResponse:
    answer = answer_for_error(error)
    headers = {"content-type": "application/json"}
    headers.update({key.lower(): value for key, value in answer.headers.items()})
    headers.update({key.lower(): value for key, value in rejection_headers(error).items()})
    if error.code == "UNAUTHENTICATED":  # RFC 6750 section 3
        headers["www-authenticate"] = 'Bearer realm="datapunk"'
    _, status = status_from_error(error)
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=status.code, message=error.message),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=answer.http_status),
            headers=[
                base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v))
                for k, v in headers.items()
            ],
            body=answer.body.decode(),
        ),
    )


class AuthorizationService:
    """Answers Envoy's ``Check`` with the entries' ``AccessGuard`` (registered by method
    name; the generated base class would only add UNIMPLEMENTED defaults)."""

    def __init__(self, guard: AccessGuard) -> None:
        self._guard = guard

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: Any
    ) -> external_auth_pb2.CheckResponse:
        http = request.attributes.request.http
        headers = dict(http.headers)
        method = http.path.split("?", 1)[0]
        caller = Caller(
            method=method,
            client_ip=request.attributes.source.address.socket_address.address,
            request_id=headers.get("x-request-id", http.id)[:128],
            authorization=headers.get("authorization"),
            api_key=headers.get("x-api-key"),
        )
        try:
            identity = await self._guard.authenticate(caller)
            requirement = self._guard.requirement_of(method, grpc_message(http.raw_body))
            if self._guard.is_client_stream(method) and method not in ONE_RESOURCE_STREAMS:
                requirement = _on_every_resource_of_its_type(requirement)
            await self._guard.authorize(caller, identity, requirement)
        except DatapunkError as refused:
            return _denied(refused)
        owner = owner_of_package(method.lstrip("/").split("/", 1)[0].rpartition(".")[0]) or ""
        upstream = self._guard.backend_metadata(owner, identity) if owner else []
        metadata = struct_pb2.Struct()
        if identity is not None:
            effective = identity.effective
            metadata.update({"principal": effective.subject, "tenant": effective.tenant})
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=0),
            ok_response=external_auth_pb2.OkHttpResponse(
                headers=[
                    base_pb2.HeaderValueOption(
                        header=base_pb2.HeaderValue(key=key, value=value),
                        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                    )
                    for key, value in upstream
                ],
                headers_to_remove=sorted(STRIPPED - {key for key, _ in upstream}),
            ),
            dynamic_metadata=metadata,
        )


def add_authorization_service(context: ServiceContext, guard: AccessGuard) -> None:
    """Serve ``Check`` on the Nexus gRPC server (with health and reflection)."""
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
        AuthorizationService(guard), context.server
    )
    context.service_names.append(
        external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name
    )
